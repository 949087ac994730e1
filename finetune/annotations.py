"""Annotations meet prep shards by video id; a segment takes the clips that overlap it.

    index = ShardIndex.build("shards/msrvtt")          # reads meta.json + clips.json only
    joined = join(read_annotations("youcook2", f).items, index)
    joined.items     # Joined(item, key, first, stop): clips [first, stop) of sample `key`
    joined.failures  # annotations whose video is not in the shards, or whose segment misses it
    for j, feats in segment_features("shards/msrvtt", joined.items): ...   # feats [T, F]

Video ids. Prep keys a sample by a sanitised name + hash (pipeline/shards.py make_key), so an
annotation's video id is matched against the names the sample was made from, in meta.json
(data_prep/inputs.py): the manifest ``id`` (input_extra.manifest_id), the input's path as
given (``source``) without its extension ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01" for a
directory input), that path's file stem ("v_ApplyEyeMakeup_g08_c01"), and the sample key. A
name two samples share is ambiguous and matches neither: the annotation fails, naming both.

Segments. An annotation with [start, end] takes the clips that overlap it, by
pipeline.clips.sentence_clip_range, the same rule that gives an ASR sentence its clips in
alignment (methods.md 1.2); one without a segment takes the whole video. A segment that
overlaps no clip (past the end of the video) fails.

Failures keep the annotation's file and line (or JSON path) and the run goes on; write them
with `write_failures` next to the run's outputs.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from finetune.readers import Failure
from pipeline.clips import sentence_clip_range
from pipeline.io import atomic_write_text
from pipeline.shards import shard_urls


@dataclass(frozen=True)
class ShardVideo:
    """One prep sample: its key, the tar holding it, and its clips' [start, end) in seconds."""

    key: str
    url: str
    spans: tuple[tuple[float, float], ...]


def sample_names(key: str, meta: dict[str, Any]) -> list[str]:
    """The names an annotation may call this sample by (see the module doc), most specific first."""
    names = []
    manifest_id = (meta.get("input_extra") or {}).get("manifest_id")
    if manifest_id:
        names.append(str(manifest_id))
    source = str(meta.get("source") or "")
    if source:
        path = PurePosixPath(source.replace("\\", "/"))
        names += [str(path.with_suffix("")), path.stem, source]
    names.append(key)
    return list(dict.fromkeys(names))


@dataclass
class ShardIndex:
    """Every sample of a prep output, and name -> sample keys for the join."""

    videos: dict[str, ShardVideo] = field(default_factory=dict)
    names: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    @classmethod
    def build(cls, shards: str | Path) -> ShardIndex:
        """Read meta.json and clips.json of every sample (features stay on disk)."""
        index = cls()
        for url in shard_urls(shards):
            members: dict[str, dict[str, Any]] = defaultdict(dict)
            with tarfile.open(url) as tar:
                for info in tar:
                    base, _, ext = info.name.partition(".")  # webdataset: key up to the first dot
                    if info.isfile() and ext in ("meta.json", "clips.json"):
                        members[base][ext] = json.load(tar.extractfile(info))
            for key, parts in members.items():
                if "clips.json" not in parts:
                    continue
                clips = parts["clips.json"]["clips"]
                spans = tuple((float(c["start"]), float(c["end"])) for c in clips)
                index.videos[key] = ShardVideo(key, url, spans)
                for name in sample_names(key, parts.get("meta.json", {})):
                    index.names[name].add(key)
        return index

    def lookup(self, video_id: str) -> tuple[str | None, str]:
        """(sample key, "") or (None, why not)."""
        keys = self.names.get(video_id, set())
        if len(keys) == 1:
            return next(iter(keys)), ""
        if not keys:
            return None, f"video {video_id!r} is not in the shards"
        return None, f"video {video_id!r} is ambiguous: samples {', '.join(sorted(keys))}"


@dataclass(frozen=True)
class Joined:
    """An annotation record and the clips [first, stop) of prep sample ``key`` it covers."""

    item: Any
    key: str
    first: int
    stop: int


@dataclass
class JoinResult:
    items: list[Joined] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


def join(items: Iterable[Any], index: ShardIndex) -> JoinResult:
    """Pair each record (QAItem, MCItem, CaptionItem, LabelItem) with its sample's clips.

    Records whose video is missing or ambiguous, or whose segment overlaps no clip, become
    failures at the record's origin (file, line); the others keep their order.
    """
    result = JoinResult()
    for item in items:
        origin = getattr(item, "origin", None)
        file, where = (origin.file, origin.where) if origin else ("", "")
        key, why = index.lookup(item.video_id)
        if key is None:
            result.failures.append(Failure(file, where, why))
            continue
        spans = index.videos[key].spans
        if item.start is None:
            first, stop = 0, len(spans)
        else:
            first, stop = sentence_clip_range(spans, item.start, item.end)
        if first >= stop:
            end = spans[-1][1] if spans else 0.0
            why = f"segment [{item.start}, {item.end}] overlaps no clip of {key} (0-{end} s)"
            result.failures.append(Failure(file, where, why))
            continue
        result.items.append(Joined(item, key, first, stop))
    return result


def segment_features(
    shards: str | Path, joined: list[Joined]
) -> Iterator[tuple[Joined, np.ndarray]]:
    """(joined record, float32 [stop - first, F] clip features), one pass over the shards.

    Only the tars holding a joined sample are opened, each once; records come out grouped by
    sample in shard order. feat.npy is read with allow_pickle=False.
    """
    by_key: dict[str, list[Joined]] = defaultdict(list)
    for j in joined:
        by_key[j.key].append(j)
    for url in shard_urls(shards):
        with tarfile.open(url) as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                if ext != "feat.npy" or key not in by_key:
                    continue
                data = tar.extractfile(info).read()
                feats = np.load(io.BytesIO(data), allow_pickle=False).astype(np.float32)
                for j in by_key.pop(key):
                    yield j, feats[j.first : j.stop]


def write_failures(path: Path, failures: Iterable[Failure]) -> int:
    """Write failures as JSON lines (atomically); returns how many."""
    lines = [json.dumps(f.to_json(), ensure_ascii=False) for f in failures]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)
