"""The one interface every visual encoder implements, and what they share (input checks, resampling,
normalisation, stochastic depth, save / load).

Legend: B videos, T clips per video, F frames per clip, H x W frame size, D feature width,
N tokens per clip, S learned tokens per frame.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from pipeline.config import config_hash, to_dict
from pipeline.encoders.settings import EncoderSettings
from pipeline.io import atomic_write_text


@dataclass
class EncoderOutput:
    """What an encoder returns for the clips of B videos.

    pooled float [B, T, D]: one feature per clip (where today's pipeline has `feat.npy`).
    tokens float [B, T, N, D] or None: per-clip tokens (where it has the 7x7 `fmap.npy`), only
    when asked for; N is fixed by the input size and the settings (ToMe merges a fixed r).
    sizes float [B, T, N] or None: how many input patches each token stands for, under ToMe only
    (each clip's sizes sum to its patch count); None means every token is one patch or cell.
    """

    pooled: Tensor
    tokens: Tensor | None = None
    sizes: Tensor | None = None


class DropPath(nn.Module):
    """Stochastic depth: zero a residual branch per sample with probability `rate` in training.

    x [B, ...] -> [B, ...]. `scale_by_keep=True` divides the kept samples by (1 - rate) (timm's
    DropPath, used by Video Swin); scenic's ViViT (`get_drop_pattern`) does not rescale.
    """

    def __init__(self, rate: float, scale_by_keep: bool = True) -> None:
        super().__init__()
        self.rate = rate
        self.scale_by_keep = scale_by_keep

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.rate)
        return x * keep / (1.0 - self.rate) if self.scale_by_keep else x * keep

    def extra_repr(self) -> str:
        return f"rate={self.rate}, scale_by_keep={self.scale_by_keep}"


def sample_frame_indices(available: int, wanted: int) -> Tensor:
    """Indices [wanted] of `wanted` frames spread uniformly over `available` (segment centres)."""
    positions = (torch.arange(wanted, dtype=torch.float64) + 0.5) * available / wanted
    return positions.floor().long().clamp_(0, available - 1)


class VisualEncoder(nn.Module):
    """Frames of the clips of B videos in, per-clip features (and optionally tokens) out.

    Subclasses implement `encode(x, return_tokens)` on normalised float clips [N, 3, F', H', W']
    and set `feature_dim`. This class owns the checks, the frame / size resampling and the
    normalisation, so every encoder takes the same uint8 frames as stored in shards.
    """

    feature_dim: int
    name: str = ""
    weights_sha256: str = "random-init"  # sha256 of the loaded weights file (set by the builder)

    def __init__(
        self,
        settings: EncoderSettings,
        mean: tuple[float, float, float] | None,
        std: tuple[float, float, float] | None,
    ) -> None:
        super().__init__()
        self.settings = settings
        # Non-persistent: they come from the settings, so a checkpoint never overrides them.
        self.register_buffer("pixel_mean", _channel_vector(mean, 0.0), persistent=False)
        self.register_buffer("pixel_std", _channel_vector(std, 255.0), persistent=False)

    @property
    def reduces_tokens(self) -> bool:
        """True when the encoder already reduces its tokens (TokenLearner or ToMe).

        The single reducer place (issue 11): a model on top (the two-stream model) must not add its
        own TokenLearner over `tokens` when this is True.
        """
        return self.settings.reduces_tokens

    def preprocess(self, frames: Tensor | np.ndarray) -> Tensor:
        """uint8 [B, T, F, H, W, 3] RGB -> normalised float [B*T, 3, F', S, S] on the encoder.

        F' = settings.frames (uniformly sampled; 0 keeps F), S = settings.size (0 keeps H x W).
        Raises ValueError on another dtype or shape.
        """
        if isinstance(frames, np.ndarray):
            frames = torch.from_numpy(frames)
        if frames.dtype != torch.uint8 or frames.ndim != 6 or frames.shape[-1] != 3:
            raise ValueError(
                f"{self.name or 'encoder'}: frames must be uint8 [B, T, F, H, W, 3] RGB, "
                f"got {frames.dtype} {tuple(frames.shape)}"
            )
        batch, clips, num_frames, height, width, _ = frames.shape
        if min(frames.shape[:5]) < 1:
            raise ValueError(f"{self.name or 'encoder'}: empty frames {tuple(frames.shape)}")
        device, dtype = self.pixel_mean.device, self.pixel_mean.dtype
        x = frames.reshape(batch * clips, num_frames, height, width, 3).to(device)
        wanted = self.settings.frames
        if wanted and wanted != num_frames:
            x = x[:, sample_frame_indices(num_frames, wanted).to(device)]
        x = x.permute(0, 4, 1, 2, 3).to(dtype)  # [B*T, 3, F', H, W]
        size = self.settings.size
        if size and (height, width) != (size, size):
            n, c, f = x.shape[:3]
            x = F.interpolate(
                x.reshape(n, c * f, height, width),
                size=(size, size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            ).reshape(n, c, f, size, size)
        mean = self.pixel_mean.view(1, 3, 1, 1, 1)
        std = self.pixel_std.view(1, 3, 1, 1, 1)
        return ((x - mean) / std).contiguous()

    def encode(self, x: Tensor, return_tokens: bool) -> EncoderOutput:
        """Normalised clips [N, 3, F', H', W'] -> EncoderOutput with pooled [N, D], tokens
        [N, n, D], sizes [N, n] (the clip axis not yet split into B, T)."""
        raise NotImplementedError

    def forward(self, frames: Tensor | np.ndarray, return_tokens: bool = False) -> EncoderOutput:
        """uint8 frames [B, T, F, H, W, 3] -> EncoderOutput (pooled [B, T, D], tokens [B, T, N, D]).

        Clips are encoded independently, `settings.clip_batch` at a time (0: all at once).
        """
        batch, clips = frames.shape[:2]
        x = self.preprocess(frames)
        chunk = self.settings.clip_batch or x.shape[0]
        parts = [self.encode(x[i : i + chunk], return_tokens) for i in range(0, x.shape[0], chunk)]
        pooled = torch.cat([p.pooled for p in parts]).unflatten(0, (batch, clips))
        tokens = sizes = None
        if return_tokens:
            tokens = torch.cat([p.tokens for p in parts]).unflatten(0, (batch, clips))
            if parts[0].sizes is not None:
                sizes = torch.cat([p.sizes for p in parts]).unflatten(0, (batch, clips))
        return EncoderOutput(pooled, tokens, sizes)

    def provenance(self) -> dict[str, Any]:
        """What produced these features, for `meta.json`: name, settings hash, weights checksum."""
        return {
            "encoder": self.name,
            "settings_hash": config_hash(self.settings),
            "weights_sha256": self.weights_sha256,
            "feature_dim": self.feature_dim,
        }

    # --- save / load: safetensors + the settings as JSON --------------------------------------

    def save(self, directory: str | Path) -> None:
        """Write `encoder.safetensors` and `encoder.json` ({"name", "settings"}) into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        tmp = directory / "encoder.safetensors.tmp"
        save_file(state, str(tmp))
        tmp.replace(directory / "encoder.safetensors")
        meta = {"name": self.name, "settings": to_dict(self.settings)}
        atomic_write_text(directory / "encoder.json", json.dumps(meta, indent=1))


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _channel_vector(values: tuple[float, float, float] | None, default: float) -> Tensor:
    return torch.tensor(values if values is not None else (default,) * 3, dtype=torch.float32)


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """A checkpoint's top-level dict: .safetensors, or .pth/.pt with torch.load(weights_only=True).

    Raises FileNotFoundError, or ValueError naming the file when it cannot be read safely.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder weights not found: {path}")
    try:
        if path.suffix == ".safetensors":
            return dict(load_file(str(path)))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable / unsafe file is one clear error
        raise ValueError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    return state
