"""`vlpipe` command line: one command, one subcommand per stage.

    vlpipe prep     --input VIDEOS --output SHARDS [--config FILE] [key=value ...]
    vlpipe cluster  --shards SHARDS --output VOCAB [--config FILE] [key=value ...]
    vlpipe pretrain --config FILE [key=value ...] [--resume]
    vlpipe evaluate zeroshot --model RUN_DIR --shards SHARDS --labels labels.json
    vlpipe demo     [--output DIR] [model=videobert] [key=value ...]

This package is the face of the house: the only code that imports every stage, lazily inside
each handler so `vlpipe --help` stays fast. The library (`pipeline/`) never imports a stage.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pipeline.config import ConfigError, UserInputError

REPO = Path(__file__).resolve().parent.parent
REPO_CONFIGS = REPO / "configs"
# Libraries that log at INFO what a user need not see (model loading, faiss's loader probing
# optional modules); shown with -v.
CHATTY_LOGGERS = ("faster_whisper", "faiss", "faiss.loader", "httpx", "urllib3", "accelerate")


def _default_config(rel: str) -> Path | None:
    path = REPO_CONFIGS / rel
    return path if path.exists() else None


def config_path(value: str | None) -> Path | None:
    """`--config` as given, else relative to the vlpipe checkout (so `configs/...` from the
    README works from any directory); `~` and variables are expanded. None stays None."""
    if value is None:
        return None
    path = Path(os.path.expandvars(value)).expanduser()
    if path.exists() or path.is_absolute():
        return path
    in_repo = REPO / path
    return in_repo if in_repo.exists() else path


def cmd_prep(args: argparse.Namespace) -> int:
    from data_prep.inputs import InputError
    from data_prep.prep import print_summary, run_prep
    from pipeline.config import load_config
    from pipeline.prep_config import PrepConfig

    cfg = load_config(
        PrepConfig, config_path(args.config) or _default_config("prep/default.yaml"), args.overrides
    )
    out = Path(args.output).expanduser()
    try:
        summary = run_prep(cfg, args.input, out, retry_failed=args.retry_failed)
    except InputError as e:
        logging.getLogger("vlpipe").error("%s", e)
        return 2
    print_summary(summary, out)
    if summary.inputs == 0:
        logging.getLogger("vlpipe").error("no video found in %s", args.input)
        return 1
    # Non-zero only when nothing at all could be processed.
    return 0 if summary.total_samples > 0 else 1


def cmd_pretrain(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.train_config import PretrainConfig

    # Validated before anything heavy is imported or created (a bad key fails in ~1 s).
    cfg = load_config(PretrainConfig, config_path(args.config), args.overrides)
    from pretrain.train import train

    result = train(cfg, resume=args.resume)
    print(f"model saved to {result.run_dir / 'model'}")
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from data_prep.cluster import ClusterError, print_cluster_summary, run_cluster
    from pipeline.cluster_config import ClusterConfig
    from pipeline.config import load_config

    cfg = load_config(
        ClusterConfig,
        config_path(args.config) or _default_config("cluster/default.yaml"),
        args.overrides,
    )
    try:
        summary = run_cluster(cfg, Path(args.shards).expanduser(), Path(args.output).expanduser())
    except ClusterError as e:
        logging.getLogger("vlpipe").error("%s", e)
        return 2
    print_cluster_summary(summary)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pipeline.io import atomic_write_json

    labels = Path(args.labels).expanduser()
    out = Path(args.output) if args.output else Path(args.model) / "zeroshot.json"
    if labels.suffix == ".json" and args.format is None:
        # labels.json: the verb/noun protocol of methods.md 1.6 (README: the labels file)
        from finetune.zeroshot import evaluate_zeroshot, format_table

        result = evaluate_zeroshot(args.model, args.shards, labels)
        table = format_table(result)
    else:
        from finetune.zeroshot_classify import evaluate_zeroshot_labels, format_label_table

        fmt = args.format or {".csv": "kinetics"}.get(labels.suffix)
        if fmt is None:
            raise UserInputError(f"{labels}: say which annotation format it is (--format)")
        result = evaluate_zeroshot_labels(
            args.model, args.shards, [str(labels), *args.extra], fmt, args.templates, args.split
        )
        table = format_label_table(result)
    atomic_write_json(out, result)
    print(table)
    print(f"metrics and per-video predictions: {out}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    import importlib

    from pipeline.config import load_config
    from pipeline.engine import train
    from pipeline.finetune_config import TASKS, FinetuneConfig

    # Validated before anything heavy is imported or created.
    cfg = load_config(FinetuneConfig, config_path(args.config), args.overrides)
    entry = TASKS.get(cfg.task)
    task = getattr(importlib.import_module(entry.module), entry.task_class)(cfg)
    result = train(task, cfg, resume=args.resume)
    best = result.best or {}
    shown = ", ".join(f"{k[5:]} {v:.2f}" for k, v in best.items() if k.startswith("eval/"))
    print(
        f"model saved to {result.run_dir / 'model'}"
        + (f" (best step {best['step']}: {shown})" if best else "")
    )
    return 0


def cmd_evaluate_task(args: argparse.Namespace) -> int:
    import json

    from finetune.evaluate import evaluate_run

    result = evaluate_run(
        args.model, args.shards, args.annotations, args.format, args.split, args.output
    )
    if result["task"] != args.task:
        raise UserInputError(f"{args.model} is a {result['task']} run, not {args.task}")
    print(json.dumps(result["metrics"], indent=1))
    print(f"predictions and metrics: {result['output']} ({result['failures']} annotations unused)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vlpipe.demo import run_demo

    run_demo(Path(args.output), args.overrides)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlpipe", description=__doc__.split("\n")[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    prep = sub.add_parser("prep", help="videos -> clip-aligned webdataset shards")
    prep.add_argument("--input", required=True, help="directory, manifest (.csv/.jsonl) or tars")
    prep.add_argument("--output", required=True, help="output directory for shards")
    prep.add_argument("--config", help="YAML config (default: configs/prep/default.yaml)")
    prep.add_argument("--retry-failed", action="store_true", help="redo inputs that failed before")
    prep.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. video.fps=30")
    prep.set_defaults(func=cmd_prep)

    pre = sub.add_parser("pretrain", help="pretrain VideoBERT / CBT / two-stream (Accelerate)")
    pre.add_argument("--config", required=True, help="YAML, e.g. configs/pretrain/videobert.yaml")
    pre.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    pre.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    pre.set_defaults(func=cmd_pretrain)

    clu = sub.add_parser("cluster", help="visual vocabulary: hierarchical k-means (faiss)")
    clu.add_argument("--shards", required=True, help="prep output directory")
    clu.add_argument("--output", required=True, help="vocabulary output directory")
    clu.add_argument("--config", help="YAML (default: configs/cluster/default.yaml, 4 x 12)")
    clu.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    clu.set_defaults(func=cmd_cluster)

    ev = sub.add_parser("evaluate", help="evaluate a pretrained model")
    ev_sub = ev.add_subparsers(dest="task", required=True)
    zs = ev_sub.add_parser("zeroshot", help="zero-shot action classification (methods.md 1.6)")
    zs.add_argument("--model", required=True, help="pretrain run directory or its model/")
    zs.add_argument("--shards", required=True, help="prep output holding the labelled videos")
    zs.add_argument(
        "--labels",
        required=True,
        help="labels.json (verbs, nouns, segments), or a label file (kinetics.csv, ucf101 ...)",
    )
    zs.add_argument("--format", help="annotation format of a label file (kinetics, ucf101 ...)")
    zs.add_argument("--extra", nargs="*", default=[], help="more files of the format (ucf101 list)")
    zs.add_argument("--templates", help="prompt templates, one per line with {label}")
    zs.add_argument("--split", default="test", help="labelled clips of this split (default test)")
    zs.add_argument("--output", help="metrics JSON (default: MODEL/zeroshot.json)")
    zs.set_defaults(func=cmd_evaluate)
    for task, what in (
        ("qa", "open-ended video QA accuracy"),
        ("mc", "multiple-choice accuracy"),
        ("caption", "BLEU-1..4, METEOR, ROUGE-L, CIDEr"),
        ("classify", "top-1 / top-5 / mean class accuracy"),
    ):
        ev_task = ev_sub.add_parser(task, help=f"a fine-tuned run: {what}")
        ev_task.add_argument("--model", required=True, help="fine-tuning run directory")
        ev_task.add_argument("--shards", required=True, help="prep output holding the videos")
        ev_task.add_argument("--annotations", required=True, nargs="+", help="annotation file(s)")
        ev_task.add_argument("--format", help="annotation format (default: the run's)")
        ev_task.add_argument("--split", default="test", help="records of this split (default test)")
        ev_task.add_argument("--output", help="output directory (default RUN/eval/test)")
        ev_task.set_defaults(func=cmd_evaluate_task, task=task)

    fin = sub.add_parser("finetune", help="fine-tune a pretrained model on a downstream task")
    fin.add_argument("--config", required=True, help="YAML, e.g. configs/finetune/qa.yaml")
    fin.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    fin.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. model=runs/x")
    fin.set_defaults(func=cmd_finetune)

    demo = sub.add_parser("demo", help="every stage on the bundled sample corpus, with a report")
    demo.add_argument("--output", default="demo_out", help="demo output directory")
    demo.add_argument("overrides", nargs="*", help="model=videobert|cbt|vilbert, key=value ...")
    demo.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not args.verbose:
        for name in CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"vlpipe: invalid config: {e}", file=sys.stderr)
        return 2
    except UserInputError as e:
        print(f"vlpipe: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
