"""S3D / S3D-G video trunk (Mixed_5c features) with a loader for both public checkpoint layouts.

Shape legend: B batch, C channels, T time (frames), H x W space, D width (1024 at Mixed_5c).

One model class covers the two public variants (methods.md 8.1-8.4):

* ``s3dg_howto100m``: MIL-NCE HowTo100M S3D-G (``antoine77340/S3D_HowTo100M/s3dg.py``):
  space-to-depth stem with a non-separable 2x4x4 conv, feature gating, BatchNorm eps 1e-5,
  TF-"SAME" max-pools, input RGB in [0, 1].
* ``torchvision``: ``torchvision.models.video.s3d`` (Kinetics-400): separable 7x7x7 stride-2 stem,
  no gating, BatchNorm eps 1e-3, explicit max-pool padding, Kinetics mean/std normalisation.

Parameters use the HowTo100M names as the canonical naming; the torchvision stem becomes a
separable ``conv1`` (``conv1.conv1`` [64, 3, 1, 7, 7] + ``conv1.conv2`` [64, 64, 7, 1, 1]).
``load_s3d`` reads either public layout (auto-detected from the keys) into that naming, and
``s3d_state_dict_to_layout`` exports it back. Feature extraction (uint8 clips -> pooled Mixed_5c,
and the fused inference graph prep runs) lives in ``pipeline.s3d_extract``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.io import file_sha256

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class S3DConfig:
    """Architectural differences between the public S3D variants (methods.md 8.4)."""

    stem: Literal["space_to_depth", "separable"]  # HowTo100M S3D-G vs torchvision separable 7x7x7
    gating: bool  # S3D-G self-gating after Conv_2c and on every Inception branch (8.1)
    bn_eps: float  # 1e-5 (PyTorch default, HowTo100M) vs 1e-3 (torchvision)
    tf_same_pool: bool  # TF-SAME max-pool padding (HowTo100M) vs torchvision explicit padding
    input_mean: tuple[float, float, float] | None  # None -> input in [0, 1] (HowTo100M)
    input_std: tuple[float, float, float] | None  # None together with input_mean


S3D_VARIANTS: dict[str, S3DConfig] = {
    # methods.md 8.2: `s3dg.py` always gates (the bool is overwritten by the module), eps 1e-5.
    "s3dg_howto100m": S3DConfig(
        stem="space_to_depth",
        gating=True,
        bn_eps=1e-5,
        tf_same_pool=True,
        input_mean=None,
        input_std=None,
    ),
    # methods.md 8.3: Kinetics-400 preset `VideoClassification` mean/std.
    "torchvision": S3DConfig(
        stem="separable",
        gating=False,
        bn_eps=1e-3,
        tf_same_pool=False,
        input_mean=(0.43216, 0.394666, 0.37645),
        input_std=(0.22803, 0.22145, 0.216989),
    ),
}

MIXED_5C_DIM = 1024

# Inception channel arguments (b0, b1a, b1b, b2a, b2b, b3), methods.md 8.2 table.
_INCEPTION_CHANNELS: dict[str, tuple[int, int, int, int, int, int]] = {
    "mixed_3b": (64, 96, 128, 16, 32, 32),
    "mixed_3c": (128, 128, 192, 32, 96, 64),
    "mixed_4b": (192, 96, 208, 16, 48, 64),
    "mixed_4c": (160, 112, 224, 24, 64, 64),
    "mixed_4d": (128, 128, 256, 24, 64, 64),
    "mixed_4e": (112, 144, 288, 32, 64, 64),
    "mixed_4f": (256, 160, 320, 32, 128, 128),
    "mixed_5b": (256, 160, 320, 32, 128, 128),
    "mixed_5c": (384, 192, 384, 48, 128, 128),
}
INCEPTION_BLOCKS: tuple[str, ...] = tuple(_INCEPTION_CHANNELS)

_Triple = tuple[int, int, int]


class SelfGating(nn.Module):
    """S3D-G feature gating ``y = sigmoid(W mean_{t,h,w}(x) + b) * x`` (methods.md 8.1).

    x [B, C, T, H, W] -> [B, C, T, H, W].
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        weights = torch.sigmoid(self.fc(x.mean(dim=(2, 3, 4))))  # [B, C]
        return weights[:, :, None, None, None] * x


class STConv3D(nn.Module):
    """Conv3d (no bias) + BN + ReLU; separable = 1xkxk then k_tx1x1, each with BN + ReLU (8.1).

    Attribute names (conv1, bn1, conv2, bn2) are the HowTo100M state-dict names (8.2).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: _Triple,
        stride: _Triple = (1, 1, 1),
        padding: _Triple = (0, 0, 0),
        separable: bool = False,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.separable = separable
        if separable:
            kt, kh, kw = kernel
            st, sh, sw = stride
            pt, ph, pw = padding
            self.conv1 = nn.Conv3d(
                in_channels, out_channels, (1, kh, kw), (1, sh, sw), (0, ph, pw), bias=False
            )
            self.bn1 = nn.BatchNorm3d(out_channels, eps=bn_eps)
            self.conv2 = nn.Conv3d(
                out_channels, out_channels, (kt, 1, 1), (st, 1, 1), (pt, 0, 0), bias=False
            )
            self.bn2 = nn.BatchNorm3d(out_channels, eps=bn_eps)
        else:
            self.conv1 = nn.Conv3d(in_channels, out_channels, kernel, stride, padding, bias=False)
            self.bn1 = nn.BatchNorm3d(out_channels, eps=bn_eps)

    def forward(self, x: Tensor) -> Tensor:
        # In place: BN output is a fresh tensor, and this halves peak memory at batch 32.
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        if self.separable:
            x = F.relu(self.bn2(self.conv2(x)), inplace=True)
        return x


class MaxPool3dS3D(nn.Module):
    """Max-pool with either convention (methods.md 8.2/8.3).

    tf_same: ``MaxPool3dTFPadding`` of s3dg.py: zero-pad ``max(k - s, 0)`` split floor-first /
    rest-last on every axis (independent of the input size), then ``ceil_mode=True``.
    Otherwise torchvision's plain ``nn.MaxPool3d(kernel, stride, padding)`` (implicit -inf pad).
    """

    def __init__(self, kernel: _Triple, stride: _Triple, padding: _Triple, tf_same: bool) -> None:
        super().__init__()
        self.kernel, self.stride, self.padding, self.tf_same = kernel, stride, padding, tf_same
        pads: list[int] = []
        # F.pad wants (W_left, W_right, H_top, H_bottom, T_front, T_back): walk axes in reverse.
        for k, s in reversed(list(zip(kernel, stride, strict=True))):
            total = max(k - s, 0)
            pads += [total // 2, total - total // 2]
        self.tf_pads = tuple(pads)

    def forward(self, x: Tensor) -> Tensor:
        if self.tf_same:
            # Zero (not -inf) pad as in s3dg.py; inputs are post-ReLU so both agree anyway.
            x = F.pad(x, self.tf_pads, value=0.0)
            return F.max_pool3d(x, self.kernel, self.stride, ceil_mode=True)
        return F.max_pool3d(x, self.kernel, self.stride, self.padding)


class InceptionBlock(nn.Module):
    """Separable Inception block; branch outputs gated (S3D-G) before concatenation.

    x [B, C_in, T, H, W] -> [B, b0 + b1b + b2b + b3, T, H, W].
    """

    def __init__(
        self, in_channels: int, channels: Sequence[int], gating: bool, bn_eps: float
    ) -> None:
        super().__init__()
        b0, b1a, b1b, b2a, b2b, b3 = channels
        sep = {"kernel": (3, 3, 3), "padding": (1, 1, 1), "separable": True, "bn_eps": bn_eps}
        self.conv_b0 = STConv3D(in_channels, b0, (1, 1, 1), bn_eps=bn_eps)
        self.conv_b1_a = STConv3D(in_channels, b1a, (1, 1, 1), bn_eps=bn_eps)
        self.conv_b1_b = STConv3D(b1a, b1b, **sep)
        self.conv_b2_a = STConv3D(in_channels, b2a, (1, 1, 1), bn_eps=bn_eps)
        self.conv_b2_b = STConv3D(b2a, b2b, **sep)
        # Both public variants use a plain stride-1 3x3x3 pool here (padding 1, implicit -inf).
        self.maxpool_b3 = nn.MaxPool3d((3, 3, 3), stride=1, padding=1)
        self.conv_b3_b = STConv3D(in_channels, b3, (1, 1, 1), bn_eps=bn_eps)
        self.gating = gating
        if gating:
            self.gating_b0 = SelfGating(b0)
            self.gating_b1 = SelfGating(b1b)
            self.gating_b2 = SelfGating(b2b)
            self.gating_b3 = SelfGating(b3)
        self.out_channels = b0 + b1b + b2b + b3

    def forward(self, x: Tensor) -> Tensor:
        b0 = self.conv_b0(x)
        b1 = self.conv_b1_b(self.conv_b1_a(x))
        b2 = self.conv_b2_b(self.conv_b2_a(x))
        b3 = self.conv_b3_b(self.maxpool_b3(x))
        if self.gating:
            b0, b1 = self.gating_b0(b0), self.gating_b1(b1)
            b2, b3 = self.gating_b2(b2), self.gating_b3(b3)
        return torch.cat((b0, b1, b2, b3), dim=1)


def space_to_depth(x: Tensor) -> Tensor:
    """[B, C, T, H, W] -> [B, 8C, T/2, H/2, W/2], channel order (dt, dh, dw, c) as in s3dg.py."""
    b, c, t, h, w = x.shape
    x = x.view(b, c, t // 2, 2, h // 2, 2, w // 2, 2)
    x = x.permute(0, 3, 5, 7, 1, 2, 4, 6)  # [B, dt, dh, dw, C, T/2, H/2, W/2]
    return x.reshape(b, 8 * c, t // 2, h // 2, w // 2)


class S3D(nn.Module):
    """S3D / S3D-G trunk up to Mixed_5c. Parameter names follow s3dg.py (methods.md 8.2)."""

    def __init__(self, cfg: S3DConfig) -> None:
        super().__init__()
        if cfg.stem not in ("space_to_depth", "separable"):
            raise ValueError(f"unknown S3D stem {cfg.stem!r}")
        if (cfg.input_mean is None) != (cfg.input_std is None):
            raise ValueError("S3DConfig.input_mean and input_std must both be set or both None")
        self.cfg = cfg
        eps, tf = cfg.bn_eps, cfg.tf_same_pool
        if cfg.stem == "space_to_depth":
            # 24 = 8 * 3 channels after space-to-depth; output cropped by one in forward.
            self.conv1 = STConv3D(24, 64, (2, 4, 4), padding=(1, 2, 2), bn_eps=eps)
        else:
            self.conv1 = STConv3D(
                3, 64, (7, 7, 7), (2, 2, 2), (3, 3, 3), separable=True, bn_eps=eps
            )
        self.maxpool_2a = MaxPool3dS3D((1, 3, 3), (1, 2, 2), (0, 1, 1), tf)
        self.conv_2b = STConv3D(64, 64, (1, 1, 1), bn_eps=eps)
        self.conv_2c = STConv3D(64, 192, (3, 3, 3), padding=(1, 1, 1), separable=True, bn_eps=eps)
        if cfg.gating:
            self.gating = SelfGating(192)
        self.maxpool_3a = MaxPool3dS3D((1, 3, 3), (1, 2, 2), (0, 1, 1), tf)
        self.maxpool_4a = MaxPool3dS3D((3, 3, 3), (2, 2, 2), (1, 1, 1), tf)
        self.maxpool_5a = MaxPool3dS3D((2, 2, 2), (2, 2, 2), (0, 0, 0), tf)
        in_channels = 192
        for name, channels in _INCEPTION_CHANNELS.items():
            block = InceptionBlock(in_channels, channels, cfg.gating, eps)
            self.add_module(name, block)
            in_channels = block.out_channels

    def forward(self, x: Tensor) -> Tensor:
        """x [B, 3, T, H, W] normalised input -> Mixed_5c activations [B, 1024, T', H', W'].

        T', H', W' are about T/8, H/32, W/32 (4x7x7 for 32x224x224). Raises ValueError on a
        wrong rank / channel count, or odd T/H/W for the space-to-depth stem.
        """
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"S3D expects [B, 3, T, H, W], got {tuple(x.shape)}")
        if self.cfg.stem == "space_to_depth":
            if any(d % 2 for d in x.shape[2:]):
                raise ValueError(f"space-to-depth stem needs even T, H, W, got {tuple(x.shape)}")
            x = self.conv1(space_to_depth(x))
            # Crop replicates TF 'SAME' for the even 2x4x4 kernel (s3dg.py forward).
            x = x[:, :, 1:, 1:, 1:]
        else:
            x = self.conv1(x)
        x = self.conv_2b(self.maxpool_2a(x))
        x = self.conv_2c(x)
        if self.cfg.gating:
            x = self.gating(x)
        x = self.maxpool_3a(x)
        for name in INCEPTION_BLOCKS:
            if name == "mixed_4b":
                x = self.maxpool_4a(x)
            elif name == "mixed_5b":
                x = self.maxpool_5a(x)
            x = getattr(self, name)(x)
        return x


def init_s3d_weights(model: S3D) -> None:
    """Deterministic-under-seed random init: He-normal convs keep activations O(1) to Mixed_5c."""
    for module in model.modules():
        if isinstance(module, nn.Conv3d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm3d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.01)
            nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------------------------
# Checkpoints: the two public layouts (methods.md 8.2 / 8.3) mapped onto the canonical names.
# --------------------------------------------------------------------------------------------


class S3DCheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the S3D trunk; the message names the file."""


Layout = Literal["howto100m", "torchvision"]
LAYOUTS: tuple[str, ...] = ("howto100m", "torchvision")
# Heads we never need for Mixed_5c features: HowTo100M fc (512) + text module, torchvision fc.
_HEAD_PREFIXES = ("fc.", "text_module.", "classifier.")

# methods.md 8.4: STConv3D attributes -> torchvision Sequential indices.
_TV_SEPARABLE = {"conv1": "0.0", "bn1": "0.1", "conv2": "1.0", "bn2": "1.1"}
_TV_PLAIN = {"conv1": "0", "bn1": "1"}
_TV_STEM = {
    "conv1": ("features.0", _TV_SEPARABLE),
    "conv_2b": ("features.2", _TV_PLAIN),
    "conv_2c": ("features.3", _TV_SEPARABLE),
}
# features.1/4/7/13 are the parameter-free max-pools.
_TV_INCEPTION = dict(zip(INCEPTION_BLOCKS, (5, 6, 8, 9, 10, 11, 12, 14, 15), strict=True))
_TV_BRANCH = {
    "conv_b0": ("branch0", _TV_PLAIN),
    "conv_b1_a": ("branch1.0", _TV_PLAIN),
    "conv_b1_b": ("branch1.1", _TV_SEPARABLE),
    "conv_b2_a": ("branch2.0", _TV_PLAIN),
    "conv_b2_b": ("branch2.1", _TV_SEPARABLE),
    "conv_b3_b": ("branch3.1", _TV_PLAIN),
}
_TV_CLASSES = 400
_HOWTO_EMBED_DIM = 512
_LISTED = 20  # names shown per category in an error message


def torchvision_name(canonical: str) -> str | None:
    """Canonical (HowTo100M) parameter name -> torchvision name, or None (gating: no counterpart).

    Only meaningful for the separable-stem, ungated architecture.
    """
    parts = canonical.split(".")
    if parts[0] in _TV_STEM:
        prefix, table = _TV_STEM[parts[0]]
        rest = parts[1:]
    elif parts[0] in _TV_INCEPTION and len(parts) > 2 and parts[1] in _TV_BRANCH:
        branch, table = _TV_BRANCH[parts[1]]
        prefix = f"features.{_TV_INCEPTION[parts[0]]}.{branch}"
        rest = parts[2:]
    else:
        return None
    if rest[0] not in table:
        return None
    return ".".join([prefix, table[rest[0]], *rest[1:]])


def s3d_state_dict_to_layout(
    model: S3D, layout: Layout, include_head: bool = True
) -> dict[str, Tensor]:
    """Export the trunk weights under a public layout's exact key names and shapes.

    include_head adds zero placeholders for the public head (HowTo100M ``fc`` [512, 1024];
    torchvision ``classifier.1`` [400, 1024, 1, 1, 1]) so the key set mirrors the public files;
    the 66250x300 HowTo100M ``text_module`` is never written. Raises ValueError for an unknown
    layout, or torchvision layout of a space-to-depth / gated model (methods.md 8.4: no mapping).
    """
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    if layout == "howto100m":
        out = state
        if include_head:
            out["fc.weight"] = torch.zeros(_HOWTO_EMBED_DIM, MIXED_5C_DIM)
            out["fc.bias"] = torch.zeros(_HOWTO_EMBED_DIM)
        return out
    if layout != "torchvision":
        raise ValueError(f"unknown S3D layout {layout!r}; expected one of {LAYOUTS}")
    if model.cfg.stem != "separable" or model.cfg.gating:
        raise ValueError("only the separable-stem, ungated S3D has a torchvision layout (8.4)")
    out = {}
    for key, value in state.items():
        tv_key = torchvision_name(key)
        if tv_key is None:  # unreachable for this architecture; guards a future rename
            raise ValueError(f"no torchvision name for S3D parameter {key!r}")
        out[tv_key] = value
    if include_head:
        out["classifier.1.weight"] = torch.zeros(_TV_CLASSES, MIXED_5C_DIM, 1, 1, 1)
        out["classifier.1.bias"] = torch.zeros(_TV_CLASSES)
    return out


def _read_state_dict(path: str) -> dict[str, Tensor]:
    """Read a .safetensors or torch (weights_only) file into a flat {name: tensor} dict."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            obj = load_file(path)
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickled code refused by weights_only, ...
        raise S3DCheckpointError(
            f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    # Training checkpoints (e.g. the MIL-NCE trainer) wrap the weights and add a DDP prefix.
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise S3DCheckpointError(f"{path}: not a state dict of tensors ({type(obj).__name__})")
    if all(k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj


def _detect_variant(state: dict[str, Tensor], layout: str, path: str) -> str:
    """Pick the variant from the keys: torchvision layout, or stem/gating of HowTo-style keys."""
    if layout == "torchvision":
        return "torchvision"
    stem_weight = state.get("conv1.conv1.weight")
    if stem_weight is None:
        raise S3DCheckpointError(
            f"{path}: cannot detect the S3D layout: no 'features.*' (torchvision) keys and no "
            f"'conv1.conv1.weight' (HowTo100M); first keys: {sorted(state)[:5]}"
        )
    s2d = stem_weight.ndim == 5 and stem_weight.shape[1] == 24
    stem = "space_to_depth" if s2d else "separable"
    gating = any(k.startswith("gating.") or ".gating_b" in k for k in state)
    for name, cfg in S3D_VARIANTS.items():
        if cfg.stem == stem and cfg.gating == gating:
            return name
    raise S3DCheckpointError(
        f"{path}: no known S3D variant has stem={stem} and gating={gating}; pass variant="
        f"{tuple(S3D_VARIANTS)}"
    )


def _listing(label: str, names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    more = f", ... (+{len(names) - _LISTED} more)" if len(names) > _LISTED else ""
    return f"{label} ({len(names)}): [{shown}{more}]"


def _map_to_canonical(
    state: dict[str, Tensor], layout: str, model: S3D, path: str, variant: str
) -> dict[str, Tensor]:
    """Rename to canonical keys, drop head weights, and check keys and shapes against the model."""
    expected = model.state_dict()
    to_canonical = {torchvision_name(k): k for k in expected} if layout == "torchvision" else {}
    mapped: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for key, value in state.items():
        if key.startswith(_HEAD_PREFIXES):
            continue
        canonical = to_canonical.get(key) if layout == "torchvision" else key
        if canonical is None or canonical not in expected:
            unexpected.append(key)
        else:
            mapped[canonical] = value

    def file_name(canonical: str) -> str:
        tv_key = torchvision_name(canonical) if layout == "torchvision" else None
        return tv_key or canonical

    # num_batches_tracked only drives BN momentum in training; older exports may omit it.
    missing = [
        file_name(k) for k in expected if k not in mapped and not k.endswith("num_batches_tracked")
    ]
    mismatched = [
        f"{file_name(k)}: file {list(v.shape)} vs model {list(expected[k].shape)}"
        for k, v in mapped.items()
        if v.shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        problems = [
            _listing(label, names)
            for label, names in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", mismatched),
            )
            if names
        ]
        raise S3DCheckpointError(
            f"{path}: checkpoint does not fit S3D variant {variant!r} ({layout} layout): "
            + "; ".join(problems)
        )
    return mapped


def _build_s3d(variant: str, seed: int) -> S3D:
    """Build with a seeded init, without disturbing the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = S3D(S3D_VARIANTS[variant])
        init_s3d_weights(model)
    return model


def load_s3d(path: str | None, variant: str = "auto", seed: int = 0) -> tuple[S3D, dict]:
    """Build an S3D and load a public checkpoint (either layout), or random-init it.

    path: .pth/.pt (torch.load weights_only=True) or .safetensors, HowTo100M s3dg keys or
    torchvision keys; variant "auto" detects layout and variant from the keys. Head and text
    weights are ignored. path=None -> deterministic random init from ``seed`` and a loud warning.
    Returns (model in eval mode, info {"variant", "layout", "weights" (sha256 of the file or
    "random-init"), "path", "seed"}). Raises FileNotFoundError, ValueError (unknown variant) or
    S3DCheckpointError (unreadable file; missing / unexpected trunk keys; shape mismatches).
    """
    if variant != "auto" and variant not in S3D_VARIANTS:
        raise ValueError(
            f"unknown S3D variant {variant!r}; expected 'auto' or {tuple(S3D_VARIANTS)}"
        )
    if path is None:
        name = "s3dg_howto100m" if variant == "auto" else variant
        banner = "!" * 78
        logger.warning(
            "\n%s\nS3D (%s) is RANDOMLY INITIALISED (seed=%d): no checkpoint path was given.\n"
            "Its features are deterministic but MEANINGLESS for real use: fine for tests and\n"
            "smoke runs only. Pass the HowTo100M s3d_howto100m.pth or torchvision s3d weights.\n%s",
            banner, name, seed, banner,
        )  # fmt: skip
        info = {"variant": name, "layout": None, "weights": "random-init", "path": None}
        return _build_s3d(name, seed).eval(), {**info, "seed": seed}
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"S3D checkpoint not found: {path}")
    state = _read_state_dict(path)
    layout = "torchvision" if any(k.startswith("features.") for k in state) else "howto100m"
    name = _detect_variant(state, layout, path) if variant == "auto" else variant
    model = _build_s3d(name, seed)
    model.load_state_dict(_map_to_canonical(state, layout, model, path, name), strict=False)
    info = {"variant": name, "layout": layout, "weights": file_sha256(path), "path": path}
    return model.eval(), {**info, "seed": seed}
