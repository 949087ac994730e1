"""What does each starting point's output carry about the segment's verb? A converged probe.

    python benchmarks/bench_feature_probe.py --demo-out demo_out [--model videobert]

Issue 10's grids compare fine-tuning from `pretrained`, `text` and `random` starts with short,
fixed schedules. This asks the question underneath, without any schedule: for each start, the
backbone (eval mode, nothing trained) encodes every labelled segment of the sample corpus
(configs/finetune/demo_classify.yaml's data: the verb labels, train and test videos), and a
logistic regression fitted to convergence (scikit-learn, features standardised on train, C=1)
predicts the test segments' verbs from
  - `pooled`: the pooled output the linear probe reads (finetune/classify.py),
  - `video mean`: the mean of the video outputs over the segment's clips (what a decoder
    cross-attends to),
and, as the baseline that no backbone can add to, from the segment's bag of visual words (the
count of each of the vocabulary's words among its clips: the model's whole view of the video).
Prints test top-1 per start and feature with the machine's name; chance is 1 / classes.

If every start reaches the bag of words, pretraining has added no linearly decodable
information about the verb; what it can still add is a reader trained to use it (the QA masked-LM
reader, methods.md 1.6), which a head trained from labels has to learn again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from machine import cpu_name  # noqa: E402

from vlpipe.demo import CORPUS, annotation_files, finetune_config  # noqa: E402

INITS = ("pretrained", "text", "random")


def encode(task, examples, backbone) -> dict[str, np.ndarray]:
    """{"pooled": [N, D], "video mean": [N, D]} for `examples`, 32 at a time, no gradients."""
    import torch

    out: dict[str, list[np.ndarray]] = {"pooled": [], "video mean": []}
    for i in range(0, len(examples), 32):
        batch = task.batch(examples[i : i + 32], train=False)
        with torch.no_grad():
            enc = backbone.encode(batch)
        kept = batch["video_mask"].float().unsqueeze(-1)  # [B, T, 1]
        out["pooled"].append(enc["pooled"].numpy())
        out["video mean"].append(((enc["video"] * kept).sum(1) / kept.sum(1)).numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def bag_of_words(examples, vocab_size: int) -> np.ndarray:
    """[N, V] count of each visual word among a segment's clips."""
    return np.stack([np.bincount(e.words, minlength=vocab_size) for e in examples]).astype(float)


def probe(train: np.ndarray, y_train: list[str], test: np.ndarray, y_test: list[str]) -> float:
    """Test top-1 (%) of a logistic regression fitted to convergence on standardised features."""
    from sklearn.linear_model import LogisticRegression

    mean, std = train.mean(0), train.std(0) + 1e-6
    clf = LogisticRegression(max_iter=5000, C=1.0).fit((train - mean) / std, y_train)
    return 100 * clf.score((test - mean) / std, y_test)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--demo-out", default="demo_out", help="a vlpipe demo output directory")
    p.add_argument("--model", default="videobert", help="which pretrained run of the demo")
    args = p.parse_args()
    import torch

    from finetune.classify import ClassifyTask

    torch.manual_seed(0)  # the random start's draw
    demo = Path(args.demo_out)
    labels = json.loads((CORPUS / "labels.json").read_text())
    files = annotation_files(labels, "classify")[1]
    shards = [demo / "shards" / s for s in ("train", "val", "test")]
    run, out = demo / f"run-{args.model}", demo / "bench_feature_probe"  # out: failures.jsonl
    rows: dict[str, dict[str, float]] = {}
    for init in INITS:
        cfg = finetune_config("classify", args.model, run, shards, out, labels, init)
        task = ClassifyTask(cfg)
        train, test = task.train_examples, task.examples(files["test"], "test")
        y_train, y_test = [e.item.label for e in train], [e.item.label for e in test]
        if not rows:  # the same for every start: the words come from the shards' features
            size = len(task.centroids)
            bags = bag_of_words(train, size), bag_of_words(test, size)
            rows["visual words"] = {"bag of words": probe(bags[0], y_train, bags[1], y_test)}
            chance = 100 / len(set(y_train))
        backbone = task.backbone().eval()
        feats = encode(task, train, backbone), encode(task, test, backbone)
        rows[init] = {k: probe(feats[0][k], y_train, feats[1][k], y_test) for k in feats[0]}
        print(f"{init}: {rows[init]}", flush=True)
    print(f"\nmachine: {cpu_name()}; {args.model}; {len(y_train)} train / {len(y_test)} test")
    print(f"verb top-1 (%) of a converged logistic regression; chance {chance:.1f}\n")
    print("| start | pooled | video mean | bag of visual words |\n|---|---|---|---|")
    print(f"| (no backbone) | | | {rows['visual words']['bag of words']:.1f} |")
    for init in INITS:
        print(f"| {init} | {rows[init]['pooled']:.1f} | {rows[init]['video mean']:.1f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
