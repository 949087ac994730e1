"""`vlpipe demo` (what `make demo` runs): every stage on the bundled sample corpus, then a report.

    sample corpus -> prep (train / held-out videos) -> cluster (visual words) -> pretrain
    -> zero-shot verb/noun classification on the held-out videos, next to chance and the
    language prior -> DIR/report.md + loss_curve.png + the cluster grid.

Overrides: `model=videobert|cbt|vilbert`, `limit=N` (only the first N training videos and
N/4 held-out ones: a quick smoke run), and any stage setting prefixed by its stage:
`prep.video.size=224`, `cluster.depth=3`, `pretrain.optim.max_steps=50`.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, load_config
from pipeline.models import MODELS

log = logging.getLogger("vlpipe.demo")
REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "data" / "sample_corpus"
STAGES = ("prep", "cluster", "pretrain")


def split_overrides(overrides: list[str]) -> tuple[str, int, dict[str, list[str]]]:
    """`model=cbt limit=8 prep.video.size=112` -> ("cbt", 8, {"prep": ["video.size=112"], ...})."""
    model, limit, per_stage = "videobert", 0, {s: [] for s in STAGES}
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
        stage, _, rest = key.partition(".")
        if stage not in per_stage or not rest:
            raise ConfigError(
                f"demo override {item!r}: use model=..., or prefix a key with one of {STAGES}"
            )
        per_stage[stage].append(f"{rest}={value}")
    if model not in MODELS:
        raise ConfigError(f"model: {model!r} is not one of {MODELS.names()}")
    return model, limit, per_stage


def write_manifests(out: Path, labels: dict, limit: int = 0) -> dict[str, Path]:
    """train.jsonl / heldout.jsonl manifests of the corpus videos (held-out never pretrains)."""
    manifests = {}
    for split in ("train", "heldout"):
        lines = [
            json.dumps({"path": str(CORPUS / v["file"]), "id": vid})
            for vid, v in sorted(labels["videos"].items())
            if v["split"] == split
        ]
        if limit:
            lines = lines[: limit if split == "train" else max(1, limit // 4)]
        path = out / f"{split}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        manifests[split] = path
    return manifests


def plot_losses(metrics_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
    rows = [r for r in rows if "loss" in r]  # optimizer steps (evaluation records have eval/*)
    keys = [
        k
        for k in rows[0]
        if k not in ("step", "epoch", "lr", "samples_per_s", "tokens_per_s", "mfu")
        and not k.endswith("_acc")
    ]
    fig, ax = plt.subplots(figsize=(7, 4))
    for k in keys:
        ax.plot([r["step"] for r in rows], [r[k] for r in rows], label=k)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def run_demo(out: Path, overrides: list[str]) -> dict[str, Any]:
    from data_prep.cluster import run_cluster
    from data_prep.prep import print_summary, run_prep
    from finetune.zeroshot import evaluate_zeroshot
    from pipeline.cluster_config import ClusterConfig
    from pipeline.prep_config import PrepConfig
    from pipeline.train_config import PretrainConfig
    from pretrain.train import train

    model, limit, per_stage = split_overrides(overrides)
    # Validate every config before any work starts.
    prep_cfg = load_config(PrepConfig, REPO / "configs/prep/demo.yaml", per_stage["prep"])
    cluster_cfg = load_config(
        ClusterConfig, REPO / "configs/cluster/demo.yaml", per_stage["cluster"]
    )
    run_dir = out / f"run-{model}"
    pre_cfg = load_config(
        PretrainConfig,
        REPO / f"configs/pretrain/demo_{model}.yaml",
        [
            f"data.shards={out / 'shards' / 'train'}",
            f"data.vocab={out / 'vocab'}",
            f"output_dir={run_dir}",
            *per_stage["pretrain"],
        ],
    )
    labels_path = CORPUS / "labels.json"
    labels = json.loads(labels_path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    manifests = write_manifests(out, labels, limit)
    t0 = time.perf_counter()
    prep_summaries = {}
    for split, manifest in manifests.items():
        s = run_prep(prep_cfg, str(manifest), out / "shards" / split)
        print_summary(s, out / "shards" / split)
        prep_summaries[split] = s
    timings["prep"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    cluster_summary = run_cluster(cluster_cfg, out / "shards" / "train", out / "vocab")
    timings["cluster"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    shutil.rmtree(run_dir, ignore_errors=True)  # the demo always pretrains from scratch
    train(pre_cfg)
    timings["pretrain"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = evaluate_zeroshot(run_dir, str(out / "shards" / "heldout"), labels_path)
    (out / f"zeroshot-{model}.json").write_text(json.dumps(result, indent=2))
    timings["zeroshot"] = time.perf_counter() - t0

    plot_losses(run_dir / "metrics.jsonl", out / f"loss_curve-{model}.png")
    grid = next(iter(sorted((out / "vocab").glob("*grid*.png"))), None)
    report = render_report(model, prep_summaries, cluster_summary, result, timings, grid, out)
    (out / "report.md").write_text(report)
    print(report)
    return result


def side_by_side(out: Path) -> list[str]:
    """Every model's zero-shot result in this output directory (`vlpipe demo model=...` runs)."""
    rows = []
    for path in sorted(out.glob("zeroshot-*.json")):
        r = json.loads(path.read_text())
        m = r["metrics"]
        for regime in ("cross_modal", "language_prior"):
            rows.append(
                f"| {r['model']} | {r['method']} | {regime.replace('_', ' ')} "
                f"| {m[regime]['verb']['top1']:.1f} | {m[regime]['verb']['top5']:.1f} "
                f"| {m[regime]['noun']['top1']:.1f} | {m[regime]['noun']['top5']:.1f} |"
            )
    if len(rows) <= 2:
        return []
    return [
        "## All models run into this directory",
        "",
        "| model | scoring | regime | verb top-1 | verb top-5 | noun top-1 | noun top-5 |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def render_report(model, prep, cluster, result, timings, grid, out: Path) -> str:
    from finetune.zeroshot import format_table, uses_video

    verdict = uses_video(result["metrics"])
    lines = [
        f"# vlpipe demo report ({model})",
        "",
        "Sample corpus (data/sample_corpus) -> prep -> cluster -> pretrain -> zero-shot on held-out videos.",
        "",
        "## Stage timings",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in timings.items()],
        f"| total | {sum(timings.values()):.1f} |",
        "",
        "## Prep",
        "",
        "| split | videos ok | failed | clips | transcript words |",
        "|---|---|---|---|---|",
        *[
            f"| {k} | {s.ok + s.skipped_done} | {sum(s.failed.values())} | {s.clips} | {s.words} |"
            for k, s in prep.items()
        ],
        "",
        "S3D weights: "
        + ("RANDOM INIT (no public weights offline)" if prep["train"].random_init else "loaded"),
        "",
        "## Visual vocabulary",
        "",
        "```",
        json.dumps({k: v for k, v in cluster.items() if not isinstance(v, list | dict)}, indent=1),
        "```",
        "",
        f"![cluster grid]({grid.relative_to(out)})" if grid else "(no cluster grid)",
        "",
        "## Training",
        "",
        f"![loss curve](loss_curve-{model}.png)",
        "",
        f"## Zero-shot action classification ({result['segments']} segments of {result['videos']} held-out videos)",
        "",
        format_table(result),
        "",
        f"Does {model} use the video? "
        + ("YES" if verdict else "NOT SHOWN")
        + f" (judged on {result['method']}: the lower end of the 95 % interval of cross-modal"
        " top-1, over held-out videos, "
        + ("lies" if verdict else "does not lie")
        + " above both the language prior and chance, for verbs and for nouns)."
        + (
            " (With 5 verbs and 5 nouns, top-5 is 100 % by construction.)"
            if len(result["predictions"][0]["pred_verbs"]) <= 5
            else ""
        ),
        "",
        *side_by_side(out),
    ]
    return "\n".join(lines) + "\n"
