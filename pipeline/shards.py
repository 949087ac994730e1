"""The shard format every stage reads and writes, and a crash-safe shard writer.

A prep output directory holds webdataset tars `shard-{rank:03d}-{n:06d}.tar`, one sample per
video (legend: T clips, F feature width = the extractor's (S3D Mixed_5c: 1024; Video Swin mini:
256 ...), h x w Mixed_5c grid, N encoder tokens per clip, s thumbnail side, F' x S x S stored frames):

    __key__      stable id of the video (no dots: webdataset splits member names at the first dot)
    feat.npy     float16 [T, F]        one row per clip: S3D Mixed_5c averaged over time and space,
                                       or the pooled output of features.extractor
    fmap.npy     float16 [T, h, w, F]  optional (features.spatial, s3d): averaged over time only
    tokens.npy   float16 [T, N, F]     optional (features.spatial, other extractors): the tokens
    sizes.npy    float32 [T, N]        with tokens.npy under ToMe: input patches per token
    frames.npy   uint8 [T, F', S, S, 3]  optional (features.frames): each clip's frames, RGB, for
                                       end-to-end training (pipeline.encoders.frames)
    thumbs.npy   uint8 [T, s, s, 3]    optional: middle frame of each clip (cluster grids)
    clips.json   {"fps", "clip_seconds", "clips": [{"start", "end", "num_frames", "words": [...]}]}
    asr.json     {"source", "model", "language", "sentences": [{"text", "start", "end",
                   "clips": [first, stop), "words": [{"text", "start", "end", "prob"}]}]}
    meta.json    provenance: source path, bytes, sha256, duration, truncated, declared_duration,
                 native fps, width, height, rotation, has_audio, decoder, every extraction
                 setting (S3D variant, engine, precision; or the extractor and its settings
                 hash), the extractor's weights checksum or "random-init" (`weights`), `encoder`
                 (name, full settings, settings hash, weights sha256, width: what rebuilds it),
                 `frames` (how frames.npy was made, or null), Whisper model, library versions,
                 content_config_hash

plus `manifest.jsonl` (one line per shard: name, samples, bytes, sha256, keys), `failures.jsonl`
(input, stage, error), `duplicates.jsonl` (input, same_as) and `prep_config.yaml` (the resolved
config). Per-rank bookkeeping lives in
`_state/`; `manifest.jsonl` and `failures.jsonl` are merged from it.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds

from pipeline.io import append_jsonl, atomic_write_text, file_sha256, read_jsonl

# The one sha256 helper lives in pipeline.io; the old name stays for data_prep.cluster.

SHARD_RE = re.compile(r"^shard-(\d{3})-(\d{6})\.tar$")
STATE_DIR = "_state"
KEY_RE = re.compile(r"[^A-Za-z0-9_\-]+")


def make_key(name: str, unique: str) -> str:
    """A readable, tar-safe sample key: sanitised `name` + 8 hex of sha1(`unique`)."""
    stem = KEY_RE.sub("_", name).strip("_")[-80:] or "video"
    return f"{stem}-{hashlib.sha1(unique.encode('utf-8')).hexdigest()[:8]}"


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def rank_state_path(out_dir: Path, rank: int, kind: str) -> Path:
    """`_state/{kind}-rank{rank:03d}.jsonl`, kind in {"shards", "failures", "duplicates"}."""
    return out_dir / STATE_DIR / f"{kind}-rank{rank:03d}.jsonl"


def completed_shards(out_dir: Path) -> list[dict[str, Any]]:
    """Shard records of every rank whose tar exists (a record is written after the rename)."""
    records = []
    for path in sorted((out_dir / STATE_DIR).glob("shards-rank*.jsonl")):
        records += [r for r in read_jsonl(path) if (out_dir / r["name"]).exists()]
    return sorted(records, key=lambda r: r["name"])


def latest_failures(out_dir: Path) -> dict[str, dict[str, Any]]:
    """key -> the most recent failure record of that key over every rank (retries supersede)."""
    failures: dict[str, dict] = {}
    for path in sorted((out_dir / STATE_DIR).glob("failures-rank*.jsonl")):
        for rec in read_jsonl(path):
            old = failures.get(rec["key"])
            if old is None or rec.get("time", 0) >= old.get("time", 0):
                failures[rec["key"]] = rec
    return failures


@contextmanager
def _locked(out_dir: Path):
    """An exclusive lock on the output directory (ranks merge their state one at a time)."""
    lock = out_dir / STATE_DIR / "merge.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def merge_state(out_dir: Path) -> tuple[list[dict], list[dict]]:
    """Rewrite `manifest.jsonl`, `failures.jsonl` and `duplicates.jsonl` from the ranks' state.

    Each rank calls this when it finishes, under a file lock: a rank appends its last record
    before taking the lock, so whichever rank merges last sees everything, with no barrier (and
    so no collective timeout when ranks finish hours apart).
    """
    with _locked(out_dir):
        shards = completed_shards(out_dir)
        done = {k for r in shards for k in r["keys"]}
        failures = latest_failures(out_dir)
        # An input that failed once and succeeded on a retry is not a failure.
        fails = sorted((f for k, f in failures.items() if k not in done), key=lambda r: r["key"])
        dups: dict[str, dict] = {}  # the latest record per key, as for failures
        for path in sorted((out_dir / STATE_DIR).glob("duplicates-rank*.jsonl")):
            for rec in read_jsonl(path):
                if rec["key"] not in done:
                    dups[rec["key"]] = {k: v for k, v in rec.items() if k != "time"}
        atomic_write_text(out_dir / "manifest.jsonl", "".join(json.dumps(r) + "\n" for r in shards))
        for name, records in (("failures", fails), ("duplicates", [dups[k] for k in sorted(dups)])):
            atomic_write_text(
                out_dir / f"{name}.jsonl",
                "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
            )
    return shards, fails


class ResumableShardWriter:
    """`webdataset.ShardWriter` that writes `*.tar.tmp` and renames each shard when complete.

    After a crash, `.tmp` files and tars without a state record are removed by the next run,
    whose inputs were not recorded as done: nothing is duplicated and nothing is lost. Shard
    numbers continue after this rank's last completed shard.
    """

    def __init__(
        self,
        out_dir: Path,
        rank: int,
        max_samples: int,
        max_bytes: int,
        on_shard: Callable[[dict], None] | None = None,
    ) -> None:
        self.out_dir, self.rank = out_dir, rank
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.on_shard = on_shard
        self.state = rank_state_path(out_dir, rank, "shards")
        self.state.parent.mkdir(parents=True, exist_ok=True)
        done = {r["name"] for r in read_jsonl(self.state)}
        numbers = [-1]
        for path in out_dir.glob(f"shard-{rank:03d}-*"):
            m = SHARD_RE.match(path.name)
            if m and path.name in done:
                numbers.append(int(m.group(2)))
            else:  # a .tar.tmp, or a tar renamed just before a crash but never recorded
                path.unlink()
        self.next_shard = max(numbers) + 1
        self._writer: wds.ShardWriter | None = None
        self._keys: list[str] = []

    def write(self, sample: dict[str, Any]) -> None:
        if self._writer is None:
            pattern = str(self.out_dir / f"shard-{self.rank:03d}-%06d.tar.tmp")
            self._writer = wds.ShardWriter(
                pattern,
                maxcount=self.max_samples,
                maxsize=self.max_bytes,
                post=self._finish_shard,
                start_shard=self.next_shard,
                verbose=0,
            )
        w = self._writer
        # ShardWriter rolls over *before* writing when the current shard is full; mirror its
        # test so that our key list matches the shard that receives this sample.
        if w.tarstream is None or w.count >= w.maxcount or w.size >= w.maxsize:
            w.next_stream()
        self._keys.append(sample["__key__"])
        w.write(sample)

    def _finish_shard(self, tmp_name: str) -> None:
        tmp = Path(tmp_name)
        keys, self._keys = self._keys, []
        if not keys:  # ShardWriter opens a stream eagerly; an empty one is not a shard
            tmp.unlink(missing_ok=True)
            return
        final = tmp.with_name(tmp.name.removesuffix(".tmp"))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        record = {
            "name": final.name,
            "samples": len(keys),
            "bytes": final.stat().st_size,
            "sha256": file_sha256(final),
            "keys": keys,
        }
        append_jsonl(self.state, record)
        self.next_shard = int(SHARD_RE.match(final.name).group(2)) + 1
        if self.on_shard is not None:
            self.on_shard(record)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def shard_urls(path: str | Path | list[str | Path]) -> list[str]:
    """Tar files of a prep (or cluster) output directory, from its manifest when present; of
    every directory, in order, for a list of them."""
    if isinstance(path, list | tuple):
        return [url for p in path for url in shard_urls(p)]
    path = Path(path)
    if path.is_file():
        return [str(path)]
    manifest = path / "manifest.jsonl"
    if manifest.exists():
        return [str(path / r["name"]) for r in read_jsonl(manifest)]
    return sorted(str(p) for p in path.glob("shard-*.tar"))


def read_members(
    shards: str | Path | list[str | Path], keys: set[str], members: tuple[str, ...]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key, {member: value}) for the samples of `keys`, reading only `members` (e.g.
    "frames.npy", "meta.json") of each tar, each tar once, in shard order.

    .npy members are loaded with allow_pickle=False, .json ones parsed; others stay bytes. A
    sample missing a member simply lacks it in its dict.
    """
    wanted = set(keys)
    for url in shard_urls(shards):
        if not wanted:
            return
        found: dict[str, dict[str, Any]] = {}
        with tarfile.open(url) as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                if ext in members and key in wanted and info.isfile():
                    found.setdefault(key, {})[ext] = decode_member(
                        ext, tar.extractfile(info).read()
                    )
        for key, parts in found.items():
            wanted.discard(key)
            yield key, parts


def decode_member(name: str, value: bytes) -> Any:
    """One member's bytes -> array (.npy, never unpickled) / dict (.json) / bytes."""
    if name.endswith(".npy"):
        return np.load(io.BytesIO(value), allow_pickle=False)
    if name.endswith(".json"):
        return json.loads(value)
    return value


def decode_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """Raw webdataset sample (bytes values) -> arrays and dicts; never unpickles."""
    out: dict[str, Any] = {"__key__": sample["__key__"]}
    for name, value in sample.items():
        if name.startswith("__"):
            out[name] = value
        elif name.endswith(".npy"):
            out[name] = np.load(io.BytesIO(value), allow_pickle=False)
        elif name.endswith(".json"):
            out[name] = json.loads(value)
    return out
