"""Typed settings of the visual encoders: one dataclass per registered encoder, one comment per field.

Each registered name has its own settings class whose *defaults are that configuration* (Video
Swin-T as published, a mini one for tests and the sample corpus, ...), so `load_config(cls, ...)`
builds and validates it alone or as a section of a bigger config. The reducer options
(`tokenlearner`, `tome`) and `spt` / `lsa` exist on every encoder so that a combination that does not
apply is rejected with a message saying why, naming the key, instead of "unknown key".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from pipeline.config import ConfigError, check_range

log = logging.getLogger("vlpipe.encoders")

IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)  # Video Swin configs (img_norm_cfg), RGB, 0-255
IMAGENET_STD_255 = (58.395, 57.12, 57.375)
SIGNED_UNIT = (127.5, 127.5, 127.5)  # ViViT (scenic / HF VivitImageProcessor): pixels to [-1, 1]


@dataclass
class TokenLearnerSettings:
    """TokenLearner (methods.md 4): learn S tokens per frame from the token map, once, at a depth."""

    enabled: bool = False  # off by default (style.md: speed-ups are modules you switch on)
    version: Literal["v1", "v1.1"] = (
        "v1.1"  # v1: paper's convs + sigmoid (4.1); v1.1: scenic's MLP + softmax (4.2)
    )
    num_tokens: int = 8  # S learned tokens per frame (scenic EncoderMod default 8)
    placement: float = (
        0.5  # fraction of the blocks run before it (4.4 "at 1/2"); 1.0 = on the output
    )
    fuser: bool = (
        False  # TokenFuser (4.3): after every later block, map the S tokens back to the grid
    )
    bottleneck_dim: int = 64  # v1.1 / TokenFuser MLP width (scenic default 64)
    dropout: float = 0.0  # dropout inside the TokenLearner / TokenFuser MLPs

    def validate(self) -> None:
        check_range("num_tokens", self.num_tokens, 0, 4096)
        check_range("placement", self.placement, -1e-12, 1.0)
        check_range("bottleneck_dim", self.bottleneck_dim, 0, 65536)
        check_range("dropout", self.dropout, -1e-12, 0.999)
        if self.fuser and self.placement >= 1.0:
            raise ConfigError("fuser: TokenFuser needs blocks after TokenLearner (placement < 1)")


@dataclass
class ToMeSettings:
    """Token merging (methods.md 5): bipartite soft matching between attention and MLP of each block."""

    enabled: bool = False  # off by default; works without retraining (5.5 "off-the-shelf")
    r: int = (
        8  # tokens merged per block in each matching group (a clip, or a frame with scope=frame)
    )
    proportional_attention: bool = True  # softmax(QK^T/sqrt(d) + log size) (5.3)
    scope: Literal["clip", "frame"] = "clip"  # match across the whole clip, or within each frame

    def validate(self) -> None:
        check_range("r", self.r, 0, 1_000_000)


@dataclass
class EncoderSettings:
    """What every visual encoder shares: clip resampling, weights, seed, and the option sections."""

    frames: int = 0  # frames per clip consumed, sampled uniformly from those given; 0 = all given
    size: int = 0  # frames resized (bilinear, antialiased) to size x size; 0 = as given
    weights: str | None = (
        None  # checkpoint (.safetensors, or .pth read with weights_only); None = random
    )
    seed: int = 0  # random-init seed (weights=None): deterministic, not meaningful features
    clip_batch: int = 0  # clips per forward chunk (bounds memory at prep time); 0 = all at once
    tokenlearner: TokenLearnerSettings = field(default_factory=TokenLearnerSettings)
    tome: ToMeSettings = field(default_factory=ToMeSettings)
    spt: bool = False  # Shifted Patch Tokenization for the patch embedding (methods.md 6.1)
    lsa: bool = False  # Locality Self-Attention: no self-attention, learned temperature (6.2)

    @property
    def reduces_tokens(self) -> bool:
        """True when TokenLearner or ToMe reduce the tokens (the single reducer place, issue 11):
        a model on top must then not add its own TokenLearner."""
        return self.tokenlearner.enabled or self.tome.enabled

    def validate(self) -> None:
        check_range("frames", self.frames, -1, 4096)
        check_range("size", self.size, -1, 4096)
        check_range("clip_batch", self.clip_batch, -1, 1 << 20)
        if self.tokenlearner.enabled and self.tome.enabled:
            raise ConfigError(
                "tome.enabled: choose one token reducer (tokenlearner or tome), not both"
            )


def _check_norm(mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    if len(mean) != 3 or len(std) != 3:
        raise ConfigError(f"mean: mean and std need 3 values (RGB), got {mean} and {std}")
    if min(std) <= 0:
        raise ConfigError(f"std: must be > 0, got {std}")


# --- Video Swin (methods.md 7) ----------------------------------------------------------------


@dataclass
class VideoSwinSettings(EncoderSettings):
    """Video Swin-T as published (`swin_tiny_patch244_window877_kinetics400_1k.py`)."""

    embed_dim: int = 96  # C of stage 1; stage i has C * 2^i channels
    depths: list[int] = field(default_factory=lambda: [2, 2, 6, 2])  # blocks per stage
    num_heads: list[int] = field(default_factory=lambda: [3, 6, 12, 24])  # heads per stage
    patch_size: tuple[int, int, int] = (2, 4, 4)  # (t, h, w) of the 3D patch embedding
    window_size: tuple[int, int, int] = (8, 7, 7)  # (t, h, w) attention window ("window877")
    mlp_ratio: float = 4.0  # MLP hidden width / channels
    qkv_bias: bool = True  # bias on the q, k, v projection
    dropout: float = 0.0  # dropout after attention projection and MLP (drop_rate)
    attention_dropout: float = 0.0  # dropout on attention weights (attn_drop_rate)
    drop_path: float = 0.1  # stochastic depth, linear from 0 over all blocks (K400 Swin-T: 0.1)
    patch_norm: bool = True  # LayerNorm after the patch embedding (all released configs)
    shrunk_window_bias: Literal["reference", "exact"] = "reference"  # methods.md 10, see swin.py
    v2: bool = False  # Swin V2: cosine attention, log-spaced continuous bias, residual post-norm
    mean: tuple[float, float, float] = IMAGENET_MEAN_255  # per-channel mean of 0-255 RGB input
    std: tuple[float, float, float] = IMAGENET_STD_255  # per-channel std of 0-255 RGB input

    def validate(self) -> None:
        super().validate()
        _check_norm(self.mean, self.std)
        check_range("embed_dim", self.embed_dim, 0, 8192)
        if not self.depths or len(self.depths) != len(self.num_heads):
            raise ConfigError(
                f"num_heads: need one entry per stage of depths {self.depths}, got {self.num_heads}"
            )
        for i, (depth, heads) in enumerate(zip(self.depths, self.num_heads, strict=True)):
            check_range(f"depths[{i}]", depth, 0, 1000)
            check_range(f"num_heads[{i}]", heads, 0, 1000)
            if (self.embed_dim * 2**i) % heads:
                raise ConfigError(
                    f"num_heads[{i}]: {heads} does not divide stage width {self.embed_dim * 2**i}"
                )
        for key in ("patch_size", "window_size"):
            value = getattr(self, key)
            if len(value) != 3 or min(value) < 1:
                raise ConfigError(f"{key}: need 3 positive (t, h, w) values, got {value}")
        check_range("mlp_ratio", self.mlp_ratio, 0, 64)
        for key in ("dropout", "attention_dropout", "drop_path"):
            check_range(key, getattr(self, key), -1e-12, 0.999)
        tl = self.tokenlearner
        if tl.enabled and tl.placement < 1.0:
            raise ConfigError(
                "tokenlearner.placement: Video Swin takes TokenLearner only on its output (1.0): "
                "window attention and patch merging need the full token grid"
            )
        if self.tome.enabled:
            raise ConfigError(
                "tome.enabled: token merging does not apply to Video Swin (window attention needs "
                "the full grid); use a ViViT encoder"
            )
        if self.lsa and self.v2:
            raise ConfigError(
                "lsa: Swin V2's learned logit scale already is a per-head temperature; "
                "use lsa with v2=false"
            )


@dataclass
class VideoSwinMiniSettings(VideoSwinSettings):
    """Mini Video Swin for tests and the sample corpus (64-128 px, 8-16 frames): not published."""

    embed_dim: int = 32
    depths: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    num_heads: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    window_size: tuple[int, int, int] = (4, 4, 4)
    drop_path: float = 0.1
    # No official checkpoint to agree with: index the bias exactly when the window shrinks.
    shrunk_window_bias: Literal["reference", "exact"] = "exact"


@dataclass
class VideoSwinSmallSettings(VideoSwinSettings):
    """Video Swin-S as published (`swin_small_patch244_window877_kinetics400_1k.py`)."""

    depths: list[int] = field(default_factory=lambda: [2, 2, 18, 2])  # drop_path 0.1 as Swin-T


@dataclass
class VideoSwinBaseSettings(VideoSwinSettings):
    """Video Swin-B as published (`swin_base_patch244_window877_kinetics400_1k.py`)."""

    embed_dim: int = 128
    depths: list[int] = field(default_factory=lambda: [2, 2, 18, 2])
    num_heads: list[int] = field(default_factory=lambda: [4, 8, 16, 32])
    drop_path: float = 0.3


# --- ViViT (scenic projects/vivit) -------------------------------------------------------------


@dataclass
class ViViTSettings(EncoderSettings):
    """ViViT-B/16x2 joint space-time (scenic `ViViT` with spacetime attention; HF `VivitModel`)."""

    frames: int = 32  # the position embeddings are learned for this many frames...
    size: int = 224  # ...at this size, so both must be > 0 (frames are resampled to them)
    tubelet: tuple[int, int, int] = (2, 16, 16)  # (t, h, w) of the tubelet embedding
    hidden_dim: int = 768  # D, the token width
    num_layers: int = 12  # blocks (of the spatial encoder, for the factorised model)
    num_heads: int = 12  # attention heads
    mlp_dim: int = 3072  # MLP hidden width
    qkv_bias: bool = True  # bias on the q, k, v projections (Flax Dense default)
    pool: Literal["cls", "gap"] = (
        "cls"  # classifier 'token' (class token) or 'gap' (mean of tokens)
    )
    dropout: float = 0.0  # dropout after embeddings, attention and MLP (dropout_rate)
    attention_dropout: float = 0.0  # dropout on attention weights
    drop_path: float = 0.0  # stochastic depth, linear from 0 to this over the blocks (scenic)
    mean: tuple[float, float, float] = SIGNED_UNIT  # per-channel mean of 0-255 RGB input
    std: tuple[float, float, float] = SIGNED_UNIT  # per-channel std of 0-255 RGB input

    def validate(self) -> None:
        super().validate()
        _check_norm(self.mean, self.std)
        if self.frames < 1 or self.size < 1:
            raise ConfigError(
                f"frames: ViViT learns position embeddings for a fixed clip: frames and size must "
                f"be > 0, got frames={self.frames}, size={self.size}"
            )
        if len(self.tubelet) != 3 or min(self.tubelet) < 1:
            raise ConfigError(f"tubelet: need 3 positive (t, h, w) values, got {self.tubelet}")
        t, p = self.tubelet[0], self.tubelet[1:]
        if self.frames % t or self.size % p[0] or self.size % p[1]:
            raise ConfigError(
                f"tubelet: {self.tubelet} must divide frames x size x size "
                f"({self.frames} x {self.size} x {self.size})"
            )
        check_range("num_layers", self.num_layers, 0, 1000)
        check_range("num_heads", self.num_heads, 0, 1000)
        check_range("mlp_dim", self.mlp_dim, 0, 1 << 20)
        if self.hidden_dim % self.num_heads:
            raise ConfigError(
                f"num_heads: {self.num_heads} does not divide hidden_dim {self.hidden_dim}"
            )
        for key in ("dropout", "attention_dropout", "drop_path"):
            check_range(key, getattr(self, key), -1e-12, 0.999)
        if self.tokenlearner.enabled and self.pool == "cls":
            raise ConfigError(
                "pool: TokenLearner pools the token map per frame and scenic's EncoderMod has no "
                "class token; use pool=gap with tokenlearner"
            )
        if self.spt and (self.tubelet[1] < 2 or self.tubelet[2] < 2):
            raise ConfigError(
                f"spt: shifting by half a patch needs patches >= 2, got {self.tubelet}"
            )

    @property
    def grid(self) -> tuple[int, int, int]:
        """(t, h, w) tokens of one clip after the tubelet embedding."""
        t, ph, pw = self.tubelet
        return self.frames // t, self.size // ph, self.size // pw


@dataclass
class ViViTMiniSettings(ViViTSettings):
    """Mini joint ViViT for tests and the sample corpus: 8 frames at 64 px -> 4 x 8 x 8 tokens."""

    frames: int = 8
    size: int = 64
    tubelet: tuple[int, int, int] = (2, 8, 8)
    hidden_dim: int = 128
    num_layers: int = 4
    num_heads: int = 4
    mlp_dim: int = 256
    pool: Literal["cls", "gap"] = "gap"


@dataclass
class ViViTFactorisedSettings(ViViTSettings):
    """ViViT-B factorised encoder (model 2, scenic `SpaceTimeViViT`): spatial then temporal."""

    temporal_layers: int = 4  # blocks of the temporal encoder (ViViT-B FE: 12 spatial + 4)

    def validate(self) -> None:
        super().validate()
        check_range("temporal_layers", self.temporal_layers, 0, 1000)
        if self.tome.enabled and self.tome.scope == "clip":
            raise ConfigError(
                "tome.scope: the factorised encoder merges in its spatial encoder, which sees "
                "one frame at a time; use scope=frame"
            )
        if self.lsa and self.grid[0] + (self.pool == "cls") == 2:
            # Legal, but LSA's diagonal mask leaves each of the 2 queries one key: a softmax over
            # one element is 1 whatever the scale, so the temporal temperature never learns.
            log.warning(
                "lsa: the temporal encoder sees 2 tokens (frames / tubelet[0] + class token), so "
                "its learned temperature gets no gradient; use more frames or pool=cls"
            )


@dataclass
class ViViTFactorisedMiniSettings(ViViTFactorisedSettings):
    """Mini factorised ViViT for tests and the sample corpus (same sizes as the joint mini)."""

    frames: int = 8
    size: int = 64
    tubelet: tuple[int, int, int] = (2, 8, 8)
    hidden_dim: int = 128
    num_layers: int = 4
    num_heads: int = 4
    mlp_dim: int = 256
    temporal_layers: int = 2
    pool: Literal["cls", "gap"] = "gap"


# --- S3D adapter (pipeline/s3d.py, methods.md 8) ----------------------------------------------


@dataclass
class S3DSettings(EncoderSettings):
    """Today's prep-time S3D (Mixed_5c) behind the same interface."""

    variant: Literal["auto", "s3dg_howto100m", "torchvision"] = "auto"  # auto: from the weights
    # The normalisation belongs to the variant (pipeline.s3d.S3D_VARIANTS), so it has no field.

    def validate(self) -> None:
        super().validate()
        tl = self.tokenlearner
        if tl.enabled and tl.placement < 1.0:
            raise ConfigError(
                "tokenlearner.placement: S3D is a convolutional trunk; TokenLearner applies only "
                "to its Mixed_5c map (placement 1.0)"
            )
        for key in ("tome", "spt", "lsa"):
            on = self.tome.enabled if key == "tome" else getattr(self, key)
            if on:
                raise ConfigError(
                    f"{key}{'.enabled' if key == 'tome' else ''}: S3D has no attention or patch "
                    "tokens; this option applies to Video Swin / ViViT encoders"
                )
