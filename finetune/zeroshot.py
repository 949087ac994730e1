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

from pipeline.models import load_pretrained, model_name_of
from pipeline.shards import decode_sample, shard_urls

log = logging.getLogger("vlpipe.zeroshot")
TEMPLATE = "now let me show you how to [MASK] the [MASK]"


@dataclass
class Query:
    video: str  # labels.json video id
    verb: int  # index into verbs
    noun: int  # index into nouns
    feats: np.ndarray  # float32 [T, F] clips of the segment
    tokens: np.ndarray  # int64 [T] visual words (-1 without a vocabulary)


def resolve_model_dir(path: str | Path) -> Path:
    """A run directory or its `model/` subdirectory."""
    path = Path(path)
    return path / "model" if (path / "model" / "config.json").exists() else path


def nearest_words(feats: np.ndarray, centroids: np.ndarray | None) -> np.ndarray:
    """Visual word of each clip = nearest leaf centroid (methods.md 1.1). [T, F] -> int64 [T]."""
    if centroids is None:
        return np.full(len(feats), -1, np.int64)
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    _, idx = index.search(np.ascontiguousarray(feats, dtype=np.float32), 1)
    return idx[:, 0].astype(np.int64)


def label_ids(tokenizer, words: list[str], kind: str) -> list[int]:
    ids = []
    for w in words:
        pieces = tokenizer(w, add_special_tokens=False)["input_ids"]
        if len(pieces) != 1:
            raise ValueError(f"{kind} {w!r} is not a single WordPiece token ({pieces})")
        ids.append(pieces[0])
    return ids


def load_queries(shards: str, labels: dict, centroids: np.ndarray | None) -> list[Query]:
    """Segments of the labelled videos, cut from the prep samples by their time spans."""
    videos = labels["videos"]
    wanted = {k: v for k, v in videos.items() if v.get("split") == "heldout"} or videos
    by_file = {Path(v["file"]).as_posix(): k for k, v in wanted.items()}

    def video_of(source: str) -> str | None:
        # prep records the input as given (a relative path, or a manifest's absolute path)
        src = Path(source).as_posix()
        return next((k for f, k in by_file.items() if src == f or src.endswith("/" + f)), None)

    verbs, nouns = labels["verbs"], labels["nouns"]
    queries = []
    for raw in wds.WebDataset(shard_urls(shards), shardshuffle=False, empty_check=False):
        sample = decode_sample(raw)
        vid = video_of(sample["meta.json"]["source"])
        if vid is None:
            continue
        clips = sample["clips.json"]["clips"]
        feats = sample["feat.npy"].astype(np.float32)
        words = nearest_words(feats, centroids)
        for seg in wanted[vid]["segments"]:
            keep = [
                i
                for i, c in enumerate(clips)
                if c["end"] > seg["start"] and c["start"] < seg["end"]
            ]
            if not keep:
                continue
            queries.append(
                Query(
                    vid,
                    verbs.index(seg["verb"]),
                    nouns.index(seg["noun"]),
                    feats[keep],
                    words[keep],
                )
            )
    if not queries:
        raise ValueError(f"no labelled segment of {len(wanted)} videos found in {shards}")
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


def topk_metrics(scores: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """scores [N, C], target [N] -> top-1 / top-5 accuracy in percent."""
    order = np.argsort(-scores, axis=1)
    hit = order == target[:, None]
    return {
        "top1": 100 * float(hit[:, :1].any(1).mean()),
        "top5": 100 * float(hit[:, :5].any(1).mean()),
    }


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


def evaluate_zeroshot(
    model_dir: str | Path, shards: str, labels_path: str | Path
) -> dict[str, Any]:
    """Run the protocol; returns {"metrics", "predictions", ...} (also what the CLI writes)."""
    from transformers import AutoTokenizer

    model_dir = resolve_model_dir(model_dir)
    name = model_name_of(model_dir)
    model = load_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    labels = json.loads(Path(labels_path).read_text())
    verbs, nouns = labels["verbs"], labels["nouns"]
    vocab = model_dir / "vocab" / "centroids.npy"
    centroids = np.load(vocab, allow_pickle=False) if vocab.exists() else None
    queries = load_queries(shards, labels, centroids)
    verb_t = np.array([q.verb for q in queries])
    noun_t = np.array([q.noun for q in queries])

    # VideoBERT: the paper's [MASK] protocol (1.6); CBT and two-stream: alignment of the video with
    # every "how to <verb> the <noun>" prompt (issue 4; CBT's text tower never sees the video).
    method = "masked-lm" if name == "videobert" else "alignment"
    template = labels.get("template", TEMPLATE)
    results: dict[str, dict] = {}
    preds = {}
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
        results[regime] = {"verb": topk_metrics(vs, verb_t), "noun": topk_metrics(ns, noun_t)}
        preds[regime] = (vs, ns)
    results["chance"] = {
        "verb": {"top1": 100 / len(verbs), "top5": 100 * min(5, len(verbs)) / len(verbs)},
        "noun": {"top1": 100 / len(nouns), "top5": 100 * min(5, len(nouns)) / len(nouns)},
    }
    vs, ns = preds["cross_modal"]
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
        "method": method,
        "segments": len(queries),
        "videos": len({q.video for q in queries}),
        "metrics": results,
        "predictions": predictions,
    }


def format_table(result: dict[str, Any]) -> str:
    """Markdown table: rows = regimes, columns = verb/noun top-1/top-5."""
    m = result["metrics"]
    lines = [
        f"| {result['model']} ({result['method']}) | verb top-1 | verb top-5 | noun top-1 | noun top-5 |",
        "|---|---|---|---|---|",
    ]
    for regime in ("cross_modal", "language_prior", "chance"):
        r = m[regime]
        lines.append(
            f"| {regime.replace('_', ' ')} | {r['verb']['top1']:.1f} | {r['verb']['top5']:.1f} "
            f"| {r['noun']['top1']:.1f} | {r['noun']['top5']:.1f} |"
        )
    return "\n".join(lines)
