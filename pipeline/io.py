"""Crash-safe file writes shared by every stage.

A run may be killed at any moment (kill -9). Whole files are written to a temporary name in the
same directory and renamed into place (rename is atomic on POSIX), and append-only logs are read
back tolerating a torn last line, so a rerun never sees half-written state.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, streamed in chunks (never the whole file in memory)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _create_temp(path: Path) -> tuple[int, str]:
    """A new, exclusive temporary file next to `path`, with the mode any new file gets.

    `tempfile.mkstemp` creates files 0600; a shared cluster's other users could then not read a
    model or manifest. O_CREAT with 0666 lets the process umask decide, as for the shards.
    """
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name next to {path}")


def umask_modes(root: Path) -> None:
    """Give every file under the directory `root` the mode a new file of this process gets.

    safetensors (and so `save_pretrained`) writes its files 0600, unlike every other file of a
    model directory; a model exported for colleagues on a shared cluster could not be read. The
    mode is read off a probe made by `_create_temp` (no os.umask round trip, which would leave
    the process umask at 0 for other threads in between).
    """
    fd, probe = _create_temp(root / "mode")
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
        os.unlink(probe)
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(mode)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and fsync: once this returns, the record survives a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        # A previous run killed mid-write can leave a torn line without "\n": start a fresh line
        # so that our record stays parseable (read_jsonl skips the torn fragment).
        if f.tell() > 0:
            with open(path, "rb") as r:
                r.seek(-1, os.SEEK_END)
                if r.read(1) != b"\n":
                    f.write("\n")
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a JSONL file; a torn (unparseable) line left by a crash is skipped."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def inside(root: Path, path: Path) -> Path:
    """Resolve `path` and refuse it unless it lies inside `root` (we never write elsewhere)."""
    root_r, path_r = root.resolve(), path.resolve()
    if path_r != root_r and root_r not in path_r.parents:
        raise ValueError(f"refusing to write {path} outside the output directory {root}")
    return path_r
