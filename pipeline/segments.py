"""Pretraining data: prep shards -> (sentence, clips) segments -> padded batches.

A *segment* pairs one ASR sentence with the clips inside its time span (methods.md 1.2); stretches
of video with no speech become video-only segments of `clips_without_speech` (16) clips. The
paper's robustness trick "randomly concatenate neighbouring sentences" happens here.

The stream is a webdataset pipeline of small named stages (shard list -> shuffle -> split by
worker -> tar -> decode -> segments -> shuffle -> split by rank -> tokenize -> batch), bad samples
are logged and skipped.

Epoch semantics (the same on one process or many):
* an epoch is one pass over every segment of every shard; the segment order of epoch e is a
  shuffle seeded by (seed, e), identical on every rank;
* rank r of W keeps segments r, r+W, r+2W, ... of that order, so ranks see disjoint parts that
  together cover the epoch; loader worker w of K reads shards w, w+K, ... ;
* the stream never ends: epoch e+1 follows e on each rank without a barrier, and training length
  is `max_steps`, so no rank ever waits for another's last partial batch;
* batches span epochs: every batch has `batch_size` segments, the last ones of epoch e and the
  first of e+1 share a batch when the epoch does not divide evenly, so no segment is dropped and
  a corpus smaller than one batch still trains (each batch then holds more than one epoch);
* each batch carries the epoch of its last segment; resuming at batch n replays the same stream
  and skips the first n batches (`skip_batches`), so a resumed run sees exactly the batches it
  would have seen. With K loader workers, global batch b comes from worker b % K (the
  DataLoader's round-robin), and a new DataLoader iterator always starts that round-robin at
  worker 0: so each worker skips n // K of its own batches and `loader` drops the remaining
  n % K in the main process (skipping ceil((n - w) / K) per worker instead would hand out
  the next K batches in rotated order whenever K does not divide n).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from pipeline.shards import decode_sample, shard_urls
from pipeline.train_config import DataConfig

log = logging.getLogger("vlpipe.data")


def video_id(key: str) -> int:
    """A stable 63-bit integer per sample key (negatives must come from other videos)."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:15], 16)


def build_segments(sample: dict[str, Any], s: DataConfig, rng: random.Random) -> list[dict]:
    """One decoded prep sample -> its segments: {key, text, first, stop} clip ranges [first, stop)."""
    n = len(sample["feat.npy"])
    sentences = [
        (x["text"], *x["clips"])
        for x in sample["asr.json"]["sentences"]
        if x["clips"][1] > x["clips"][0]
    ]
    segments, covered = [], np.zeros(n, bool)
    i = 0
    while i < len(sentences):
        text, first, stop = sentences[i]
        if i + 1 < len(sentences) and rng.random() < s.concat_prob:
            text, stop = f"{text} {sentences[i + 1][0]}", max(stop, sentences[i + 1][2])
            i += 1
        segments.append({"text": text, "first": first, "stop": stop})
        covered[first:stop] = True
        i += 1
    # Video-only segments from stretches that no sentence covers (no ASR, or silence).
    start = None
    for t in range(n + 1):
        if t < n and not covered[t]:
            start = t if start is None else start
            if t - start + 1 == s.clips_without_speech:
                segments.append({"text": "", "first": start, "stop": t + 1})
                start = None
        elif start is not None:
            segments.append({"text": "", "first": start, "stop": t})
            start = None
    out = []
    for seg in segments:
        first, stop = seg["first"], seg["stop"]
        if stop - first < s.min_clips:
            continue
        if stop - first > s.max_clips:  # a random window of a long segment
            first = rng.randrange(first, stop - s.max_clips + 1)
            stop = first + s.max_clips
        out.append({**seg, "first": first, "stop": stop, "key": sample["__key__"]})
    return out


class SegmentStream(IterableDataset):
    """Infinite, deterministic stream of padded segment batches for one rank (see module doc).

    Yields dicts following `pipeline.models.base` (text_ids [B, L], text_mask [B, L],
    video_feats [B, T, F], video_tokens [B, T], video_mask [B, T], video_ids [B]) plus
    `epoch` (int) and `keys` (list[str]).
    """

    def __init__(
        self,
        data: DataConfig,
        tokenizer_path: str,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        skip_batches: int = 0,
        epochs: int | None = None,
        centroids: np.ndarray | None = None,
    ) -> None:
        self.urls = shard_urls(data.shards)
        if not self.urls:
            raise ValueError(f"data.shards: no shards found in {data.shards}")
        self.tokenizer_path, self.settings, self.batch_size = tokenizer_path, data, data.batch_size
        self.vocab_dir, self.seed, self.rank, self.world = data.vocab, seed, rank, world_size
        self.skip_batches, self.use_fmap = skip_batches, data.use_fmap
        self.epochs = epochs  # None: endless (training); N: N passes, the last batch may be short
        # Visual words of shards `vlpipe cluster` did not assign (held-out data): the nearest of
        # these centroids [V, F], as zero-shot evaluation assigns them.
        self.centroids = centroids
        self._tokenizer = None
        self._token_cache: dict[str, dict[str, np.ndarray]] = {}

    # -- named stages -------------------------------------------------------------------
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path)
        return self._tokenizer

    def visual_tokens(self, url: str, key: str, feats: np.ndarray) -> np.ndarray:
        """int64 [T] visual word per clip: nearest centroid, the cluster's token sidecar, or -1."""
        if self.centroids is not None:
            from pipeline.visual_words import nearest_words

            return nearest_words(feats.astype(np.float32), self.centroids)
        if self.vocab_dir is None:
            return np.full(len(feats), -1, np.int64)
        name = Path(url).name
        if name not in self._token_cache:
            from pipeline.visual_words import load_tokens  # noqa: PLC0415  (optional input)

            self._token_cache = {name: load_tokens(self.vocab_dir, url)}  # one shard at a time
        return self._token_cache[name][key].astype(np.int64)

    def samples(self, urls: list[str]) -> Iterator[dict]:
        pipeline = wds.DataPipeline(
            wds.SimpleShardList(urls),
            wds.tarfile_to_samples(handler=wds.warn_and_continue),
            wds.map(decode_sample, handler=wds.warn_and_continue),
        )
        for sample in pipeline:
            if "feat.npy" not in sample or "asr.json" not in sample:
                log.warning("skipping sample %s: missing feat.npy/asr.json", sample.get("__key__"))
                continue
            yield sample

    def epoch_segments(self, epoch: int, worker: int, num_workers: int) -> Iterator[dict]:
        """This rank's segments of `epoch` for loader worker `worker`."""
        rng = random.Random(hash((self.seed, epoch, worker)))  # same on every rank
        order = list(self.urls)
        random.Random(hash((self.seed, epoch))).shuffle(order)
        buffer: list[dict] = []
        index = 0

        def emit(seg: dict) -> Iterator[dict]:
            nonlocal index
            if index % self.world == self.rank:
                yield seg
            index += 1

        for sample in self.samples(order[worker::num_workers]):
            try:
                segs = build_segments(sample, self.settings, rng)
            except (KeyError, TypeError, ValueError) as e:
                log.warning("skipping sample %s: %s", sample.get("__key__"), e)
                continue
            for seg in segs:
                seg["feat"] = sample["feat.npy"][seg["first"] : seg["stop"]]
                seg["tok"] = self.visual_tokens(
                    sample["__url__"], sample["__key__"], sample["feat.npy"]
                )[seg["first"] : seg["stop"]]
                if self.use_fmap and "fmap.npy" in sample:
                    seg["fmap"] = sample["fmap.npy"][seg["first"] : seg["stop"]]
                buffer.append(seg)
                if len(buffer) >= self.settings.shuffle_buffer:
                    yield from emit(buffer.pop(rng.randrange(len(buffer))))
        rng.shuffle(buffer)
        for seg in buffer:
            yield from emit(seg)

    def collate(self, segs: list[dict], epoch: int) -> dict[str, Any]:
        tok = self.tokenizer()
        enc = [
            tok(
                s["text"],
                add_special_tokens=False,
                truncation=True,
                max_length=self.settings.max_text_tokens,
            )["input_ids"]
            if s["text"]
            else []
            for s in segs
        ]
        B = len(segs)
        L = max(1, max(len(e) for e in enc))
        T = max(len(s["feat"]) for s in segs)
        F = segs[0]["feat"].shape[-1]
        text_ids = torch.full((B, L), tok.pad_token_id, dtype=torch.long)
        text_mask = torch.zeros(B, L, dtype=torch.bool)
        feats = torch.zeros(B, T, F)
        tokens = torch.full((B, T), -1, dtype=torch.long)
        vmask = torch.zeros(B, T, dtype=torch.bool)
        for i, (s, ids) in enumerate(zip(segs, enc, strict=True)):
            text_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            text_mask[i, : len(ids)] = True
            n = len(s["feat"])
            feats[i, :n] = torch.from_numpy(s["feat"].astype(np.float32))
            tokens[i, :n] = torch.from_numpy(s["tok"])
            vmask[i, :n] = True
        batch = {
            "text_ids": text_ids,
            "text_mask": text_mask,
            "video_feats": feats,
            "video_tokens": tokens,
            "video_mask": vmask,
            "video_ids": torch.tensor([video_id(s["key"]) for s in segs], dtype=torch.long),
            "epoch": epoch,
            "keys": [s["key"] for s in segs],
        }
        if self.use_fmap and all("fmap" in s for s in segs):
            fm = torch.zeros(B, T, *segs[0]["fmap"].shape[1:])
            for i, s in enumerate(segs):
                fm[i, : len(s["fmap"])] = torch.from_numpy(s["fmap"].astype(np.float32))
            batch["video_fmap"] = fm
        return batch

    # -- iteration ------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        if worker >= len(self.urls):
            return  # more loader workers than shards: this one has nothing to read
        # Whole rounds of the round-robin only; `loader` drops the last n % K (module doc).
        skip = self.skip_batches // num_workers
        produced = 0
        pending: list[dict] = []  # carried across epochs: batches span epochs (module doc)
        for epoch in itertools.count() if self.epochs is None else range(self.epochs):
            count = 0
            for seg in self.epoch_segments(epoch, worker, num_workers):
                count += 1
                pending.append(seg)
                if len(pending) == self.batch_size:
                    if produced >= skip:
                        yield self.collate(pending, epoch)
                    produced += 1
                    pending = []
            if count == 0:
                raise RuntimeError(
                    f"rank {self.rank} worker {worker}: an epoch produced no segment "
                    f"({len(self.urls)} shards for {self.world} ranks); add data or use fewer ranks"
                )
            if epoch == 0 and count < self.batch_size:
                log.warning(
                    "rank %d worker %d: an epoch has %d segments, fewer than data.batch_size=%d; "
                    "each batch spans several epochs (a smaller data.batch_size gives more "
                    "distinct steps per epoch)",
                    self.rank,
                    worker,
                    count,
                    self.batch_size,
                )
        if pending and produced >= skip:  # a finite stream (evaluation) keeps its last rows
            yield self.collate(pending, epoch)


def loader(stream: SegmentStream, num_workers: int, seed: int) -> Iterator[dict[str, Any]]:
    """`stream`'s batches through a DataLoader with up to `num_workers` processes (never more
    than shards), starting exactly at batch `stream.skip_batches` (module doc: the workers skip
    whole rounds, the remainder of fewer than K batches is dropped here).

    The DataLoader has its own generator: starting the iterator must not consume the global RNG
    that a resumed run's `load_state` just restored (the objectives' masks would shift).
    """
    workers = max(0, min(num_workers, len(stream.urls)))
    batches = torch.utils.data.DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
    return itertools.islice(batches, stream.skip_batches % max(workers, 1), None)
