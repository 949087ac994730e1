"""Zero-shot action classification (VideoBERT protocol, methods.md 1.6).

    vlpipe evaluate zeroshot --model RUN_DIR --shards SHARDS --labels labels.json [--output F]

For each labelled segment (a verb and a noun over a time span of a video in SHARDS):

* models with a masked-LM over the video (VideoBERT, two-stream): the video tokens + "now let me
  show you how to [MASK] the [MASK]"; the verb is read from the first mask and the noun from the
  second, restricted to the label lists;
* every model can also score by alignment: the video against every prompt "now let me show you
  how to <verb> the <noun>"; a verb's score is the log-sum-exp over nouns and vice versa (CBT,
  whose text tower never sees the video, uses this).

The "language prior" baseline is the same query with no video (methods.md 1.6 table). Chance is
1/|verbs| (top-1) and 5/|verbs| (top-5), and the same for nouns.

labels.json: {"verbs": [...], "nouns": [...], "template": "... [MASK] ... [MASK]" (optional),
"videos": {id: {"file": relative path as given to prep, "split": "train"|"heldout",
"segments": [{"start", "end", "verb", "noun"}]}}}; only "heldout" videos are scored when any is
marked so.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds

from pipeline.clips import sentence_clip_range
from pipeline.config import UserInputError
from pipeline.models import load_pretrained, model_name_of, resolve_model_dir
from pipeline.models.text import load_tokenizer
from pipeline.shards import decode_sample, shard_urls
from pipeline.stats import bootstrap_interval
from pipeline.visual_words import nearest_words

log = logging.getLogger("vlpipe.zeroshot")
TEMPLATE = "now let me show you how to [MASK] the [MASK]"
HELD_OUT = ("test", "heldout")  # labels.json splits that are scored (the held-out videos)


@dataclass
class Query:
    video: str  # labels.json video id
    verb: int  # index into verbs
    noun: int  # index into nouns
    feats: np.ndarray  # float32 [T, F] clips of the segment
    tokens: np.ndarray  # int64 [T] visual words (-1 without a vocabulary)


def label_ids(tokenizer, words: list[str], kind: str) -> list[int]:
    """WordPiece id of each label; UserInputError when a label is not a single token (the
    masked-template protocol fills one [MASK] slot per label, methods.md 1.6)."""
    ids = []
    for w in words:
        pieces = tokenizer(w, add_special_tokens=False)["input_ids"]
        if len(pieces) != 1:
            split = " ".join(tokenizer.convert_ids_to_tokens(pieces))
            raise UserInputError(
                f"{kind} {w!r} is not a single WordPiece token of the model's vocabulary "
                f"(it splits into: {split}); the masked-template protocol needs one-token "
                f"labels: use a one-word synonym or score by alignment"
            )
        ids.append(pieces[0])
    return ids


def load_queries(shards: str, labels: dict, centroids: np.ndarray | None) -> list[Query]:
    """Segments of the labelled videos, cut from the prep samples by their time spans (the
    clips that overlap a segment, pipeline.clips: the rule transcript sentences follow)."""
    videos = labels["videos"]
    wanted = {k: v for k, v in videos.items() if v.get("split") in HELD_OUT}
    if not wanted:
        log.warning("labels file marks no video as test/heldout: scoring every video in it")
        wanted = videos
    by_file = {Path(v["file"]).as_posix(): k for k, v in wanted.items()}

    def video_of(meta: dict) -> str | None:
        # a manifest id (as the demo's prep manifests give), else the input path as given
        manifest_id = (meta.get("input_extra") or {}).get("manifest_id")
        if manifest_id in wanted:
            return manifest_id
        src = Path(meta["source"]).as_posix()
        return next((k for f, k in by_file.items() if src == f or src.endswith("/" + f)), None)

    verbs, nouns = labels["verbs"], labels["nouns"]
    queries = []
    for raw in wds.WebDataset(shard_urls(shards), shardshuffle=False, empty_check=False):
        sample = decode_sample(raw)
        vid = video_of(sample["meta.json"])
        if vid is None:
            continue
        spans = [(c["start"], c["end"]) for c in sample["clips.json"]["clips"]]
        feats = sample["feat.npy"].astype(np.float32)
        words = nearest_words(feats, centroids)
        for seg in wanted[vid]["segments"]:
            first, stop = sentence_clip_range(spans, seg["start"], seg["end"])
            if first >= stop:
                continue
            queries.append(
                Query(
                    vid,
                    verbs.index(seg["verb"]),
                    nouns.index(seg["noun"]),
                    feats[first:stop],
                    words[first:stop],
                )
            )
    if not queries:
        raise UserInputError(f"no labelled segment of {len(wanted)} videos found in {shards}")
    return queries


def make_batch(queries: list[Query], text: list[list[int]], with_video: bool) -> dict[str, Any]:
    """Segment batch (pipeline.models.base schema) pairing query i with text[i]."""
    B, L = len(queries), max(len(t) for t in text)
    T = max(len(q.feats) for q in queries)
    F = queries[0].feats.shape[1]
    batch = {
        "text_ids": torch.zeros(B, L, dtype=torch.long),
        "text_mask": torch.zeros(B, L, dtype=torch.bool),
        "video_feats": torch.zeros(B, T, F),
        "video_tokens": torch.full((B, T), -1, dtype=torch.long),
        "video_mask": torch.zeros(B, T, dtype=torch.bool),
        "video_ids": torch.arange(B, dtype=torch.long),
    }
    for i, (q, ids) in enumerate(zip(queries, text, strict=True)):
        batch["text_ids"][i, : len(ids)] = torch.tensor(ids)
        batch["text_mask"][i, : len(ids)] = True
        n = len(q.feats)
        batch["video_feats"][i, :n] = torch.from_numpy(q.feats)
        batch["video_tokens"][i, :n] = torch.from_numpy(q.tokens)
        batch["video_mask"][i, :n] = with_video
    return batch


def topk_metrics(
    scores: np.ndarray, target: np.ndarray, videos: list[str] | None = None
) -> dict[str, Any]:
    """scores [N, C], target [N] -> top-1 / top-5 accuracy in percent; with the video of each
    query, also `top1_ci`: the 95 % bootstrap interval of top-1 over videos (pipeline.stats)."""
    order = np.argsort(-scores, axis=1)
    hit = order == target[:, None]
    top1 = 100.0 * hit[:, :1].any(1)
    out: dict[str, Any] = {
        "top1": float(top1.mean()),
        "top5": 100 * float(hit[:, :5].any(1).mean()),
    }
    if videos is not None:
        out["top1_ci"] = list(bootstrap_interval(top1, videos))
    return out


@torch.inference_mode()
def mask_scores(model, tok, queries, verb_ids, noun_ids, template, with_video, bs=32):
    """VideoBERT protocol: verb / noun log-probs at the two [MASK] slots. -> ([N, V], [N, N])."""
    ids = tok(template, add_special_tokens=False)["input_ids"]
    slots = [i for i, t in enumerate(ids) if t == tok.mask_token_id]
    if len(slots) != 2:
        raise ValueError(f"template {template!r} must hold exactly two [MASK]")
    verb_s, noun_s = [], []
    for s in range(0, len(queries), bs):
        chunk = queries[s : s + bs]
        logits = model.masked_text_logits(make_batch(chunk, [ids] * len(chunk), with_video))
        logp = logits.float().log_softmax(-1)
        verb_s.append(logp[:, slots[0], verb_ids].numpy())
        noun_s.append(logp[:, slots[1], noun_ids].numpy())
    return np.concatenate(verb_s), np.concatenate(noun_s)


@torch.inference_mode()
def alignment_scores(model, tok, queries, verbs, nouns, with_video, bs=64):
    """Alignment of each query with every "how to <verb> the <noun>" prompt -> ([N, V], [N, N])."""
    prompts = [
        tok(f"now let me show you how to {v} the {n}", add_special_tokens=False)["input_ids"]
        for v in verbs
        for n in nouns
    ]
    scores = np.zeros((len(queries), len(prompts)), np.float32)
    pairs = [(qi, pi) for qi in range(len(queries)) for pi in range(len(prompts))]
    for s in range(0, len(pairs), bs):
        chunk = pairs[s : s + bs]
        batch = make_batch(
            [queries[q] for q, _ in chunk], [prompts[p] for _, p in chunk], with_video
        )
        out = model.alignment_logits(batch).float().numpy()
        for (q, p), v in zip(chunk, out, strict=True):
            scores[q, p] = v
    grid = torch.from_numpy(scores.reshape(len(queries), len(verbs), len(nouns)))
    return grid.logsumexp(2).numpy(), grid.logsumexp(1).numpy()


def read_labels(path: str | Path) -> dict[str, Any]:
    """labels.json (module doc); UserInputError naming the file and what is missing."""
    path = Path(path).expanduser()
    try:
        labels = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserInputError(f"labels file {path}: {e}") from None
    for key, kind in (("verbs", list), ("nouns", list), ("videos", dict)):
        if not isinstance(labels.get(key), kind) or not labels[key]:
            raise UserInputError(
                f"labels file {path}: needs a non-empty {kind.__name__} {key!r} "
                "(see the README section on the labels file)"
            )
    return labels


def evaluate_zeroshot(
    model_dir: str | Path, shards: str, labels_path: str | Path
) -> dict[str, Any]:
    """Run the protocol; returns {"metrics", "predictions", ...} (also what the CLI writes)."""
    model_dir = resolve_model_dir(model_dir)
    name = model_name_of(model_dir)
    model = load_pretrained(model_dir).eval()
    tok = load_tokenizer(model_dir)
    labels = read_labels(labels_path)
    verbs, nouns = labels["verbs"], labels["nouns"]
    vocab = model_dir / "vocab" / "centroids.npy"
    centroids = np.load(vocab, allow_pickle=False) if vocab.exists() else None
    queries = load_queries(shards, labels, centroids)
    verb_t = np.array([q.verb for q in queries])
    noun_t = np.array([q.noun for q in queries])

    # The paper's [MASK] protocol (1.6) where the model's masked LM sees the video (the primary
    # method then); alignment of the video with every "how to <verb> the <noun>" prompt for
    # every model (the only one for CBT, whose text tower never sees the video).
    methods = ["masked-lm", "alignment"] if model.masked_lm_sees_video else ["alignment"]
    template = labels.get("template", TEMPLATE)
    videos = [q.video for q in queries]
    by_method: dict[str, dict] = {}
    preds = {}
    for method in methods:
        results: dict[str, dict] = {}
        for regime, with_video in (("cross_modal", True), ("language_prior", False)):
            if method == "masked-lm":
                vs, ns = mask_scores(
                    model,
                    tok,
                    queries,
                    label_ids(tok, verbs, "verb"),
                    label_ids(tok, nouns, "noun"),
                    template,
                    with_video,
                )
            else:
                vs, ns = alignment_scores(model, tok, queries, verbs, nouns, with_video)
            results[regime] = {
                "verb": topk_metrics(vs, verb_t, videos),
                "noun": topk_metrics(ns, noun_t, videos),
            }
            preds[method, regime] = (vs, ns)
        results["chance"] = {
            "verb": {"top1": 100 / len(verbs), "top5": 100 * min(5, len(verbs)) / len(verbs)},
            "noun": {"top1": 100 / len(nouns), "top5": 100 * min(5, len(nouns)) / len(nouns)},
        }
        by_method[method] = results
    vs, ns = preds[methods[0], "cross_modal"]
    predictions = [
        {
            "video": q.video,
            "verb": verbs[q.verb],
            "noun": nouns[q.noun],
            "pred_verbs": [verbs[i] for i in np.argsort(-vs[i_q])[:5]],
            "pred_nouns": [nouns[i] for i in np.argsort(-ns[i_q])[:5]],
        }
        for i_q, q in enumerate(queries)
    ]
    return {
        "model": name,
        "model_dir": str(model_dir),
        "method": methods[0],
        "segments": len(queries),
        "videos": len(set(videos)),
        "metrics": by_method[methods[0]],
        "by_method": by_method,
        "predictions": predictions,
    }


def uses_video(metrics: dict[str, Any]) -> bool:
    """The verdict a report states: for verbs and for nouns, the lower end of the 95 % interval
    of cross-modal top-1 lies above both the language prior's top-1 and chance."""
    cm, lp, ch = metrics["cross_modal"], metrics["language_prior"], metrics["chance"]
    return all(cm[x]["top1_ci"][0] > max(lp[x]["top1"], ch[x]["top1"]) for x in ("verb", "noun"))


def format_table(result: dict[str, Any]) -> str:
    """Markdown table per scoring method: rows = regimes, columns = verb/noun top-1 (with its
    95 % bootstrap interval over videos) and top-5."""

    def top1(r: dict[str, Any]) -> str:
        ci = r.get("top1_ci")
        return f"{r['top1']:.1f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")

    lines = []
    for method, m in result.get("by_method", {result["method"]: result["metrics"]}).items():
        lines += [
            f"| {result['model']} ({method}) | verb top-1 [95% CI] | verb top-5 "
            "| noun top-1 [95% CI] | noun top-5 |",
            "|---|---|---|---|---|",
        ]
        for regime in ("cross_modal", "language_prior", "chance"):
            r = m[regime]
            lines.append(
                f"| {regime.replace('_', ' ')} | {top1(r['verb'])} | {r['verb']['top5']:.1f} "
                f"| {top1(r['noun'])} | {r['noun']['top5']:.1f} |"
            )
        lines.append("")
    return "\n".join(lines).rstrip()
