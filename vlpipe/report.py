"""The demo's report: report.md with stage timings, prep and vocabulary statistics, the training
curves (losses, and the held-out evidence of video use), zero-shot tables with 95 % intervals and
a verdict per model, and the fine-tuning table with a bar chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.io import read_jsonl

# Records of metrics.jsonl that are not loss terms.
NOT_LOSSES = ("step", "epoch", "lr", "samples_per_s", "tokens_per_s", "mfu")
# Evaluation records that are counts (of pairs, of masked words), not curves worth plotting.
EVAL_COUNTS = ("eval/pairs", "eval/masked")
# Fine-tuning metric shown per task (and the unit it is in).
HEADLINE = {"qa": "accuracy", "mc": "accuracy", "caption": "CIDEr", "classify": "top1"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training(run_dir: Path, png: Path) -> bool:
    """Losses per optimizer step (left) and the held-out evaluation curves (right, when the run
    evaluated: matching accuracy, video dependence, held-out losses). Returns whether it drew."""
    records = list(read_jsonl(run_dir / "metrics.jsonl"))
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if any(k.startswith("eval/") for k in r)]
    if not steps:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2 if evals else 1, figsize=(12 if evals else 7, 4), squeeze=False)
    ax = axes[0, 0]
    for key in [k for k in steps[0] if k not in NOT_LOSSES and not k.endswith("_acc")]:
        ax.plot([r["step"] for r in steps], [r.get(key) for r in steps], label=key)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.legend()
    ax.grid(alpha=0.3)
    if evals:
        ax = axes[0, 1]
        keys = sorted({k for r in evals for k in r if k.startswith("eval/")} - set(EVAL_COUNTS))
        # Matching accuracy is a percentage (chance 50): its own axis, so the nats stay legible.
        percent = ax.twinx() if "eval/matching_accuracy" in keys else None
        for key in keys:
            target = percent if key == "eval/matching_accuracy" else ax
            target.plot(
                [r["step"] for r in evals],
                [r.get(key) for r in evals],
                marker="o",
                color="black" if target is percent else None,
                label=key[5:],
            )
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("held-out (val) losses, video dependence (nats)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        if percent is not None:
            percent.set_ylabel("matching accuracy (%, black; dotted: chance 50)")
            percent.set_ylim(0, 100)
            percent.axhline(50, color="black", linestyle=":", linewidth=1)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return True


def evidence_line(run_dir: Path) -> str:
    """The last held-out evidence of the run (pretrain/evidence.py), one sentence; "" if none."""
    evals = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "eval/matching_accuracy" in r]
    if not evals:
        return ""
    r = evals[-1]
    return (
        f"Held-out evidence at step {r['step']} (val videos): matching accuracy "
        f"{r['eval/matching_accuracy']:.1f} % over {r['eval/pairs']:.0f} pairs (chance 50), "
        f"video dependence {r['eval/video_dependence']:+.3f} nats (0: the words are predicted "
        "without the video). One seed: `benchmarks/bench_learning.py` gives mean ± std over seeds."
    )


def plot_finetune(finetune: dict[str, dict[str, Any]], png: Path) -> None:
    """One group of bars per task (its headline test metric), one bar per variant."""
    plt = _pyplot()
    tasks = list(finetune)
    variants = list(next(iter(finetune.values())))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.5), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        metric = HEADLINE[task]
        values = [finetune[task][v]["test"].get(metric, float("nan")) for v in variants]
        ax.bar(variants, values, color=["tab:blue", "tab:orange", "tab:gray"][: len(variants)])
        ax.set_title(f"{task}: test {metric}")
        ax.tick_params(axis="x", labelrotation=20)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def side_by_side(out: Path) -> list[str]:
    """Every model's zero-shot result in this output directory (`vlpipe demo model=...` runs)."""
    from finetune.zeroshot import uses_video

    rows = []
    for path in sorted(out.glob("zeroshot-*.json")):
        r = json.loads(path.read_text())
        for method, m in r.get("by_method", {r["method"]: r["metrics"]}).items():
            cm, lp = m["cross_modal"], m["language_prior"]
            verdict = "yes" if "top1_ci" in cm["verb"] and uses_video(m) else "not shown"
            rows.append(
                f"| {r['model']} | {method} | {_top1(cm['verb'])} | {lp['verb']['top1']:.1f} "
                f"| {_top1(cm['noun'])} | {lp['noun']['top1']:.1f} | {verdict} |"
            )
    if len(rows) <= 2:
        return []
    return [
        "## All models run into this directory",
        "",
        "| model | scoring | verb top-1 [95% CI] | verb prior | noun top-1 [95% CI] | noun prior "
        "| uses the video |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def _top1(r: dict[str, Any]) -> str:
    ci = r.get("top1_ci")
    return f"{r['top1']:.1f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")


def finetune_section(finetune: dict[str, dict[str, Any]], model: str, out: Path) -> list[str]:
    if not finetune:
        return []
    plot_finetune(finetune, out / f"finetune-{model}.png")
    lines = [
        "## Fine-tuning (trained on train, best step on val, scored on test; one seed)",
        "",
        "| task | variant | test metric | value | val (best step) | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for task, variants in finetune.items():
        metric = HEADLINE[task]
        for name, r in variants.items():
            lines.append(
                f"| {task} | {name} | {metric} | {r['test'].get(metric, float('nan')):.1f} "
                f"| {r['val'].get(metric, float('nan')):.1f} (step {r['best_step']}) "
                f"| {r['seconds']:.0f} |"
            )
        extra = variants.get("pretrained", {}).get("test", {})
        if task == "qa" and "majority_accuracy" in extra:
            lines.append(
                f"| qa | majority answer | accuracy | {extra['majority_accuracy']:.1f} | | |"
            )
    lines += [
        "",
        f"![fine-tuning](finetune-{model}.png)",
        "",
        "`text only`: the same architecture from the text checkpoint alone (no video "
        "pretraining); `blind`: the pretrained model with every clip hidden. One seed: "
        "`benchmarks/bench_finetune.py` runs the 3-seed grid (100 % and 10 % of the training "
        "annotations) with mean ± std.",
        "",
    ]
    return lines


def render_report(
    model, prep, cluster, zeroshot, finetune, timings, run_dir: Path, out: Path
) -> str:
    from finetune.zeroshot import format_table, uses_video

    curves = plot_training(run_dir, out / f"training-{model}.png")
    grid = next(iter(sorted((out / "vocab").glob("*grid*.png"))), None)
    verdict = uses_video(zeroshot["metrics"])
    lines = [
        f"# vlpipe demo report ({model})",
        "",
        "Sample corpus (data/sample_corpus) -> prep -> cluster -> pretrain -> zero-shot and "
        "fine-tuning, scored on test videos that no training saw.",
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
        "## Pretraining",
        "",
        f"![training curves](training-{model}.png)" if curves else "(no curves)",
        "",
        "Right: on the val videos every few steps, video-text matching accuracy (the true "
        "sentence against the same sentence with another video's clips; chance 50 %) and video "
        "dependence (masked-word loss with another video's clips minus with its own; > 0 when "
        "the model reads the words from the video).",
        "",
        evidence_line(run_dir),
        "",
        f"## Zero-shot action classification ({zeroshot['segments']} segments of "
        f"{zeroshot['videos']} test videos)",
        "",
        format_table(zeroshot),
        "",
        f"Does {model} use the video? "
        + ("YES" if verdict else "NOT SHOWN")
        + f" (judged on {zeroshot['method']}: the lower end of the 95 % interval of cross-modal"
        " top-1, bootstrapped over test videos, "
        + ("lies" if verdict else "does not lie")
        + " above both the language prior and chance, for verbs and for nouns)."
        + (
            " With 5 verbs and 5 nouns, top-5 is 100 % by construction."
            if len(zeroshot["predictions"][0]["pred_verbs"]) <= 5
            else ""
        ),
        "",
        *finetune_section(finetune, model, out),
        *side_by_side(out),
    ]
    return "\n".join(lines) + "\n"
