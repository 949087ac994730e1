"""Does pretraining learn to use the video? N seeds of the demo's pretraining, mean ± std (issue 9).

    python benchmarks/bench_learning.py --model videobert --seeds 3 [--data DIR] [--runs DIR] \\
        [--threads 1] [--jobs 1] [key=value ...]

For each seed: `vlpipe pretrain` with configs/pretrain/demo_<model>.yaml as a subprocess (what
`vlpipe demo model=<model>` trains: train shards, the demo's visual vocabulary, data.heldout = the
val shards, `seed=<seed>`), then on the TEST videos, which no run saw, `vlpipe evaluate zeroshot`
(finetune.zeroshot.evaluate_zeroshot, the function the demo calls): verb / noun top-1 cross-modal,
the language prior (the same model without the video: the baseline measured in the same run) and
chance; and from the run's metrics.jsonl the last held-out evidence (pretrain/evidence.py, on the
val videos): video-text matching accuracy (chance 50 %) and video dependence (masked-word loss
with another video's clips minus with its own, nats). Prints one table of mean ± std over seeds
(pipeline.stats.format_mean_std), names the machine, and writes every seed's figures to
RUNS/bench_learning-<model>.json (the path is printed).

--data holds a demo output (shards/{train,val,test}, vocab/); it is made there with the demo's
own prep and cluster stages (vlpipe.demo, configs/prep/demo.yaml, configs/cluster/demo.yaml) when
missing (~2 min on 2 cores). key=value items override the pretraining config, e.g.
`optim.max_steps=150`. --threads sets OMP/MKL threads of each run; --jobs runs that many seeds at
once. A seed whose run fails is reported with its error and the others go on.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from machine import cpu_name  # noqa: E402

from pipeline.stats import format_mean_std  # noqa: E402

LABELS = REPO / "data" / "sample_corpus" / "labels.json"
SPLITS = ("train", "val", "test")
# Keys the benchmark sets itself for every seed (an override would make the seeds one run).
OWN_KEYS = ("seed", "output_dir", "data.shards", "data.vocab", "data.heldout")
# (label, key of a row, digits) of the table, in order.
TABLE = (
    ("verb top-1 cross-modal (%)", "cross_modal_verb", 1),
    ("verb top-1 language prior (%)", "language_prior_verb", 1),
    ("verb top-1 chance (%)", "chance_verb", 1),
    ("noun top-1 cross-modal (%)", "cross_modal_noun", 1),
    ("noun top-1 language prior (%)", "language_prior_noun", 1),
    ("noun top-1 chance (%)", "chance_noun", 1),
    ("held-out matching accuracy (%, chance 50)", "matching_accuracy", 1),
    ("held-out video dependence (nats)", "video_dependence", 3),
    ("pretrain wall s per run", "wall_s", 0),
)


def prepared(data: Path) -> bool:
    return (
        all(any((data / "shards" / s).glob("shard-*.tar")) for s in SPLITS)
        and (data / "vocab" / "centroids.npy").is_file()
    )


def prepare(data: Path) -> None:
    """The demo's prep (train / val / test videos apart) and cluster stages into `data`."""
    from data_prep.cluster import run_cluster
    from data_prep.prep import run_prep
    from pipeline.cluster_config import ClusterConfig
    from pipeline.config import load_config
    from pipeline.prep_config import PrepConfig
    from vlpipe.demo import write_manifests

    prep_cfg = load_config(PrepConfig, REPO / "configs/prep/demo.yaml", [])
    cluster_cfg = load_config(ClusterConfig, REPO / "configs/cluster/demo.yaml", [])
    data.mkdir(parents=True, exist_ok=True)
    for split, manifest in write_manifests(data, json.loads(LABELS.read_text())).items():
        run_prep(prep_cfg, str(manifest), data / "shards" / split)
    run_cluster(cluster_cfg, data / "shards" / "train", data / "vocab")


def run_logged(cmd: list[str], log: Path, env: dict[str, str]) -> None:
    """Run `cmd` with its output in `log`; CalledProcessError naming the log on failure."""
    with log.open("w") as f:
        done = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"exit {done.returncode}: {tail[0]} (full log: {log})")


def last_evidence(run: Path) -> dict[str, float]:
    """The last evaluation record of metrics.jsonl that holds the evidence, `eval/` stripped."""
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    evals = [r for r in records if "eval/matching_accuracy" in r]
    if not evals:
        raise RuntimeError(f"{run}/metrics.jsonl has no held-out evidence (eval/)")
    return {k[5:]: v for k, v in evals[-1].items() if k.startswith("eval/")} | {
        "eval_step": evals[-1]["step"]
    }


def one_seed(args: argparse.Namespace, data: Path, runs: Path, seed: int) -> dict[str, Any]:
    """Pretrain with `seed`, zero-shot on test, read the evidence: one row of figures."""
    run = runs / f"{args.model}-seed{seed}"
    reuse = args.reuse and (run / "model" / "config.json").is_file()
    if not reuse:
        shutil.rmtree(run, ignore_errors=True)  # every seed pretrains from scratch
    runs.mkdir(parents=True, exist_ok=True)
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    env["TOKENIZERS_PARALLELISM"] = "false"
    python = [sys.executable, "-m", "vlpipe"]
    pretrain = [
        *python,
        "pretrain",
        "--config",
        str(REPO / "configs" / "pretrain" / f"demo_{args.model}.yaml"),
        f"data.shards={data / 'shards' / 'train'}",
        f"data.vocab={data / 'vocab'}",
        f"data.heldout={data / 'shards' / 'val'}",
        f"output_dir={run}",
        f"seed={seed}",
        "progress=false",
        *args.overrides,
    ]
    began = time.perf_counter()
    if not reuse:
        run_logged(pretrain, runs / f"{args.model}-seed{seed}-pretrain.log", env)
    wall = time.perf_counter() - began if not reuse else float("nan")
    zeroshot = run / "zeroshot-test.json"
    evaluate = [
        *python,
        "evaluate",
        "zeroshot",
        "--model",
        str(run),
        "--shards",
        str(data / "shards" / "test"),
        "--labels",
        str(LABELS),
        "--output",
        str(zeroshot),
    ]
    run_logged(evaluate, runs / f"{args.model}-seed{seed}-zeroshot.log", env)
    result = json.loads(zeroshot.read_text())
    row: dict[str, Any] = {"seed": seed, "wall_s": wall, "zeroshot_method": result["method"]}
    for regime in ("cross_modal", "language_prior", "chance"):
        for kind in ("verb", "noun"):
            row[f"{regime}_{kind}"] = result["metrics"][regime][kind]["top1"]
    return row | last_evidence(run)


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"| metric (n = {len(rows)} seeds) | mean ± std |")
    print("|---|---|")
    for label, key, digits in TABLE:
        print(f"| {label} | {format_mean_std([r[key] for r in rows], digits)} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="videobert", choices=["videobert", "cbt", "vilbert"])
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="a seed whose run already holds a model is evaluated, not pretrained again",
    )
    p.add_argument("--data", default="demo_out", help="demo output to reuse (made when missing)")
    p.add_argument("--runs", default="runs/bench_learning", help="where runs and results go")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--jobs", type=int, default=1, help="seeds run at once")
    p.add_argument("overrides", nargs="*", help="pretraining config overrides (key=value)")
    args = p.parse_args()
    for item in args.overrides:
        key = item.partition("=")[0]
        if "=" not in item or key in OWN_KEYS:
            p.error(f"override {item!r}: use key=value, not one of {OWN_KEYS} (set per seed)")
    if args.seeds < 1 or args.threads < 1 or args.jobs < 1:
        p.error("--seeds, --threads and --jobs must be positive")
    data, runs = Path(args.data).resolve(), Path(args.runs).resolve()
    if not prepared(data):
        print(f"preparing the demo's shards and vocabulary in {data} (prep + cluster)", flush=True)
        prepare(data)
    load = os.getloadavg()[0]
    began = time.perf_counter()

    def attempt(seed: int) -> dict[str, Any]:
        try:
            row = one_seed(args, data, runs, seed)
        except (RuntimeError, OSError, KeyError, ValueError) as e:
            print(f"seed {seed}: FAILED: {e}", flush=True)
            return {"seed": seed, "error": str(e)}
        print(
            f"seed {seed}: verb {row['cross_modal_verb']:.1f} (prior "
            f"{row['language_prior_verb']:.1f})  noun {row['cross_modal_noun']:.1f} (prior "
            f"{row['language_prior_noun']:.1f})  matching {row['matching_accuracy']:.1f} %  "
            f"dependence {row['video_dependence']:+.3f} nats  pretrain {row['wall_s']:.0f} s",
            flush=True,
        )
        return row

    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(attempt, range(args.seeds)))
    rows = [r for r in results if "error" not in r]
    failed = [r for r in results if "error" in r]
    machine = (
        f"{cpu_name()}, {os.cpu_count()} CPUs, {args.threads} thread(s) per run, {args.jobs} "
        f"run(s) at once; load average {load:.1f} at start, {os.getloadavg()[0]:.1f} at end"
    )
    print()
    print(f"model {args.model}, overrides: {' '.join(args.overrides) or 'none'}")
    print(f"machine: {machine}")
    if rows:
        print(f"zero-shot on the test videos ({rows[0]['zeroshot_method']}); evidence on val")
        print_table(rows)
    out = runs / f"bench_learning-{args.model}.json"
    runs.mkdir(parents=True, exist_ok=True)
    summary = {
        "model": args.model,
        "overrides": args.overrides,
        "machine": machine,
        "total_s": time.perf_counter() - began,
        "seeds": results,
    }
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.replace(out)  # atomic: a reader sees the old results or the new ones
    print(f"every seed's figures: {out}")
    if failed:
        print(f"{len(failed)} of {args.seeds} seeds FAILED: " + "; ".join(
            f"seed {r['seed']}: {r['error']}" for r in failed))  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
