"""Reading prep shards for `vlpipe cluster`: clip features, settings and thumbnails per sample.

tarfile rather than a webdataset pipeline: clustering needs only `feat.npy` and `meta.json` (and
`thumbs.npy` for the report), and tarfile lets it skip the large optional `fmap.npy` members
without reading them into samples. Samples whose feature settings (`meta.json` "extraction" and
"weights") differ are refused: tokens of one vocabulary only mean something for one feature space.
"""

from __future__ import annotations

import io
import json
import logging
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger("vlpipe.cluster")

# Extraction keys that cannot change feat.npy (input discovery only): mixing them is harmless.
IGNORED_EXTRACTION_KEYS = ("extensions",)
# webdataset's rule: the key is the member path up to the first dot of its basename.
MEMBER_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


class ClusterError(ValueError):
    """Bad or inconsistent input shards: the message names the file (and sample) and the cause."""


@dataclass
class ShardSample:
    """What clustering reads of one prep sample (T clips, F feature width, s thumbnail side)."""

    key: str
    feat: np.ndarray  # float16 [T, F]
    meta: dict[str, Any]
    thumbs: np.ndarray | None  # uint8 [T, s, s, 3], or None when prep stored none


def iter_shard(url: str, thumbs: bool = False) -> Iterator[ShardSample]:
    """Samples of one prep shard; reads only feat.npy, meta.json (and thumbs.npy if asked).

    Raises ClusterError naming the shard and key on bad data.
    """
    wanted = {"feat.npy", "meta.json"} | ({"thumbs.npy"} if thumbs else set())
    try:
        tar = tarfile.open(url, "r")
    except (OSError, tarfile.TarError) as e:
        raise ClusterError(f"{url}: cannot open shard ({e})") from None
    with tar:
        key, parts = None, {}
        try:
            for member in tar:
                m = MEMBER_RE.match(member.name)
                if not member.isfile() or m is None:
                    continue
                if m.group(1) != key:
                    if key is not None:
                        yield _make_sample(url, key, parts)
                    key, parts = m.group(1), {}
                if m.group(2) in wanted:
                    parts[m.group(2)] = tar.extractfile(member).read()
        except tarfile.TarError as e:
            raise ClusterError(f"{url}: corrupt shard after sample {key} ({e})") from None
        if key is not None:
            yield _make_sample(url, key, parts)


def _make_sample(url: str, key: str, parts: dict[str, bytes]) -> ShardSample:
    for need in ("feat.npy", "meta.json"):
        if need not in parts:
            raise ClusterError(f"{url}: sample {key} has no {need}")
    try:
        feat = np.load(io.BytesIO(parts["feat.npy"]), allow_pickle=False)
        meta = json.loads(parts["meta.json"])
        thumbs = parts.get("thumbs.npy")
        thumbs = None if thumbs is None else np.load(io.BytesIO(thumbs), allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ClusterError(f"{url}: sample {key}: unreadable member ({e})") from None
    if feat.ndim != 2 or not np.isfinite(feat).all():
        raise ClusterError(f"{url}: sample {key}: feat.npy must be finite [T, F], got {feat.shape}")
    if thumbs is not None and (thumbs.ndim != 4 or thumbs.shape[0] != feat.shape[0]):
        log.warning(
            "%s: sample %s: thumbs.npy %s does not match feat; ignored", url, key, thumbs.shape
        )
        thumbs = None
    return ShardSample(key, feat, meta, thumbs)


def feature_signature(meta: dict[str, Any], where: str) -> dict[str, Any]:
    """The settings that define a sample's feature space: extraction settings + S3D weights."""
    if not isinstance(meta.get("extraction"), dict):
        raise ClusterError(f"{where}: meta.json has no 'extraction' settings")
    extraction = {k: v for k, v in meta["extraction"].items() if k not in IGNORED_EXTRACTION_KEYS}
    return {"extraction": extraction, "weights": meta.get("weights")}


def check_signature(sig: dict, ref: dict, where: str, ref_where: str) -> None:
    if sig == ref:
        return
    diffs = [f"weights {ref['weights']!r} vs {sig['weights']!r}"] * (
        sig["weights"] != ref["weights"]
    )
    keys = sorted(set(sig["extraction"]) | set(ref["extraction"]))
    diffs += [
        f"extraction.{k} {ref['extraction'].get(k)!r} vs {sig['extraction'].get(k)!r}"
        for k in keys
        if sig["extraction"].get(k) != ref["extraction"].get(k)
    ]
    raise ClusterError(
        f"{where} was extracted with other settings than {ref_where} ({'; '.join(diffs)}); "
        "one vocabulary needs one feature space: cluster each prep output separately"
    )
