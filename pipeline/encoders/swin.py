"""Video Swin Transformer (Liu et al., CVPR 2022; methods.md 7) as a visual encoder, and a loader for
the official checkpoint layout (SwinTransformer/Video-Swin-Transformer releases).

Legend: N clips, F frames, (D, H, W) token grid, C channels, K learned tokens per time slice.

Module names are the reference's (`patch_embed.proj`, `layers.{i}.blocks.{j}.attn.qkv`,
`layers.{i}.downsample.reduction`, `norm`, ...), so an official `state_dict` (prefixed `backbone.`,
with a `cls_head.` that is ignored) loads with no missing or unexpected keys. The clip feature is the
final map averaged over (D, H, W), as the reference I3DHead's average pooling; tokens are the
D*H*W positions of that map (or K per time slice with TokenLearner on the output).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.encoders.base import EncoderOutput, VisualEncoder, read_state_dict
from pipeline.encoders.settings import VideoSwinSettings
from pipeline.encoders.spt import ShiftedPatchEmbed
from pipeline.encoders.swin_layers import (
    PatchMerging,
    SwinBlock3D,
    effective_window,
    shift_mask,
)
from pipeline.encoders.tokenlearner import build_token_learner

logger = logging.getLogger(__name__)


class PatchEmbed3D(nn.Module):
    """Clips [N, 3, F, H, W] -> [N, F/pt, H/ph, W/pw, C]; input zero padded to whole patches.

    Conv3d with kernel = stride = patch (reference `PatchEmbed3D`), or SPT (spt.ShiftedPatchEmbed),
    then LayerNorm when `patch_norm`.
    """

    def __init__(self, patch: tuple[int, int, int], dim: int, norm: bool, spt: bool) -> None:
        super().__init__()
        self.patch = patch
        if spt:
            self.spt = ShiftedPatchEmbed(3, dim, patch)
        else:
            self.proj = nn.Conv3d(3, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim) if norm else None

    def forward(self, x: Tensor) -> Tensor:
        pads = [(-size) % p for size, p in zip(x.shape[2:], self.patch, strict=True)]
        x = F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]))
        if hasattr(self, "spt"):
            x = self.spt(x)  # [N, D, H, W, C]
        else:
            x = self.proj(x).permute(0, 2, 3, 4, 1)  # [N, C, D, H, W] -> [N, D, H, W, C]
        return self.norm(x) if self.norm is not None else x


class SwinStage(nn.Module):
    """The reference `BasicLayer`: `depth` blocks alternating unshifted / shifted by window // 2,
    then patch merging (all but the last stage). x [N, D, H, W, C] -> [N, D, H', W', C']."""

    def __init__(
        self, s: VideoSwinSettings, stage: int, drop_paths: list[float], last: bool
    ) -> None:
        super().__init__()
        dim = s.embed_dim * 2**stage
        self.window = tuple(s.window_size)
        self.shift = tuple(w // 2 for w in s.window_size)
        self.blocks = nn.ModuleList(
            SwinBlock3D(
                dim,
                s.num_heads[stage],
                self.window,
                (0, 0, 0) if i % 2 == 0 else self.shift,
                s.mlp_ratio,
                s.qkv_bias,
                s.dropout,
                s.attention_dropout,
                drop_paths[i],
                s.v2,
                s.lsa,
                s.shrunk_window_bias,
            )
            for i in range(s.depths[stage])
        )
        self.downsample = None if last else PatchMerging(dim, s.v2, s.spt)

    def forward(self, x: Tensor) -> Tensor:
        d, h, w = x.shape[1:4]
        window, shift = effective_window((d, h, w), self.window, self.shift)
        mask = None
        if any(shift):  # one mask per stage, as the reference computes it in BasicLayer
            padded = tuple(
                math.ceil(size / win) * win for size, win in zip((d, h, w), window, strict=True)
            )
            mask = shift_mask(padded, window, shift, str(x.device))
        for block in self.blocks:
            x = block(x, mask)
        return x if self.downsample is None else self.downsample(x)


class VideoSwinEncoder(VisualEncoder):
    """Video Swin (V1 or V2) over normalised clips [N, 3, F, H, W]; any F, H, W (padded)."""

    def __init__(self, settings: VideoSwinSettings, name: str = "video_swin") -> None:
        super().__init__(settings, settings.mean, settings.std)
        s = settings
        self.name = name
        self.patch_embed = PatchEmbed3D(tuple(s.patch_size), s.embed_dim, s.patch_norm, s.spt)
        self.pos_drop = nn.Dropout(s.dropout)
        rates = torch.linspace(0, s.drop_path, sum(s.depths)).tolist()  # stochastic depth decay
        starts = [sum(s.depths[:i]) for i in range(len(s.depths))]
        self.layers = nn.ModuleList(
            SwinStage(s, i, rates[start : start + s.depths[i]], i == len(s.depths) - 1)
            for i, start in enumerate(starts)
        )
        self.feature_dim = s.embed_dim * 2 ** (len(s.depths) - 1)
        self.norm = nn.LayerNorm(self.feature_dim)
        self.apply(_init_weights)
        tl = s.tokenlearner
        if tl.enabled:  # on the output map only (settings.validate enforces placement 1.0)
            self.token_learner = build_token_learner(
                tl.version, self.feature_dim, tl.num_tokens, tl.bottleneck_dim, tl.dropout
            )  # created after apply(): keeps scenic's init

    def features(self, x: Tensor) -> Tensor:
        """Normalised clips [N, 3, F, H, W] -> normed final map [N, D, H, W, C]."""
        x = self.pos_drop(self.patch_embed(x))
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def encode(self, x: Tensor, return_tokens: bool) -> EncoderOutput:
        fmap = self.features(x)  # [N, D, H, W, C]
        n, d, h, w, c = fmap.shape
        if self.settings.tokenlearner.enabled:
            learned = self.token_learner(fmap.reshape(n * d, h * w, c), (h, w))  # [N*D, K, C]
            tokens = learned.reshape(n, -1, c)  # [N, D*K, C]
        else:
            tokens = fmap.reshape(n, d * h * w, c)
        return EncoderOutput(tokens.mean(dim=1), tokens if return_tokens else None, None)


def _init_weights(module: nn.Module) -> None:
    """The reference `init_weights`: Linear trunc_normal(0.02) with zero bias; LayerNorm 1, 0."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# --- official checkpoints -----------------------------------------------------------------------

_HEAD_PREFIXES = ("cls_head.",)  # the released Recognizer3D's classifier: not part of the encoder
_OPTION_PREFIXES = ("token_learner.",)  # modules the official release does not have


def official_state_dict(raw: dict[str, Any]) -> dict[str, Tensor]:
    """A released checkpoint (`{"state_dict": {"backbone.*", "cls_head.*"}, "meta": ...}`, or a bare
    state dict, optionally `module.`-prefixed) -> backbone tensors under the encoder's names."""
    state = raw.get("state_dict", raw.get("model", raw))
    out = {}
    for key, value in state.items():
        if not isinstance(value, Tensor) or key.startswith(_HEAD_PREFIXES):
            continue
        for prefix in ("module.", "backbone."):
            key = key.removeprefix(prefix)
        out[key] = value
    return out


def load_video_swin_weights(encoder: VideoSwinEncoder, path: str | Path) -> dict[str, Any]:
    """Load an official Video Swin checkpoint (or one saved by `encoder.save`) into `encoder`.

    Returns {"path", "missing_option_keys"}: option modules absent from the file (e.g. a new
    TokenLearner) keep their initialisation. Raises ValueError naming the file and the keys on any
    missing backbone key, unexpected key, shape mismatch, or a relative position index that
    differs (another window size).
    """
    state = official_state_dict(read_state_dict(path))
    own = encoder.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    backbone_missing = [k for k in missing if not k.startswith(_OPTION_PREFIXES)]
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    )
    problems = []
    if backbone_missing:
        problems.append(f"missing {len(backbone_missing)} keys (first: {backbone_missing[:5]})")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} keys (first: {unexpected[:5]})")
    if mismatched:
        problems.append(f"shape mismatch: {mismatched[:5]}")
    if not problems:
        bad_index = [
            k
            for k in state
            if k.endswith("relative_position_index") and not torch.equal(state[k].long(), own[k])
        ]
        if bad_index:
            problems.append(f"relative_position_index differs (another window?): {bad_index[:3]}")
    if problems:
        raise ValueError(f"{path}: not a {encoder.name} checkpoint: " + "; ".join(problems))
    encoder.load_state_dict(state, strict=False)
    if missing:
        logger.info(
            "%s: %d option keys not in %s keep their init", encoder.name, len(missing), path
        )
    return {"path": str(path), "missing_option_keys": missing}
