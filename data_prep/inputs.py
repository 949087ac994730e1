"""What `vlpipe prep --input` accepts, turned into a deterministic list of `InputItem`s.

* a directory, searched recursively for video files (a `.vtt`/`.srt` with the same stem next to
  a video is its subtitle file);
* a manifest, CSV or JSONL, with a `path` column and optional `id` and `subtitles`;
* webdataset tars of videos as written by video2dataset (`mp4` + `json`, optional `txt`/`vtt`),
  given as one tar, a directory of tars, or a brace pattern `shards-{00000..00009}.tar`.

Keys are stable across runs and machines: they derive from the path relative to the input root
(or the manifest id), never from the order of discovery.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import tarfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import braceexpand

from pipeline.io import file_sha256
from pipeline.shards import make_key

SUBTITLE_EXTENSIONS = (".vtt", ".srt")
TAR_MEMBER_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


class InputError(ValueError):
    """The --input argument itself is unusable (nothing to process)."""


@dataclass(frozen=True)
class InputItem:
    key: str  # sample key (stable id)
    path: str  # local file, or "tar:{tar path}:{member name}" for video2dataset tars
    display: str  # what the user recognises in reports (relative path or tar/member)
    subtitles: str | None = None  # local subtitle file or "tar:..." member
    extra: dict = field(default_factory=dict, hash=False, compare=False)  # caption, source json


def _find_subtitles(video: Path) -> str | None:
    for ext in SUBTITLE_EXTENSIONS:
        cand = video.with_suffix(ext)
        if cand.exists():
            return str(cand)
    return None


def _from_directory(root: Path, extensions: list[str]) -> list[InputItem]:
    exts = {e.lower() for e in extensions}
    items = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in exts:
            rel = path.relative_to(root).as_posix()
            stem = rel.rsplit(".", 1)[0]
            items.append(
                InputItem(make_key(stem, rel), str(path), rel, subtitles=_find_subtitles(path))
            )
    return items


def _from_manifest(manifest: Path) -> list[InputItem]:
    if manifest.suffix.lower() == ".csv":
        with open(manifest, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    else:
        rows = []
        for n, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise InputError(f"{manifest}:{n}: not valid JSON: {e}") from None
    items = []
    for n, row in enumerate(rows, 1):
        if not row.get("path"):
            raise InputError(f"{manifest}: row {n} has no 'path'")
        path = Path(row["path"])
        if not path.is_absolute():
            path = manifest.parent / path  # relative paths are relative to the manifest
        ident = str(row.get("id") or "") or path.stem
        subs = row.get("subtitles") or None
        if subs and not Path(subs).is_absolute():
            subs = str(manifest.parent / subs)
        items.append(
            InputItem(
                make_key(ident, ident if row.get("id") else str(row["path"])),
                str(path),
                str(row["path"]),
                subtitles=subs or _find_subtitles(path),
                extra={"manifest_id": row["id"]} if row.get("id") else {},
            )
        )
    return items


def _from_tars(tars: list[Path], extensions: list[str]) -> list[InputItem]:
    exts = {e.lower().lstrip(".") for e in extensions}
    items = []
    for tar in tars:
        groups: dict[str, dict[str, str]] = defaultdict(dict)
        try:
            with tarfile.open(tar) as tf:
                for m in tf.getmembers():
                    match = TAR_MEMBER_RE.match(m.name) if m.isfile() else None
                    if match:  # webdataset's rule: key = path up to the first dot of the name
                        groups[match.group(1)][match.group(2).lower()] = m.name
                meta_of = {}
                for base, members in groups.items():
                    if "json" in members:
                        try:
                            meta_of[base] = json.loads(tf.extractfile(members["json"]).read())
                        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                            meta_of[base] = {}
                    if "txt" in members:
                        data = tf.extractfile(members["txt"]).read()
                        meta_of.setdefault(base, {})["caption"] = data.decode("utf-8", "replace")
        except (tarfile.TarError, OSError) as e:
            raise InputError(f"{tar}: not a readable tar: {e}") from None
        for base in sorted(groups):
            members = groups[base]
            video_ext = next((e for e in members if e in exts), None)
            if video_ext is None:
                continue
            subs = next((members[e] for e in ("vtt", "srt") if e in members), None)
            unique = f"{tar.name}/{base}"
            items.append(
                InputItem(
                    make_key(Path(base).name, unique),
                    f"tar:{tar}:{members[video_ext]}",
                    f"{tar.name}/{members[video_ext]}",
                    subtitles=f"tar:{tar}:{subs}" if subs else None,
                    extra=meta_of.get(base, {}),
                )
            )
    return items


def discover_inputs(spec: str, extensions: list[str]) -> list[InputItem]:
    """Every input of `spec`, sorted by key; raise InputError when `spec` is unusable."""
    if "{" in spec and "}" in spec:
        tars = [Path(p) for p in braceexpand.braceexpand(spec)]
        missing = [str(t) for t in tars if not t.exists()]
        if missing:
            raise InputError(f"input tars do not exist: {', '.join(missing[:5])}")
        items = _from_tars(tars, extensions)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise InputError(f"input {spec} does not exist")
        if path.is_dir():
            items = _from_directory(path, extensions)
            tars = sorted(path.glob("*.tar"))
            if not items and tars:
                items = _from_tars(tars, extensions)
        elif path.suffix.lower() == ".tar":
            items = _from_tars([path], extensions)
        elif path.suffix.lower() in (".csv", ".jsonl", ".json"):
            items = _from_manifest(path)
        elif path.suffix.lower() in {e.lower() for e in extensions}:
            items = [
                InputItem(
                    make_key(path.stem, path.name),
                    str(path),
                    path.name,
                    subtitles=_find_subtitles(path),
                )
            ]
        else:
            raise InputError(f"input {spec}: not a directory, manifest (.csv/.jsonl), tar or video")
    seen: dict[str, InputItem] = {}
    for item in items:
        if item.key in seen:
            raise InputError(
                f"two inputs map to the same key {item.key}: "
                f"{seen[item.key].display} and {item.display}"
            )
        seen[item.key] = item
    return sorted(items, key=lambda i: i.key)


def quick_fingerprint(path: str) -> str | None:
    """Cheap content fingerprint (size + first and last 64 KiB) to find duplicate files.

    Computed by every rank for every local input before the inputs are split, so duplicates are
    resolved identically everywhere; candidates are then confirmed with a full sha256.
    """
    if path.startswith("tar:"):
        return None  # video2dataset already deduplicates by URL; reading every member twice is not worth it
    p = Path(path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(1 << 16)
            f.seek(max(0, size - (1 << 16)))
            tail = f.read(1 << 16)
    except OSError:
        return None
    if size == 0:
        return None  # empty files are failures, not duplicates of each other
    return hashlib.sha256(str(size).encode() + head + tail).hexdigest()


def find_duplicates(items: list[InputItem]) -> dict[str, InputItem]:
    """duplicate key -> the input it duplicates (the first by key among identical files)."""
    by_fp: dict[str, list[InputItem]] = defaultdict(list)
    for item in items:
        fp = quick_fingerprint(item.path)
        if fp is not None:
            by_fp[fp].append(item)
    dups = {}
    for group in by_fp.values():
        if len(group) < 2:
            continue
        by_digest: dict[str, list[InputItem]] = defaultdict(list)
        for item in group:  # confirm with the full content hash
            by_digest[file_sha256(item.path)].append(item)
        for same in by_digest.values():
            for dup in same[1:]:
                dups[dup.key] = same[0]
    return dups
