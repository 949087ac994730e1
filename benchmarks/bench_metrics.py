"""Benchmark: caption metric time for 1,000 captions (finetune.metrics.caption_scores).

Run:  python benchmarks/bench_metrics.py [--captions 1000 --references 5 --repeats 1]

Prints, on this machine:

1. the time of each phase for N captions with R references each, in caption_scores' order
   (METEOR's JVM started first so that it loads its paraphrase table while one PTB call
   tokenises references and predictions) and in the baseline's, measured in the same run:
   pycocoevalcap's own COCOEvalCap.evaluate() sequence without SPICE (which downloads models
   and cannot run offline): two PTB calls, then BLEU, METEOR (its JVM started there), ROUGE-L,
   CIDEr. The JVM start-up is separated: a one-line METEOR probe waits for the JVM before
   scoring, and its wait is its own row;
2. the ratios ours / baseline, with and without the waited start-up;
3. `caption_scores` end to end (the public API) and the no-Java fallback.

Captions are synthetic sample-corpus sentences (seeded): references are phrasings of a
(colour, shape, verb) triple, predictions are a phrasing with one word swapped half the time.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import cpu_name  # noqa: E402
from finetune.metrics import caption_scores  # noqa: E402

TEMPLATES = (
    "the {c} {n} {v}s",
    "a {c} {n} is {v}ing in place",
    "we watch the {n} {v} again and again",
    "the {c} {n} keeps {v}ing",
    "a {n} {v}s on a grey background",
    "someone shows how to {v} the {c} {n}",
)
COLOURS, NOUNS = ("red", "yellow", "green", "purple", "blue"), ("square", "star", "heart")
VERBS = ("spin", "jump", "shake", "flash", "turn")


def make_captions(n: int, refs: int, seed: int) -> tuple[dict, dict]:
    """N ids -> `refs` reference phrasings each, and one prediction (half of them perturbed)."""
    rng = random.Random(seed)
    references, predictions = {}, {}
    for i in range(n):
        f = {"c": rng.choice(COLOURS), "n": rng.choice(NOUNS), "v": rng.choice(VERBS)}
        references[f"v{i}"] = [t.format(**f) for t in rng.sample(TEMPLATES, refs)]
        if rng.random() < 0.5:
            f["v"] = rng.choice(VERBS)
        predictions[f"v{i}"] = rng.choice(TEMPLATES).format(**f) + "."
    return references, predictions


def phases(references: dict, predictions: dict, overlap: bool) -> dict[str, float]:
    """Seconds per phase of one evaluation with pycocoevalcap's own classes.

    overlap=True is caption_scores' order (METEOR's JVM started first, one PTB call for
    references and predictions); False is COCOEvalCap.evaluate()'s (two PTB calls, METEOR
    started when its turn comes). Before scoring, a one-line METEOR probe waits for its JVM,
    so "meteor start-up (waited)" is the start-up not hidden behind other work.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    out: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        out[name] = out.get(name, 0.0) + now - t
        t = now

    meteor = Meteor() if overlap else None
    lap("meteor start-up (waited)")
    refs = {f"r{k}": [{"caption": r} for r in v] for k, v in references.items()}
    preds = {f"p{k}": [{"caption": p}] for k, p in predictions.items()}
    if overlap:
        tokens = PTBTokenizer().tokenize({**refs, **preds})
    else:
        tokens = {**PTBTokenizer().tokenize(refs), **PTBTokenizer().tokenize(preds)}
    gts = {k: tokens[f"r{k}"] for k in references}
    res = {k: tokens[f"p{k}"] for k in references}
    lap("PTB tokenizer")
    Bleu(4).compute_score(gts, res, verbose=0)
    lap("BLEU")
    if meteor is None:
        meteor = Meteor()
    meteor.compute_score({"x": ["a red square"]}, {"x": ["a red square"]})  # JVM ready
    lap("meteor start-up (waited)")
    meteor.compute_score(gts, res)
    del meteor
    lap("METEOR")
    Rouge().compute_score(gts, res)
    lap("ROUGE-L")
    Cider().compute_score(gts, res)
    lap("CIDEr")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--captions", type=int, default=1000)
    parser.add_argument("--references", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    args = parser.parse_args()
    print(f"machine: {cpu_name()}")
    refs, preds = make_captions(args.captions, args.references, seed=0)
    print(f"{args.captions} captions, {args.references} references each")

    def best(fn) -> tuple[float, Any]:
        runs = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = fn()
            runs.append((time.perf_counter() - t0, out))
        return min(runs, key=lambda r: r[0])

    fallback_s, fallback = best(lambda: caption_scores(refs, preds, use_java=False))
    if shutil.which("java") is None:
        print(f"no Java: only the fallback, {fallback_s:.2f} s; CIDEr {fallback['CIDEr']:.1f}")
        return
    api_s, api = best(lambda: caption_scores(refs, preds, use_java=True))
    ours = min(
        (phases(refs, preds, True) for _ in range(args.repeats)), key=lambda p: sum(p.values())
    )
    base = min(
        (phases(refs, preds, False) for _ in range(args.repeats)), key=lambda p: sum(p.values())
    )
    names = list(base)
    print(f"| phase (best of {args.repeats}) | ours, s | COCOEvalCap order (baseline), s |")
    print("|---|---|---|")
    for name in names:
        print(f"| {name} | {ours[name]:.2f} | {base[name]:.2f} |")
    wait = "meteor start-up (waited)"
    o_all, b_all = sum(ours.values()), sum(base.values())
    o_cmp, b_cmp = o_all - ours[wait], b_all - base[wait]
    print(f"| total | {o_all:.2f} | {b_all:.2f} |")
    print(f"| total without the waited METEOR start-up | {o_cmp:.2f} | {b_cmp:.2f} |")
    print(f"ratio ours / baseline: total {o_all / b_all:.3f}, without start-up {o_cmp / b_cmp:.3f}")
    print(
        f"caption_scores end to end (the API, no probe): {api_s:.2f} s = {api_s / b_all:.3f} x baseline total"
    )
    print(
        f"no-Java fallback (BLEU, ROUGE-L, CIDEr only): {fallback_s:.2f} s = {fallback_s / b_cmp:.3f} x baseline without start-up"
    )
    print("scores (x100): " + ", ".join(f"{k} {v:.1f}" for k, v in api.items()))


if __name__ == "__main__":
    main()
