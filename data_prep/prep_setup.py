"""Before a prep run does any work: where this rank sits, which device, what it may write.

`check_output_dir` and `check_resume_config` refuse, before anything is decoded, an output path
that is a file and an output directory whose finished samples were made with other content
settings; `library_versions` goes into every sample's provenance.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from data_prep.inputs import InputError
from pipeline.config import ConfigError, flat_dict, to_dict
from pipeline.io import atomic_write_json
from pipeline.prep_config import PrepConfig
from pipeline.shards import STATE_DIR, completed_shards


def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun / accelerate launch environment variables."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    return rank, world, local


def library_versions() -> dict[str, str]:
    """{distribution: version} of the libraries that shape a sample (provenance in meta.json)."""
    import importlib.metadata as md

    out = {}
    for name in (
        "vlpipe",
        "torch",
        "numpy",
        "av",
        "decord2",
        "faster-whisper",
        "ctranslate2",
        "openai-whisper",
        "webdataset",
    ):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


def resolve_device(device: str, local_rank: int) -> str:
    """Device "auto" -> this rank's GPU when there is one, else "cpu"; anything else as given."""
    import torch

    if device != "auto":
        return device
    return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"


def check_output_dir(out: Path) -> None:
    """Refuse an --output that exists and is not a directory (before anything is written)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--output {out} exists and is not a directory; give a directory path")


def check_resume_config(out: Path, cfg: PrepConfig, rank: int) -> None:
    """Refuse to mix samples made with different content settings in one output directory.

    Only finished samples count: a directory whose earlier runs produced no sample (a mistyped
    input, a run stopped before its first shard) takes the new settings, and failures recorded
    under the old ones are dropped (they may not hold under the new settings).
    """
    path = out / STATE_DIR / "content_config.json"
    content = {k: to_dict(cfg)[k] for k in PrepConfig.CONTENT_SECTIONS}
    if path.exists():
        old = json.loads(path.read_text())
        # A setting added since that run (e.g. features.extractor, issue 11) counts as its
        # default; nested sections (features.encoder) compare key by key.
        new, before = flat_dict(content), flat_dict({k: old.get(k, {}) for k in content})
        defaults = flat_dict({k: to_dict(PrepConfig())[k] for k in content})
        keys = [*new, *(k for k in before if k not in new)]
        diffs = [
            f"{k}: {before.get(k, defaults.get(k))!r} -> {new.get(k)!r}"
            for k in keys
            if before.get(k, defaults.get(k)) != new.get(k)
        ]
        if len(diffs) > 8:
            diffs = [*diffs[:8], f"{len(diffs) - 8} more"]
        if not diffs:
            return
        if completed_shards(out):
            raise ConfigError(
                f"{out} holds samples made with other settings ({'; '.join(diffs)}); "
                "use a new --output directory or the original settings"
            )
        if rank == 0:  # no sample yet: start over with the new settings
            for stale in (out / STATE_DIR).glob("failures-rank*.jsonl"):
                stale.unlink(missing_ok=True)
    if rank == 0:
        atomic_write_json(path, content)
