"""Zero-shot action classification on any label list (Kinetics, UCF101, HMDB51 ... as distributed).

    vlpipe evaluate zeroshot --model RUN --shards SHARDS --labels kinetics400.csv \\
        [--format kinetics] [--templates templates.txt] [--split test]

Every labelled clip (finetune.readers + the join of finetune.annotations) is scored against every
class by the model's alignment with prompts: each template (one per line of `--templates`, with
`{label}` where the class name goes; CamelCase and underscores become words, `label_to_words`) is
filled with the class name, and a class's score is the mean of its templates' alignment logits.
Where every class name is one WordPiece token and the model's masked LM sees the video, the masked
template protocol of methods.md 1.6 is reported too ("[MASK]" in a template holds the class).
Rows: with the video (cross-modal) and without (the language prior); chance. Metrics: top-1 (with
its 95 % bootstrap interval over videos), top-5 and mean class accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from finetune.annotations import ShardIndex, join, segment_features
from finetune.classify import classification_scores
from finetune.readers import label_to_words, read_annotations
from pipeline.config import UserInputError
from pipeline.models import load_pretrained, model_name_of, resolve_model_dir
from pipeline.models.text import load_tokenizer
from pipeline.stats import bootstrap_interval
from pipeline.visual_words import nearest_words

DEFAULT_TEMPLATES = (
    "a video of {label}",
    "a person is {label}",
    "now let me show you how to {label}",
)
MASK_TEMPLATE = "now let me show you how to [MASK]"


def read_templates(path: str | Path | None) -> list[str]:
    """Templates, one per line (blank lines and lines starting with # skipped)."""
    if path is None:
        return list(DEFAULT_TEMPLATES)
    path = Path(path).expanduser()
    try:
        lines = [x.strip() for x in path.read_text().splitlines()]
    except OSError as e:
        raise UserInputError(f"templates file {path}: {e}") from None
    templates = [x for x in lines if x and not x.startswith("#")]
    bad = [t for t in templates if "{label}" not in t]
    if not templates or bad:
        raise UserInputError(f"templates file {path}: every line needs {{label}} (bad: {bad[:3]})")
    return templates


def batch_of(
    feats: list[np.ndarray], words: list[np.ndarray], texts: list[list[int]], with_video: bool
) -> dict:
    """Segment batch: row i = clips feats[i] with text texts[i] (video hidden if not with_video)."""
    B, L, T = len(feats), max(1, max(len(t) for t in texts)), max(len(f) for f in feats)
    batch = {
        "text_ids": torch.zeros(B, L, dtype=torch.long),
        "text_mask": torch.zeros(B, L, dtype=torch.bool),
        "video_feats": torch.zeros(B, T, feats[0].shape[1]),
        "video_tokens": torch.full((B, T), -1, dtype=torch.long),
        "video_mask": torch.zeros(B, T, dtype=torch.bool),
        "video_ids": torch.arange(B),
    }
    for i, (f, w, t) in enumerate(zip(feats, words, texts, strict=True)):
        batch["text_ids"][i, : len(t)] = torch.tensor(t, dtype=torch.long)
        batch["text_mask"][i, : len(t)] = True
        batch["video_feats"][i, : len(f)] = torch.from_numpy(f)
        batch["video_tokens"][i, : len(f)] = torch.from_numpy(w)
        batch["video_mask"][i, : len(f)] = with_video
    return batch


@torch.inference_mode()
def alignment_class_scores(
    model, prompts: list[list[list[int]]], feats, words, with_video, bs=64
) -> np.ndarray:
    """prompts[c][k]: ids of class c under template k -> [N, C] mean logit over templates."""
    flat = [(c, ids) for c, per_class in enumerate(prompts) for ids in per_class]
    scores = np.zeros((len(feats), len(prompts)), np.float64)
    pairs = [(n, j) for n in range(len(feats)) for j in range(len(flat))]
    for s in range(0, len(pairs), bs):
        chunk = pairs[s : s + bs]
        batch = batch_of(
            [feats[n] for n, _ in chunk],
            [words[n] for n, _ in chunk],
            [flat[j][1] for _, j in chunk],
            with_video,
        )
        for (n, j), v in zip(chunk, model.alignment_logits(batch).float().tolist(), strict=True):
            scores[n, flat[j][0]] += v / len(prompts[flat[j][0]])
    return scores


@torch.inference_mode()
def masked_class_scores(
    model, tok, class_ids: list[int], feats, words, with_video, bs=32
) -> np.ndarray:
    """Log-prob of each (single-token) class at the [MASK] of MASK_TEMPLATE -> [N, C]."""
    ids = tok(MASK_TEMPLATE, add_special_tokens=False)["input_ids"]
    slot = ids.index(tok.mask_token_id)
    out = []
    for s in range(0, len(feats), bs):
        batch = batch_of(
            feats[s : s + bs], words[s : s + bs], [ids] * len(feats[s : s + bs]), with_video
        )
        logp = model.masked_text_logits(batch).float().log_softmax(-1)
        out.append(logp[:, slot, class_ids].numpy())
    return np.concatenate(out)


def evaluate_zeroshot_labels(
    model_dir: str | Path,
    shards: str,
    annotations: list[str],
    fmt: str,
    templates: str | Path | None = None,
    split: str | None = "test",
) -> dict[str, Any]:
    """Zero-shot classification of the labelled clips of `annotations` (module doc)."""
    model_dir = resolve_model_dir(model_dir)
    model = load_pretrained(model_dir).eval()
    tok = load_tokenizer(model_dir)
    vocab = model_dir / "vocab" / "centroids.npy"
    centroids = np.load(vocab, allow_pickle=False) if vocab.exists() else None
    read = read_annotations(fmt, *annotations)
    items = [i for i in read.items if split is None or i.split in (None, split)]
    joined = join(items, ShardIndex.build(shards))
    examples = list(segment_features(shards, joined.items))
    if not examples:
        raise UserInputError(f"no labelled clip of {annotations} found in {shards}")
    classes = sorted({j.item.label for j in joined.items})
    feats = [f for _, f in examples]
    words = [nearest_words(f, centroids) for f in feats]
    videos = [j.item.video_id for j, _ in examples]
    target = np.array([classes.index(j.item.label) for j, _ in examples])
    filled = [
        [t.format(label=label_to_words(c)) for t in read_templates(templates)] for c in classes
    ]
    prompts = [
        [tok(p, add_special_tokens=False)["input_ids"] for p in per_class] for per_class in filled
    ]
    methods = {"alignment": lambda wv: alignment_class_scores(model, prompts, feats, words, wv)}
    single = [tok(label_to_words(c), add_special_tokens=False)["input_ids"] for c in classes]
    if model.masked_lm_sees_video and all(len(p) == 1 for p in single):
        ids = [p[0] for p in single]
        methods["masked-lm"] = lambda wv: masked_class_scores(model, tok, ids, feats, words, wv)
    by_method = {}
    for method, score in methods.items():
        rows = {}
        for regime, with_video in (("cross_modal", True), ("language_prior", False)):
            scores = score(with_video)
            ranked = np.argsort(-scores, axis=1)[:, :5]
            preds = [
                {"label": classes[t], "top5": [classes[k] for k in r]}
                for t, r in zip(target, ranked, strict=True)
            ]
            metrics = classification_scores(preds)
            hits = 100.0 * (ranked[:, 0] == target)
            metrics["top1_ci"] = list(bootstrap_interval(hits, videos))
            rows[regime] = metrics
        rows["chance"] = {
            "top1": 100 / len(classes),
            "top5": 100 * min(5, len(classes)) / len(classes),
        }
        by_method[method] = rows
    return {
        "model": model_name_of(model_dir),
        "classes": len(classes),
        "clips": len(examples),
        "videos": len(set(videos)),
        "failures": [str(f) for f in [*read.failures, *joined.failures]],
        "by_method": by_method,
    }


def format_label_table(result: dict[str, Any]) -> str:
    """Markdown: per method, rows = regimes, columns = top-1 [95% CI], top-5, mean class acc."""
    lines = []
    for method, rows in result["by_method"].items():
        lines += [
            f"| {result['model']} ({method}, {result['classes']} classes, {result['clips']} clips) | top-1 [95% CI] | top-5 | mean class acc |",
            "|---|---|---|---|",
        ]
        for regime in ("cross_modal", "language_prior", "chance"):
            r = rows[regime]
            ci = r.get("top1_ci")
            top1 = f"{r['top1']:.1f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")
            mca = f"{r['mean_class_accuracy']:.1f}" if "mean_class_accuracy" in r else "-"
            lines.append(f"| {regime.replace('_', ' ')} | {top1} | {r['top5']:.1f} | {mca} |")
        lines.append("")
    return "\n".join(lines).rstrip()
