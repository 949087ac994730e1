"""Does pretraining help fine-tuning? The seed grid of issue 10 on the sample corpus.

    python benchmarks/bench_finetune.py --demo-out demo_out --model videobert \\
        [--seeds 3] [--fractions 1.0,0.1] [--tasks qa,caption,classify] [--tag NAME]
    python benchmarks/bench_finetune.py --table OUT/bench_finetune-videobert-a.json ...

Needs a `vlpipe demo` output (its prep shards and its pretrained run). For every task, fraction
of the training annotations and seed, the same head, schedule and data are fine-tuned from four
starting points: `pretrained` (the run), `text` (the text checkpoint only), `random`, and
`blind` (pretrained, video hidden); each is trained on train, its best step chosen on val,
scored on the test videos. Prints mean ± std over seeds per row (and QA's majority answer), and
whether pretrained beats text by more than 2 standard deviations (the larger of the two stds).
Writes every run's numbers to OUT/bench_finetune-<model>[-<tag>].json; a grid split across
processes (--seed-list, --tasks, each with its own --tag) is put back together with --table.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from machine import cpu_name  # noqa: E402

from pipeline.io import atomic_write_json  # noqa: E402
from pipeline.stats import mean_std  # noqa: E402
from vlpipe.demo import (  # noqa: E402
    CORPUS,
    finetune_and_test,
    finetune_config,
)
from vlpipe.report import HEADLINE  # noqa: E402

VARIANTS = {
    "pretrained": ("pretrained", False),
    "text": ("text", False),
    "random": ("random", False),
    "blind": ("pretrained", True),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--demo-out", default="demo_out", help="a vlpipe demo output directory")
    p.add_argument("--model", default="videobert", help="which pretrained run of the demo")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    p.add_argument("--seed-list", default="", help="these seeds instead, e.g. 1,2 (split a grid)")
    p.add_argument("--fractions", default="1.0,0.1")
    p.add_argument("--tasks", default="qa,caption,classify")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--tag", default="", help="names a part of a grid: results file, run dirs")
    p.add_argument("--table", nargs="+", metavar="JSON", help="only print the table of these")
    p.add_argument("overrides", nargs="*", help="finetune settings for every run, key=value")
    args = p.parse_args()
    if args.table:
        print_table([r for f in args.table for r in json.loads(Path(f).read_text())])
        return 0
    seeds = [int(x) for x in args.seed_list.split(",")] if args.seed_list else range(args.seeds)
    logging.basicConfig(level=logging.WARNING)
    demo = Path(args.demo_out)
    run = demo / f"run-{args.model}"
    labels = json.loads((CORPUS / "labels.json").read_text())
    shards = {s: demo / "shards" / s for s in ("train", "val", "test")}
    results: list[dict] = []
    out_json = demo / f"bench_finetune-{args.model}{'-' + args.tag if args.tag else ''}.json"
    print(f"machine: {cpu_name()}; pretrained run: {run}")
    for task in args.tasks.split(","):
        for fraction in (float(f) for f in args.fractions.split(",")):
            for seed in seeds:
                for name in args.variants.split(","):
                    init, blind = VARIANTS[name]
                    run_name = f"{task}-{fraction}-{name}-{seed}"
                    out = demo / "bench_finetune" / args.model / args.tag / run_name
                    cfg = finetune_config(
                        task,
                        args.model,
                        run,
                        [shards["train"], shards["val"]],
                        out,
                        labels,
                        init,
                        blind,
                        [f"seed={seed}", f"data.fraction={fraction}", *args.overrides],
                    )
                    from finetune.evaluate import evaluate_run

                    t0 = time.perf_counter()
                    r = finetune_and_test(cfg, evaluate_run, labels, task, shards)
                    results.append(
                        {"task": task, "fraction": fraction, "seed": seed, "variant": name, **r}
                    )
                    atomic_write_json(out_json, results)  # after every run: a stopped grid keeps it
                    metric = HEADLINE[task]
                    print(
                        f"{task} {fraction:.0%} seed {seed} {name:10s} test {metric} "
                        f"{r['test'].get(metric, float('nan')):6.1f}  ({time.perf_counter() - t0:.0f} s)",
                        flush=True,
                    )
    print_table(results)
    return 0


def print_table(results: list[dict]) -> None:
    print("\n| task | fraction | variant | test metric | mean ± std | seeds |")
    print("|---|---|---|---|---|---|")
    groups: dict[tuple, list[float]] = {}
    majority: dict[tuple, list[float]] = {}
    for r in results:
        metric = HEADLINE[r["task"]]
        groups.setdefault((r["task"], r["fraction"], r["variant"]), []).append(r["test"][metric])
        if "majority_accuracy" in r["test"] and r["variant"] == "pretrained":
            majority.setdefault((r["task"], r["fraction"]), []).append(
                r["test"]["majority_accuracy"]
            )
    for (task, fraction, variant), values in groups.items():
        m, s = mean_std(values)
        print(
            f"| {task} | {fraction:.0%} | {variant} | {HEADLINE[task]} | {m:.1f} ± {s:.1f} | {len(values)} |"
        )
    for (task, fraction), values in majority.items():
        print(
            f"| {task} | {fraction:.0%} | majority answer | accuracy | {mean_std(values)[0]:.1f} | |"
        )
    print()
    for task, fraction in sorted({(t, f) for t, f, _ in groups}):
        pre, text = groups.get((task, fraction, "pretrained")), groups.get((task, fraction, "text"))
        if pre and text:
            (mp, sp), (mt, st) = mean_std(pre), mean_std(text)
            margin = 2 * max(sp, st)
            verdict = "beats" if mp - mt > margin else "does NOT beat"
            print(
                f"{task} at {fraction:.0%}: pretrained {mp:.1f} {verdict} text {mt:.1f} by more "
                f"than 2 std ({margin:.1f}); difference {mp - mt:+.1f}"
            )


if __name__ == "__main__":
    raise SystemExit(main())
