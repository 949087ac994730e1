"""Visual-word token files: one sidecar per prep shard, written by `vlpipe cluster`, read by the
pretraining loader (methods.md 1.1: a clip's token is the id of its nearest leaf centroid).

Layout, inside a vocabulary directory:

* `tokens/{shard}.npz`: one `{key}.npy` member per sample of the prep shard `{shard}.tar`, each
  int32 [T] (T = the sample's clips, in clip order). The `np.savez` layout, so `np.load` reads
  it; written atomically, so a reader sees the old file or the new one.
* `tokens/manifest.jsonl`: one record per written sidecar (`TokenRecord`), appended after the
  file is in place; the last record of a shard wins. It names the sha256 of the prep shard and
  of the vocabulary, so a rerun knows which sidecars are still valid.

Prep shards themselves are never rewritten. This module is library code: the cluster stage
writes through it and the loader (`pipeline.segments`) reads through it, so neither imports the
other.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io import append_jsonl, atomic_write_bytes, read_jsonl

TOKENS_DIR = "tokens"
MANIFEST = "manifest.jsonl"


def shard_name(shard_url: str | Path) -> str:
    """`/prep/shard-000-000001.tar` -> `shard-000-000001`."""
    return Path(str(shard_url)).name.removesuffix(".tar")


def tokens_path(vocab_dir: str | Path, shard_url: str | Path) -> Path:
    """Where the sidecar of prep shard `shard_url` lives in `vocab_dir`."""
    return Path(vocab_dir) / TOKENS_DIR / f"{shard_name(shard_url)}.npz"


def load_tokens(vocab_dir: str | Path, shard_url: str | Path) -> dict[str, np.ndarray]:
    """Visual words of one shard: sample key -> int32 [T]. Raises FileNotFoundError if absent."""
    path = tokens_path(vocab_dir, shard_url)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no tokens for shard {shard_url} (run vlpipe cluster)")
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def tokens_npz_bytes(tokens: dict[str, np.ndarray]) -> bytes:
    """The `np.savez` layout (one `{key}.npy` per sample), built by hand because `np.savez(f,
    **tokens)` would break on a sample key that clashes with its own argument name `file`."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, arr in tokens.items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(arr, np.int32), allow_pickle=False)
    return buf.getvalue()


def write_tokens(
    vocab_dir: str | Path,
    shard_url: str | Path,
    tokens: dict[str, np.ndarray],
    shard_sha256: str,
    vocab_sha256: str,
) -> dict[str, Any]:
    """Write the sidecar of one shard (atomically), then record it; returns the record.

    tokens: sample key -> int [T]. The record is appended only once the file is in place, so a
    run killed in between leaves a sidecar without a record, which `valid_record` rejects.
    """
    data = tokens_npz_bytes(tokens)
    atomic_write_bytes(tokens_path(vocab_dir, shard_url), data)
    record = {
        "name": shard_name(shard_url),
        "shard_sha256": shard_sha256,
        "vocab_sha256": vocab_sha256,
        "samples": len(tokens),
        "clips": int(sum(np.asarray(t).shape[0] for t in tokens.values())),
        "bytes": len(data),
    }
    append_jsonl(Path(vocab_dir) / TOKENS_DIR / MANIFEST, record)
    return record


def token_records(vocab_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Shard name -> its latest record in `tokens/manifest.jsonl` (empty if there is none)."""
    return {r["name"]: r for r in read_jsonl(Path(vocab_dir) / TOKENS_DIR / MANIFEST)}


def valid_record(
    vocab_dir: str | Path,
    shard_url: str | Path,
    record: dict[str, Any] | None,
    shard_sha256: str,
    vocab_sha256: str,
) -> bool:
    """True when `record` says the sidecar of this exact shard and vocabulary is on disk whole."""
    if record is None:
        return False
    path = tokens_path(vocab_dir, shard_url)
    return (
        record["shard_sha256"] == shard_sha256
        and record["vocab_sha256"] == vocab_sha256
        and path.is_file()
        and path.stat().st_size == record["bytes"]
    )


def nearest_words(feats: np.ndarray, centroids: np.ndarray | None) -> np.ndarray:
    """Visual word of each clip = nearest leaf centroid (methods.md 1.1). [T, F] -> int64 [T]."""
    if centroids is None:
        return np.full(len(feats), -1, np.int64)
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    _, idx = index.search(np.ascontiguousarray(feats, dtype=np.float32), 1)
    return idx[:, 0].astype(np.int64)
