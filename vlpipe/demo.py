"""`vlpipe demo` (what `make demo` runs): every stage on the bundled sample corpus, then a report.

    sample corpus -> prep (train / val / test videos) -> cluster (visual words, train) ->
    pretrain (evidence of video use on val every few steps) -> zero-shot verb/noun
    classification on the test videos, next to chance and the language prior ->
    fine-tuning (QA by default; captioning and classification with `tasks=`: pretrained vs
    text-only vs video hidden, trained on train, best step on val, scored on test) ->
    DIR/report.md with its plots.

The test videos are never seen by pretraining or fine-tuning training.

Overrides: `model=videobert|cbt|vilbert`, `limit=N` (only the first N videos of each split: a
smoke run), `tasks=qa,caption` (the fine-tuning tasks; `tasks=` none), and any stage setting
prefixed by its stage: `prep.video.size=224`, `cluster.depth=3`, `pretrain.optim.max_steps=50`,
`finetune.optim.max_steps=20` (every fine-tuning run), `finetune.caption.head.num_beams=5` (the
runs of one task: heads have different settings).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, load_config
from pipeline.finetune_config import TASKS, FinetuneConfig
from pipeline.models import MODELS

log = logging.getLogger("vlpipe.demo")
REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "data" / "sample_corpus"
STAGES = ("prep", "cluster", "pretrain", "finetune")
SPLITS = ("train", "val", "test")
# Fine-tuning tasks of a plain `make demo`: QA alone keeps it under 10 minutes on 2 cores (its 3
# runs took 193 s of a 627 s demo at 40 steps on a 2-core AVX2 EPYC, hence 30 in
# configs/finetune/demo_qa.yaml); `tasks=qa,caption,classify` adds 3 runs per task.
DEMO_TASKS = ("qa",)
# (label, init, blind): the rows of the fine-tuning table (issue 10's baselines)
VARIANTS = (
    ("pretrained", "pretrained", False),
    ("text only", "text", False),
    ("blind", "pretrained", True),
)


def split_overrides(overrides: list[str]) -> tuple[str, int, list[str], dict[str, list[str]]]:
    """`model=cbt limit=8 prep.video.size=112` -> ("cbt", 8, tasks, {"prep": ["video.size=112"]})."""
    model, limit, tasks, per_stage = "videobert", 0, list(DEMO_TASKS), {s: [] for s in STAGES}
    for item in overrides:
        key, _, value = item.partition("=")
        if key == "model":
            model = value
            continue
        if key == "limit":
            if not value.isdigit() or int(value) < 1:
                raise ConfigError(f"limit: expected a positive integer, got {value!r}")
            limit = int(value)
            continue
        if key == "tasks":
            tasks = [t for t in value.split(",") if t]
            for t in tasks:
                TASKS.get(t)  # ConfigError naming the choices
            continue
        stage, _, rest = key.partition(".")
        if stage not in per_stage or not rest:
            raise ConfigError(
                f"demo override {item!r}: use model=, limit=, tasks=, or prefix a key with one "
                f"of {STAGES}"
            )
        per_stage[stage].append(f"{rest}={value}")
    if model not in MODELS:
        raise ConfigError(f"model: {model!r} is not one of {MODELS.names()}")
    return model, limit, tasks, per_stage


def write_manifests(out: Path, labels: dict, limit: int = 0) -> dict[str, Path]:
    """{split}.jsonl manifests of the corpus videos, the labels.json id as each video's id."""
    manifests = {}
    for split in SPLITS:
        lines = [
            json.dumps({"path": str(CORPUS / v["file"]), "id": vid})
            for vid, v in sorted(labels["videos"].items())
            if v["split"] == split
        ]
        if limit:
            lines = lines[:limit]
        path = out / f"{split}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        manifests[split] = path
    return manifests


def annotation_files(labels: dict, task: str) -> tuple[str, dict[str, list[str]]]:
    """(format, files per split) of a demo task from labels.json's `annotations` entry."""
    key = {"qa": "qa", "mc": "mc", "caption": "captions", "classify": "labels"}[task]
    entry = labels["annotations"][key]
    files = entry["files"]
    if task == "classify":  # one file with a split column: the verb labels
        return entry["format"], {s: [str(CORPUS / files["verb"])] for s in SPLITS}
    return entry["format"], {s: [str(CORPUS / f) for f in _as_list(files[s])] for s in SPLITS}


def model_overrides(model: str, task: str) -> list[str]:
    """What a demo task config needs for this model. The QA demo reads answers with the masked-LM
    head, which CBT's text tower fills without the video, so CBT's QA reads the pooled output.
    The two-stream model's steps cost about twice VideoBERT's and its demo pretraining alone
    takes 6-7 min on 2 cores, so its QA keeps the cheaper pooled classifier with 30 steps: at 60
    steps (3 runs, 81 s) a fresh `vlpipe demo model=vilbert` took 10m21s, and the classifier
    did not beat text only there (21.2 vs 20.4 %). Both read the whole video in one row: the
    windowed reader (QA's `head.window_clips`) is measured with VideoBERT's masked-LM reader only,
    and the classifier spends a second pass per window on the alignment."""
    from pipeline.models import model_class

    whole_video_classifier = ["head.reader=classifier", "head.window_clips=0"]
    if task == "qa" and not model_class(model).masked_lm_sees_video:
        return whole_video_classifier
    if task == "qa" and model == "vilbert":
        return [*whole_video_classifier, "optim.max_steps=30", "eval_every=15"]
    return []


def task_overrides(items: list[str], task: str) -> list[str]:
    """The `finetune.` overrides for one task: `caption.head.num_beams=5` applies to captioning
    only (prefix dropped), an unprefixed `optim.max_steps=20` to every task."""
    out = []
    for item in items:
        first, _, rest = item.partition(".")
        if first not in TASKS:
            out.append(item)
        elif first == task:
            out.append(rest)
    return out


def finetune_config(
    task: str,
    model: str,
    run_dir: Path,
    shards: list[Path],
    output_dir: Path,
    labels: dict,
    init: str = "pretrained",
    blind: bool = False,
    extra: list[str] | tuple[str, ...] = (),
) -> FinetuneConfig:
    """The demo's `task` config (configs/finetune/demo_<task>.yaml) fine-tuning `model`'s run
    `run_dir` from `init` on the sample corpus's annotations joined to `shards`; `extra`
    overrides come last. Shared by the demo and the benchmarks that rerun its fine-tuning."""
    fmt, files = annotation_files(labels, task)
    return load_config(
        FinetuneConfig,
        REPO / f"configs/finetune/demo_{task}.yaml",
        [
            f"model={run_dir}",
            f"init={init}",
            f"blind={str(blind).lower()}",
            f"output_dir={output_dir}",
            f"data.shards=[{','.join(map(str, shards))}]",
            f"data.format={fmt}",
            f"data.train=[{','.join(files['train'])}]",
            f"data.val=[{','.join(files['val'])}]",
            *model_overrides(model, task),
            *extra,
        ],
    )


def _as_list(x) -> list[str]:
    return [x] if isinstance(x, str) else list(x)


def run_demo(out: Path, overrides: list[str]) -> dict[str, Any]:
    from data_prep.cluster import run_cluster
    from data_prep.prep import print_summary, run_prep
    from finetune.evaluate import evaluate_run
    from finetune.zeroshot import evaluate_zeroshot
    from pipeline.cluster_config import ClusterConfig
    from pipeline.prep_config import PrepConfig
    from pipeline.train_config import PretrainConfig
    from pretrain.train import train
    from vlpipe.report import render_report

    model, limit, tasks, per_stage = split_overrides(overrides)
    labels_path = CORPUS / "labels.json"
    labels = json.loads(labels_path.read_text())
    # Validate every config before any work starts.
    prep_cfg = load_config(PrepConfig, REPO / "configs/prep/demo.yaml", per_stage["prep"])
    cluster_cfg = load_config(
        ClusterConfig, REPO / "configs/cluster/demo.yaml", per_stage["cluster"]
    )
    run_dir = out / f"run-{model}"
    shards = {s: out / "shards" / s for s in SPLITS}
    pre_cfg = load_config(
        PretrainConfig,
        REPO / f"configs/pretrain/demo_{model}.yaml",
        [
            f"data.shards={shards['train']}",
            f"data.vocab={out / 'vocab'}",
            f"data.heldout={shards['val']}",
            f"output_dir={run_dir}",
            *per_stage["pretrain"],
        ],
    )
    ft_cfgs = {
        (task, name): finetune_config(
            task,
            model,
            run_dir,
            [shards["train"], shards["val"]],
            out / "finetune" / model / task / name.replace(" ", "-"),
            labels,
            init,
            blind,
            task_overrides(per_stage["finetune"], task),
        )
        for task in tasks
        for name, init, blind in VARIANTS
    }
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    manifests = write_manifests(out, labels, limit)
    t0 = time.perf_counter()
    prep_summaries = {}
    for split, manifest in manifests.items():
        s = run_prep(prep_cfg, str(manifest), shards[split])
        print_summary(s, shards[split])
        prep_summaries[split] = s
    timings["prep"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    cluster_summary = run_cluster(cluster_cfg, shards["train"], out / "vocab")
    timings["cluster"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    shutil.rmtree(run_dir, ignore_errors=True)  # the demo always pretrains from scratch
    train(pre_cfg)
    timings["pretrain"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    zeroshot = evaluate_zeroshot(run_dir, str(shards["test"]), labels_path)
    (out / f"zeroshot-{model}.json").write_text(json.dumps(zeroshot, indent=2))
    timings["zeroshot"] = time.perf_counter() - t0

    finetune: dict[str, dict[str, Any]] = {}
    if ft_cfgs:
        t0 = time.perf_counter()
        for (task, name), cfg in ft_cfgs.items():
            finetune.setdefault(task, {})[name] = finetune_and_test(
                cfg, evaluate_run, labels, task, shards
            )
        (out / f"finetune-{model}.json").write_text(json.dumps(finetune, indent=2))
        timings["finetune"] = time.perf_counter() - t0

    report = render_report(
        model, prep_summaries, cluster_summary, zeroshot, finetune, timings, run_dir, out
    )
    (out / "report.md").write_text(report)
    print(report)
    return {"zeroshot": zeroshot, "finetune": finetune, "timings": timings}


def finetune_and_test(cfg, evaluate_run, labels: dict, task: str, shards: dict) -> dict[str, Any]:
    """Train one fine-tuning run (best step on val), then score it on the test annotations."""
    import importlib

    from pipeline.engine import train as run_engine

    shutil.rmtree(cfg.output_dir, ignore_errors=True)
    entry = TASKS.get(cfg.task)
    task_obj = getattr(importlib.import_module(entry.module), entry.task_class)(cfg)
    t0 = time.perf_counter()
    result = run_engine(task_obj, cfg)
    fmt, files = annotation_files(labels, task)
    test = evaluate_run(cfg.output_dir, str(shards["test"]), files["test"], fmt, "test")
    return {
        "seconds": time.perf_counter() - t0,
        "best_step": (result.best or {}).get("step", result.step),
        "val": {k[5:]: v for k, v in (result.best or {}).items() if k.startswith("eval/")},
        "test": test["metrics"],
    }
