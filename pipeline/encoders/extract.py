"""A registered visual encoder as prep's feature extractor, and the record that lets a later stage
rebuild exactly that encoder (issue 11: `features.extractor=<name>`, then `data.frames=true`).

    extractor = EncoderExtractor(build_encoder("video_swin_mini", settings), "cpu")
    feat, extra = extractor(clips)             # what prep writes per clip
    record = encoder_record(extractor.encoder) # meta.json["encoder"]
    encoder = rebuild_encoder(record)          # the same encoder, same weights (or seed)

Legend: B clips, F frames per clip, H x W frame size, D feature width, N tokens per clip.

The record holds the encoder's name, its full settings (with the weights path and the seed), the
settings hash, the weights' sha256 (or "random-init") and D. A random-init encoder is rebuilt from
its seed (`build_encoder` seeds a forked RNG, so it is the same tensor by tensor); one with
weights is rebuilt from the recorded path and refused if the file's checksum changed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from pipeline.config import ConfigError, config_hash, to_dict
from pipeline.encoders.base import VisualEncoder
from pipeline.encoders.settings import EncoderSettings


def encoder_record(
    encoder: VisualEncoder | None = None,
    *,
    name: str = "",
    settings: EncoderSettings | None = None,
    weights_sha256: str = "random-init",
    feature_dim: int = 0,
) -> dict[str, Any]:
    """What meta.json records about the extractor: `encoder.provenance()` + the full settings.

    Pass a built encoder, or (for prep's fused S3D engine, which is not a VisualEncoder) the
    name, settings, weights checksum and width it stands for.
    """
    if encoder is not None:
        return {**encoder.provenance(), "settings": to_dict(encoder.settings)}
    assert settings is not None
    return {
        "encoder": name,
        "settings_hash": config_hash(settings),
        "weights_sha256": weights_sha256,
        "feature_dim": feature_dim,
        "settings": to_dict(settings),
    }


def same_encoder(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two records describe the same function: name, settings except where the weights
    file lies, and weights checksum (a moved checkpoint is still the same encoder)."""

    def key(r: dict[str, Any]) -> tuple:
        settings = {k: v for k, v in r.get("settings", {}).items() if k != "weights"}
        return r.get("encoder"), r.get("weights_sha256"), settings

    return key(a) == key(b)


def rebuild_encoder(record: dict[str, Any], where: str = "meta.json") -> VisualEncoder:
    """The encoder a record describes (eval mode), its weights checked against the checksum.

    Raises ConfigError naming `where` when the weights file is gone or differs, or the record is
    not one of `encoder_record`.
    """
    from pipeline.encoders import build_encoder

    try:
        name, settings = record["encoder"], dict(record["settings"])
    except (KeyError, TypeError):
        raise ConfigError(f"{where}: no extractor record (made before issue 11?)") from None
    weights = settings.get("weights")
    try:
        encoder = build_encoder(name, settings)
    except FileNotFoundError:
        raise ConfigError(
            f"{where}: the extractor's weights {weights} are not there any more (the encoder "
            f"that made these features cannot be rebuilt)"
        ) from None
    if encoder.weights_sha256 != record.get("weights_sha256"):
        raise ConfigError(
            f"{where}: {weights} has sha256 {encoder.weights_sha256}, not the "
            f"{record.get('weights_sha256')} that made these features"
        )
    return encoder


class EncoderExtractor:
    """Prep-time features from a VisualEncoder: uint8 clips in, pooled (and token) arrays out.

    The same calls as `pipeline.s3d_extract.S3DFeatureExtractor` where prep needs them
    (`host_buffer`, `describe`, a call per batch), in float32 and eval mode.
    """

    def __init__(self, encoder: VisualEncoder, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device).eval()
        self._host: torch.Tensor | None = None

    def host_buffer(self, shape: tuple[int, ...]) -> np.ndarray:
        """A reused uint8 host array of `shape` to stack a batch into (pinned on CUDA)."""
        if self._host is None or tuple(self._host.shape) != tuple(shape):
            pin = self.device.type == "cuda"
            self._host = torch.empty(shape, dtype=torch.uint8, pin_memory=pin)
        return self._host.numpy()

    def describe(self) -> dict[str, str]:
        """What meta.json's `extraction` records about how the features were computed."""
        return {
            "extractor": self.encoder.name,
            "encoder_settings_hash": config_hash(self.encoder.settings),
            "encoder_numerics": "float32, eval mode (no dropout or stochastic depth)",
        }

    @torch.inference_mode()
    def __call__(
        self, clips: np.ndarray | torch.Tensor, spatial: bool = False
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """clips uint8 [B, F, H, W, 3] -> (feat float32 [B, D], extra members).

        extra (only with `spatial`): "tokens.npy" float16 [B, N, D] and, under ToMe,
        "sizes.npy" float32 [B, N] (input patches per token).
        """
        if isinstance(clips, np.ndarray):
            clips = torch.from_numpy(clips)
        clips = clips.to(self.device, non_blocking=True)
        out = self.encoder(clips[:, None], return_tokens=spatial)  # each clip a one-clip video
        feat = out.pooled[:, 0].float().cpu().numpy()
        extra: dict[str, np.ndarray] = {}
        if spatial and out.tokens is not None:
            extra["tokens.npy"] = out.tokens[:, 0].to(torch.float16).cpu().numpy()
            if out.sizes is not None:
                extra["sizes.npy"] = out.sizes[:, 0].float().cpu().numpy()
        return feat, extra


def with_source(settings: EncoderSettings, weights: str | None, seed: int) -> EncoderSettings:
    """`settings` with the checkpoint path and random-init seed prep was given (features.weights,
    features.seed), which is how the record stores them."""
    return dataclasses.replace(settings, weights=weights, seed=seed)
