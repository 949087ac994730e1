"""Evidence that a pretrained model uses the video (issue 9), measured on HELD-OUT segments.

Two numbers any vlpipe model gives through its contract (`pipeline.models.base`), whatever its
architecture:

* `matching_accuracy`: video-text matching. Each held-out sentence is scored with its own clips
  (`alignment_logits`) and with the clips of `negatives` segments of *other* videos; the accuracy
  is the share of (true, negative) pairs in which the true pair scores higher (ties count one
  half). It needs no threshold, so a head whose bias drifts still reads correctly. Chance is 50 %.
  Ceiling: a segment of another video that shows the same action is a "negative" too, so 100 %
  is not always reachable on the sample corpus.
* `video_dependence`: masked-word loss on held-out sentences with another video's clips minus
  with their own clips, the same positions masked in both (`masked_text_logits`), in nats per
  masked WordPiece: > 0 when the words are read from the video; exactly 0 for a model whose
  masked LM never sees the video (`masked_lm_sees_video` False: CBT's text tower, methods.md 2.1).

Both are deterministic: masks and negatives come from their own `torch.Generator(seed)`, never
the global RNG, so calling them from a training loop changes nothing in the run. The model is put
in eval mode (no grad) for the call and its previous mode is restored afterwards.

`heldout_batches` reads the held-out prep shards once with the training loader itself
(`pipeline.segments.SegmentStream`, one epoch, visual words = nearest centroids) and no sentence
concatenation (a training-time augmentation, methods.md 1.2): the sentences as transcribed.

Legend: B batch, L text tokens, T clips, F feature width, N held-out segments with speech,
K negatives per segment.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.models.base import Batch, mask_tokens
from pipeline.segments import SegmentStream
from pipeline.train_config import DataConfig


def heldout_batches(
    data: DataConfig,
    tokenizer_path: str,
    centroids: np.ndarray | None = None,
    seed: int = 0,
) -> list[Batch]:
    """Every segment of the prep shards `data.shards` once, as segment batches of
    `data.batch_size` (the last one may be short), tensors only (`keys`/`epoch` dropped).

    Visual words are the nearest of `centroids` [V, F] (the model's vocabulary), as zero-shot
    evaluation assigns them (`vlpipe cluster` writes token sidecars for training shards only);
    without centroids they are -1. The stream's order and the window of an over-long segment are
    seeded by `seed`, so two calls give identical batches.
    """
    data = dataclasses.replace(data, vocab=None, concat_prob=0.0)
    stream = SegmentStream(data, tokenizer_path, seed, epochs=1, centroids=centroids)
    batches = [{k: v for k, v in b.items() if isinstance(v, Tensor)} for b in stream]
    if not batches:
        raise ValueError(f"{data.shards}: no segment to evaluate on")
    return batches


def _rows(batches: list[Batch]) -> list[dict[str, Tensor]]:
    """Unpadded per-segment rows of the segments that have both speech and clips."""
    rows = []
    for batch in batches:
        fmap = batch.get("video_fmap")
        for i in range(batch["text_ids"].shape[0]):
            n_text, n_clips = int(batch["text_mask"][i].sum()), int(batch["video_mask"][i].sum())
            if n_text == 0 or n_clips == 0:
                continue
            row = {
                "text_ids": batch["text_ids"][i, :n_text],  # [L_i]
                "video_feats": batch["video_feats"][i, :n_clips],  # [T_i, F]
                "video_tokens": batch["video_tokens"][i, :n_clips],  # [T_i]
                "video_id": batch["video_ids"][i],
            }
            if fmap is not None:
                row["video_fmap"] = fmap[i, :n_clips]  # [T_i, h, w, F]
            rows.append(row)
    return rows


def pair_batch(texts: list[Tensor], videos: list[dict[str, Tensor]]) -> Batch:
    """A segment batch pairing sentence texts[k] (ids [L_k]) with the clips of rows videos[k]."""
    count, length = len(texts), max(len(t) for t in texts)
    clips = max(len(v["video_feats"]) for v in videos)
    batch: dict[str, Tensor] = {
        "text_ids": torch.zeros(count, length, dtype=torch.long),
        "text_mask": torch.zeros(count, length, dtype=torch.bool),
        "video_feats": torch.zeros(count, clips, videos[0]["video_feats"].shape[-1]),
        "video_tokens": torch.full((count, clips), -1, dtype=torch.long),
        "video_mask": torch.zeros(count, clips, dtype=torch.bool),
        "video_ids": torch.stack([v["video_id"] for v in videos]),
    }
    if all("video_fmap" in v for v in videos):
        batch["video_fmap"] = torch.zeros(count, clips, *videos[0]["video_fmap"].shape[1:])
    for k, (text, video) in enumerate(zip(texts, videos, strict=True)):
        n = len(video["video_feats"])
        batch["text_ids"][k, : len(text)] = text
        batch["text_mask"][k, : len(text)] = True
        batch["video_feats"][k, :n] = video["video_feats"]
        batch["video_tokens"][k, :n] = video["video_tokens"]
        batch["video_mask"][k, :n] = True
        if "video_fmap" in batch:
            batch["video_fmap"][k, :n] = video["video_fmap"]
    return batch


def _other_videos(rows: list[dict[str, Tensor]], count: int, generator: torch.Generator) -> Tensor:
    """Long [N, count]: for each row, `count` rows of OTHER videos (uniform, with replacement);
    a segment of the same video would be a false negative (methods.md 1.4's negatives rule)."""
    video_ids = torch.stack([r["video_id"] for r in rows])  # [N]
    allowed = video_ids[:, None] != video_ids[None, :]  # [N, N]
    if not len(rows) or not allowed.any(1).all():
        raise ValueError("evidence needs held-out segments with speech from at least two videos")
    return torch.multinomial(allowed.float(), count, replacement=True, generator=generator)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """model.eval() and no grad inside; the previous train/eval mode restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def matching_accuracy(
    model: nn.Module,
    batches: list[Batch],
    negatives: int = 4,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, float]:
    """Held-out video-text matching: {"matching_accuracy" (%), "pairs", "margin"}.

    Each sentence is scored with its own clips and with `negatives` clip sets of other videos
    (drawn with torch.Generator(seed)); margin is the mean (true - negative) alignment logit.
    """
    rows = _rows(batches)
    donors = _other_videos(rows, negatives, torch.Generator().manual_seed(seed))  # [N, K]
    pairs = [(i, i) for i in range(len(rows))]
    pairs += [(i, int(j)) for i in range(len(rows)) for j in donors[i]]
    scores = []
    with _eval_mode(model):
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            batch = pair_batch([rows[t]["text_ids"] for t, _ in chunk], [rows[v] for _, v in chunk])
            scores.append(model.alignment_logits(batch).float())  # [chunk]
    score = torch.cat(scores)  # [N + N*K]
    true, other = score[: len(rows)], score[len(rows) :].view(len(rows), negatives)
    wins = (true[:, None] > other).double() + 0.5 * (true[:, None] == other).double()  # [N, K]
    return {
        "matching_accuracy": 100.0 * float(wins.mean()),
        "pairs": float(wins.numel()),
        "margin": float((true[:, None] - other).mean()),
    }


def video_dependence(
    model: nn.Module,
    batches: list[Batch],
    mask_token_id: int,
    mask_prob: float = 0.3,
    rounds: int = 2,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, float]:
    """Masked-word loss with the sentence's own clips vs another video's clips.

    Returns {"mlm_own", "mlm_other" (mean nats per masked WordPiece), "video_dependence"
    (other - own), "masked"}. `rounds` independent maskings of every sentence (each position with
    probability `mask_prob`, at least one per sentence; masked positions hold `mask_token_id`, no
    80/10/10, so both passes see the same input) come from torch.Generator(seed), and the other
    video is drawn once per round; own and other see exactly the same masked sentence.
    """
    rows = _rows(batches)
    generator = torch.Generator().manual_seed(seed)
    totals = {"own": 0.0, "other": 0.0}
    masked = 0
    with _eval_mode(model):
        for _ in range(rounds):
            donors = _other_videos(rows, 1, generator)[:, 0]  # [N]
            masks = []  # Bool [L_i] per row
            for row in rows:
                ids = row["text_ids"][None]  # [1, L_i]
                everywhere = torch.ones_like(ids, dtype=torch.bool)
                _, labels = mask_tokens(ids, everywhere, 0, 1, mask_prob, generator)
                masks.append(labels[0] != -100)
            for start in range(0, len(rows), batch_size):
                index = range(start, min(start + batch_size, len(rows)))
                texts = [rows[i]["text_ids"].masked_fill(masks[i], mask_token_id) for i in index]
                target = torch.cat([rows[i]["text_ids"][masks[i]] for i in index])  # [M]
                for name, videos in (
                    ("own", [rows[i] for i in index]),
                    ("other", [rows[int(donors[i])] for i in index]),
                ):
                    logits = model.masked_text_logits(pair_batch(texts, videos)).float()
                    chosen = torch.cat(
                        [logits[k, : len(masks[i])][masks[i]] for k, i in enumerate(index)]
                    )  # [M, vocab]
                    totals[name] += float(F.cross_entropy(chosen, target, reduction="sum"))
                masked += len(target)
    own, other = totals["own"] / masked, totals["other"] / masked
    return {
        "mlm_own": own,
        "mlm_other": other,
        "video_dependence": other - own,
        "masked": float(masked),
    }


def evidence(model: nn.Module, batches: list[Batch], seed: int = 0) -> dict[str, float]:
    """Both measurements in one dict (what `PretrainTask.evaluate` logs under eval/)."""
    out = matching_accuracy(model, batches, seed=seed)
    out.update(video_dependence(model, batches, model.config.mask_token_id, seed=seed))
    return out
