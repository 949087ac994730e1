"""Visual encoders from pixels: one registry, one interface (issue 11).

    from pipeline.encoders import ENCODERS, build_encoder
    encoder = build_encoder("video_swin_mini", ["tokenlearner.enabled=true"])   # or a settings object
    out = encoder(frames, return_tokens=True)

Interface (every encoder, `base.VisualEncoder`). Legend: B videos, T clips per video, F frames
per clip, H x W frame size, D feature width (`encoder.feature_dim`), N tokens per clip.

* in: `frames` uint8 [B, T, F, H, W, 3] RGB, as stored in shards. The encoder owns its input
  processing: it samples `settings.frames` of the F frames uniformly, resizes to
  `settings.size`, and normalises with its own mean / std.
* out: `EncoderOutput`:
  - `pooled` float [B, T, D]: one feature per clip (takes the place of `feat.npy`);
  - `tokens` float [B, T, N, D], only with `return_tokens=True` (the place of `fmap.npy`);
  - `sizes` float [B, T, N] under ToMe: input patches per token (each clip sums to its patch count).
* `encoder.reduces_tokens`: True when TokenLearner or ToMe already reduce the tokens, so a model on
  top must not add its own TokenLearner (the single reducer place).
* `encoder.provenance()`: name, settings hash, weights sha256, D (for `meta.json`).
* `encoder.save(dir)` / `load_encoder(dir)`: safetensors + `encoder.json`.

Registered names (`ENCODERS.names()`): `s3d`; `video_swin_mini|tiny|small|base`;
`vivit_mini|base` (joint space-time); `vivit_factorised_mini|base`. Each entry holds its settings
dataclass (whose defaults are that configuration), a builder and the feature width.
Options (settings sections, typed, rejected where they do not apply): `tokenlearner`, `tome`,
`spt`, `lsa`, and for Video Swin `v2` (methods.md 4, 5, 6, 7, 10).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, deep_merge, load_config_dict, parse_overrides
from pipeline.encoders.base import (
    EncoderOutput,
    VisualEncoder,
    file_sha256,
    read_state_dict,
)
from pipeline.encoders.settings import (
    EncoderSettings,
    S3DSettings,
    TokenLearnerSettings,
    ToMeSettings,
    VideoSwinBaseSettings,
    VideoSwinMiniSettings,
    VideoSwinSettings,
    VideoSwinSmallSettings,
    ViViTFactorisedMiniSettings,
    ViViTFactorisedSettings,
    ViViTMiniSettings,
    ViViTSettings,
)
from pipeline.registry import Registry


@dataclass(frozen=True)
class EncoderEntry:
    """One registered encoder: its settings class (defaults = this configuration) and builder."""

    settings_class: type[EncoderSettings]
    build: Callable[
        [Any, str], VisualEncoder
    ]  # (settings, registered name) -> encoder, weights loaded
    width: Callable[[Any], int]  # settings -> feature width D
    summary: str  # one line for listings

    def feature_dim(self, settings: EncoderSettings | None = None) -> int:
        """Output width D under `settings` (default: this entry's own configuration)."""
        return self.width(settings if settings is not None else self.settings_class())


ENCODERS: Registry[EncoderEntry] = Registry("visual encoder")


def _load_own_weights(encoder: VisualEncoder, path: str) -> None:
    """Weights saved by `encoder.save` (or any state dict with exactly its keys)."""
    state = read_state_dict(path)
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: does not fit {encoder.name}: {e}") from None


def _build_swin(settings: VideoSwinSettings, name: str) -> VisualEncoder:
    from pipeline.encoders.swin import VideoSwinEncoder, load_video_swin_weights

    encoder = _seeded(lambda: VideoSwinEncoder(settings, name), settings.seed)
    if settings.weights:
        load_video_swin_weights(encoder, settings.weights)
        encoder.weights_sha256 = file_sha256(settings.weights)
    return encoder.eval()


def _build_vivit(settings: ViViTSettings, name: str) -> VisualEncoder:
    from pipeline.encoders.vivit import ViViTEncoder

    encoder = _seeded(lambda: ViViTEncoder(settings, name), settings.seed)
    if settings.weights:
        _load_own_weights(encoder, settings.weights)
        encoder.weights_sha256 = file_sha256(settings.weights)
    return encoder.eval()


def _build_s3d(settings: S3DSettings, name: str) -> VisualEncoder:
    from pipeline.encoders.s3d_encoder import S3DEncoder

    return _seeded(lambda: S3DEncoder(settings, name), settings.seed).eval()


def _seeded(make: Callable[[], VisualEncoder], seed: int) -> VisualEncoder:
    """Build under `seed` without disturbing the caller's global RNG."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def _swin_width(s: VideoSwinSettings) -> int:
    return s.embed_dim * 2 ** (len(s.depths) - 1)


for _name, _cls, _summary in (
    ("video_swin_mini", VideoSwinMiniSettings, "Video Swin, mini (C 32, depths 2-2-2-2, window 4)"),
    ("video_swin_tiny", VideoSwinSettings, "Video Swin-T as published (28M, 87.9 GMAC at 32x224)"),
    ("video_swin_small", VideoSwinSmallSettings, "Video Swin-S as published (50M, 165.9 GMAC)"),
    ("video_swin_base", VideoSwinBaseSettings, "Video Swin-B as published (88M, 281.6 GMAC)"),
):
    ENCODERS.register(_name, EncoderEntry(_cls, _build_swin, _swin_width, _summary))

for _name, _cls, _summary in (
    ("vivit_mini", ViViTMiniSettings, "ViViT joint space-time, mini (D 128, 4 blocks, 8x64 px)"),
    ("vivit_base", ViViTSettings, "ViViT-B/16x2 joint space-time (scenic / HF VivitModel)"),
    ("vivit_factorised_mini", ViViTFactorisedMiniSettings, "ViViT factorised encoder, mini"),
    ("vivit_factorised_base", ViViTFactorisedSettings, "ViViT-B factorised encoder (12 + 4)"),
):
    ENCODERS.register(_name, EncoderEntry(_cls, _build_vivit, lambda s: s.hidden_dim, _summary))

ENCODERS.register(
    "s3d",
    EncoderEntry(S3DSettings, _build_s3d, lambda s: 1024, "S3D / S3D-G Mixed_5c (pipeline.s3d)"),
)


def encoder_settings(
    name: str, data: dict[str, Any] | list[str] | None = None, prefix: str = ""
) -> EncoderSettings:
    """Validated settings of encoder `name` from a mapping or `key=value` overrides.

    `prefix` names the section in error messages when the settings sit inside a bigger config
    (e.g. "features.encoder."). Raises ConfigError naming the key.
    """
    entry = ENCODERS.get(name)
    if isinstance(data, list):
        data = parse_overrides(data)
    return load_config_dict(entry.settings_class, deep_merge({}, data or {}), prefix)


def build_encoder(
    name: str, settings: EncoderSettings | dict[str, Any] | list[str] | None = None
) -> VisualEncoder:
    """The encoder `name` in eval mode, weights loaded if `settings.weights` is set.

    settings: a settings object of this entry's class, or a mapping / `key=value` list applied
    over the entry's defaults. Raises ConfigError (unknown name, bad settings), FileNotFoundError
    or ValueError (unreadable or mismatching weights).
    """
    entry = ENCODERS.get(name)
    if not isinstance(settings, EncoderSettings):
        settings = encoder_settings(name, settings)
    elif not isinstance(settings, entry.settings_class):
        raise ConfigError(
            f"{name}: settings must be {entry.settings_class.__name__}, got "
            f"{type(settings).__name__}"
        )
    else:
        settings.validate()
    return entry.build(settings, name)


def load_encoder(directory: str | Path) -> VisualEncoder:
    """An encoder saved with `encoder.save(directory)`: same name, settings and weights."""
    directory = Path(directory)
    meta = json.loads((directory / "encoder.json").read_text())
    data = dict(meta["settings"])
    data["weights"] = None  # the saved file below, not wherever the original weights came from
    encoder = build_encoder(meta["name"], data)
    _load_own_weights(encoder, str(directory / "encoder.safetensors"))
    encoder.weights_sha256 = file_sha256(directory / "encoder.safetensors")
    return encoder.eval()


__all__ = [
    "ENCODERS",
    "EncoderEntry",
    "EncoderOutput",
    "EncoderSettings",
    "TokenLearnerSettings",
    "ToMeSettings",
    "VisualEncoder",
    "build_encoder",
    "encoder_settings",
    "load_encoder",
]
