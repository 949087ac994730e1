"""S3D feature extraction: uint8 clips -> pooled Mixed_5c features, fast on a CPU, fed on a GPU.

Shape legend: B batch (clips), T frames, H x W space, C channels, D = 1024 (Mixed_5c width).

Two engines compute the same function, the trunk of `pipeline.s3d.S3D` (methods.md 8.1-8.4):

* ``reference``: the `S3D` modules as written (Conv3d -> BatchNorm3d -> ReLU, gated branches
  concatenated), contiguous NCDHW tensors: prep's computation before issue 12, kept so that a
  benchmark measures before vs after in one run.
* ``fused`` (default): the same weights arranged for inference only.

  - BatchNorm folded into each convolution (eval mode: BN is a per-channel affine map, so
    ``bn(conv(x, w)) = conv(x, w * s) + (beta - mean * s)``, ``s = gamma / sqrt(var + eps)``);
  - ReLU applied by oneDNN as a post-op of the convolution (one pass over the output, not three);
  - channels_last_3d (NDHWC) throughout: oneDNN's native layout (no reorder around each
    convolution);
  - max-pools as three 1-D max-pools over strided views (`SeparableMaxPool3d`): exact, and no
    index tensor or padded copy as aten's max_pool3d + F.pad make;
  - each Inception branch gated straight into its slice of the block output (no torch.cat);
  - the uint8 clips are scaled and rearranged by space-to-depth in two passes.

  torch.profiler, 30 x 224^2 clips: the reference spends 47 % of its time in convolutions, 19 %
  in NCDHW max-pools and 15 % in BatchNorm + ReLU. Measured on 1 thread (CPU seconds per clip,
  batch 8, AMD EPYC, a loaded machine): reference 1.67, fused with aten pools 0.71, fused 0.62
  (2.7x). benchmarks/bench_s3d.py prints the figures for the machine it runs on. The result
  equals the reference up to float rounding (about 3e-7 relative; tests hold it under 1e-5).
  Also tried: torch.compile (inductor, freezing) of the channels-last model: about 20 % less CPU
  per clip than fused before the separable pools, but 1.5-2.5 minutes of compilation per
  process on 2 cores, more than it saves on a laptop-sized run; not used.

Precision: ``fp32`` is exact up to rounding and the CPU default. ``bf16`` (GPU default; on a CPU
with avx512_bf16 about 1.9x faster again) changes features by about 3e-3 relative. ``fp16`` is
CUDA only. ``auto`` picks bf16 on CUDA and fp32 elsewhere. bench_s3d.py prints each difference.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.s3d import (
    INCEPTION_BLOCKS,
    S3D,
    InceptionBlock,
    MaxPool3dS3D,
    S3DConfig,
    SelfGating,
    STConv3D,
)

logger = logging.getLogger(__name__)

Engine = Literal["fused", "reference"]
ENGINES: tuple[str, ...] = ("fused", "reference")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_CL = torch.channels_last_3d


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """ "auto" -> bf16 on CUDA, fp32 elsewhere; refuses fp16 off CUDA (no fast CPU kernels)."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"unknown S3D precision {precision!r}; expected one of {PRECISIONS}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"fp16 S3D needs a CUDA device, not {device}; use bf16 or fp32")
    if precision == "bf16" and device.type == "cpu" and not cpu_bf16_supported():
        # oneDNN's bf16 convolution needs AVX-512 (BW/VL/DQ) or AVX-NE-CONVERT; without them
        # torch fails inside the first convolution, after the videos were decoded.
        raise ValueError(
            "bf16 S3D on this CPU: no bf16 convolution kernels (needs AVX-512); use fp32"
        )
    return precision


@functools.cache
def cpu_bf16_supported() -> bool:
    """Whether oneDNN has bf16 convolution kernels for this CPU (True if torch cannot say)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True


@functools.cache
def _onednn_pointwise_available() -> bool:
    """Whether oneDNN's fused convolution + post-op kernel is in this torch build."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._convolution_pointwise.default  # noqa: B018 (probe only)
    except (AttributeError, RuntimeError):
        return False
    return True


class FusedConv(nn.Module):
    """Conv3d (no bias) + eval-mode BatchNorm3d + ReLU as one biased convolution.

    x [B, C_in, T, H, W] (channels_last_3d) -> [B, C_out, T', H', W'] (channels_last_3d).
    """

    def __init__(self, conv: nn.Conv3d, bn: nn.BatchNorm3d, dtype: torch.dtype) -> None:
        super().__init__()
        with torch.no_grad():  # folded in float32 (one rounding per weight), then cast
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            weight = conv.weight.contiguous(memory_format=_CL) * scale.view(-1, 1, 1, 1, 1)
            bias = bn.bias - bn.running_mean * scale
        self.register_buffer("weight", weight.to(dtype, memory_format=_CL))
        self.register_buffer("bias", bias.to(dtype))
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.onednn = _onednn_pointwise_available()

    def forward(self, x: Tensor) -> Tensor:
        if self.onednn and x.device.type == "cpu":
            return torch.ops.mkldnn._convolution_pointwise(
                x, self.weight, self.bias, self.padding, self.stride, [1, 1, 1], 1, "relu", [], ""
            )
        return F.relu(F.conv3d(x, self.weight, self.bias, self.stride, self.padding), inplace=True)


class FusedUnit(nn.Module):
    """`STConv3D` (one conv, or the separable 1xkxk then k_tx1x1 pair) made of FusedConv."""

    def __init__(self, unit: STConv3D, dtype: torch.dtype) -> None:
        super().__init__()
        convs = [FusedConv(unit.conv1, unit.bn1, dtype)]
        if unit.separable:
            convs.append(FusedConv(unit.conv2, unit.bn2, dtype))
        self.convs = nn.ModuleList(convs)

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = conv(x)
        return x


class SeparableMaxPool3d(nn.Module):
    """A max-pool of the S3D trunk as three 1-D max-pools (W, then H, then T): max is exact, so
    the result is bit-identical, and channels_last_3d stays channels_last_3d.

    Covers both conventions of `MaxPool3dS3D` (methods.md 8.2/8.3) and the Inception branch's
    ``nn.MaxPool3d(3, 1, 1)``. TF-"SAME" pads zeros at the end; every input here comes out of a
    ReLU (or a sigmoid gate times one), so it is >= 0 and a zero pad never wins a window that
    holds a real value, which every window does: the padded max equals the max over the window's
    real part. aten's max_pool3d (with indices, plus F.pad's copy) took ~25 % of the fused
    trunk's time; this takes about a third of that.
    x [B, C, T, H, W] -> [B, C, T', H', W'].
    """

    def __init__(self, pool: MaxPool3dS3D | nn.MaxPool3d) -> None:
        super().__init__()

        def triple(v: int | Sequence[int]) -> tuple[int, int, int]:
            return (v, v, v) if isinstance(v, int) else tuple(v)

        if isinstance(pool, MaxPool3dS3D):
            self.kernel, self.stride = triple(pool.kernel), triple(pool.stride)
            padding, ceil, self.tf_same = pool.padding, pool.tf_same, pool.tf_same
        else:
            self.kernel, self.stride = triple(pool.kernel_size), triple(pool.stride)
            padding, ceil, self.tf_same = pool.padding, pool.ceil_mode, False
        if self.tf_same:  # zeros after the data: max(k - s, 0) cells, floor half first (= 0 here)
            pads = [max(k - s, 0) for k, s in zip(self.kernel, self.stride, strict=True)]
            if any(p // 2 for p in pads):
                raise ValueError(f"TF-SAME pads before the data are not supported: {pads}")
            self.front, self.back = (0, 0, 0), tuple(pads)
        else:  # implicit -inf padding on both sides
            self.front = self.back = triple(padding)
        self.ceil = bool(ceil)

    def forward(self, x: Tensor) -> Tensor:
        for axis in (2, 1, 0):  # W, H, T
            if self.kernel[axis] > 1 or self.stride[axis] > 1:
                x = self._max1d(x, axis + 2)
        return x

    def _max1d(self, x: Tensor, dim: int) -> Tensor:
        """1-D max-pool along `dim`: out[i] = max of x[i*s - front + j] (j < k) inside x."""
        k, s = self.kernel[dim - 2], self.stride[dim - 2]
        front, back = self.front[dim - 2], self.back[dim - 2]
        n = x.shape[dim]
        # Output length and PyTorch's ceil-mode rule (the last window starts inside the input,
        # which for TF-SAME is the zero-padded input: F.pad then max_pool3d without padding).
        span = n + front + back - k
        n_out = (-(-span // s) if self.ceil else span // s) + 1
        if self.ceil and (n_out - 1) * s >= n + (back if self.tf_same else front):
            n_out -= 1
        shape = list(x.shape)
        shape[dim] = n_out
        out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=_CL)
        # A window with no cell of x: 0 under TF-SAME's zero pad, -inf otherwise. Prefilled
        # only when some tap misses a window (never for S3D's shapes; kept for exactness).
        filled = False
        for j in sorted(range(k), key=lambda j: j != front):  # offset 0 first: reaches every i
            offset = j - front
            first = -(offset // s) if offset < 0 else 0  # first i with i*s + offset >= 0
            last = min(n_out - 1, (n - 1 - offset) // s)
            if last < first:
                continue
            index = [slice(None)] * x.ndim
            start = first * s + offset
            index[dim] = slice(start, start + (last - first) * s + 1, s)
            tap = x[tuple(index)]
            view = out.narrow(dim, first, last - first + 1)
            if not filled and (first, last) == (0, n_out - 1):
                view.copy_(tap)
            else:
                if not filled:
                    out.fill_(0.0 if self.tf_same else float("-inf"))
                torch.maximum(view, tap, out=view)
            filled = True
        return out


def _gate_into(gate: SelfGating, x: Tensor, out: Tensor) -> None:
    """`SelfGating` (methods.md 8.1) writing ``sigmoid(W mean(x) + b) * x`` into `out`."""
    weights = torch.sigmoid(gate.fc(x.mean(dim=(2, 3, 4))))  # [B, C]
    torch.mul(x, weights[:, :, None, None, None], out=out)


class FusedInception(nn.Module):
    """`InceptionBlock` whose branches are written (gated) into slices of one output tensor.

    x [B, C_in, T, H, W] -> [B, b0 + b1b + b2b + b3, T, H, W], channels_last_3d.
    """

    def __init__(self, block: InceptionBlock, dtype: torch.dtype) -> None:
        super().__init__()
        self.b0 = FusedUnit(block.conv_b0, dtype)
        self.b1 = nn.Sequential(
            FusedUnit(block.conv_b1_a, dtype), FusedUnit(block.conv_b1_b, dtype)
        )
        self.b2 = nn.Sequential(
            FusedUnit(block.conv_b2_a, dtype), FusedUnit(block.conv_b2_b, dtype)
        )
        self.pool_b3 = SeparableMaxPool3d(block.maxpool_b3)
        self.b3 = FusedUnit(block.conv_b3_b, dtype)
        gates = None
        if block.gating:
            gates = [block.gating_b0, block.gating_b1, block.gating_b2, block.gating_b3]
            gates = nn.ModuleList([copy.deepcopy(g).to(dtype) for g in gates])
        self.gates = gates
        self.out_channels = block.out_channels

    def forward(self, x: Tensor) -> Tensor:
        branches = [self.b0(x), self.b1(x), self.b2(x), self.b3(self.pool_b3(x))]
        b, _, t, h, w = branches[0].shape
        out = torch.empty(
            (b, self.out_channels, t, h, w), dtype=x.dtype, device=x.device, memory_format=_CL
        )
        start = 0
        for i, branch in enumerate(branches):
            view = out[:, start : start + branch.shape[1]]
            if self.gates is not None:
                _gate_into(self.gates[i], branch, view)
            else:
                view.copy_(branch)
            start += branch.shape[1]
        return out


def space_to_depth_channels_last(x: Tensor) -> Tensor:
    """`pipeline.s3d.space_to_depth` written once, straight into channels_last_3d.

    [B, C, T, H, W] (any layout) -> [B, 8C, T/2, H/2, W/2], channel order (dt, dh, dw, c).
    """
    b, c, t, h, w = x.shape
    x = x.permute(0, 2, 3, 4, 1).view(b, t // 2, 2, h // 2, 2, w // 2, 2, c)
    x = x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, t // 2, h // 2, w // 2, 8 * c)
    return x.permute(0, 4, 1, 2, 3)  # a channels_last_3d view


class FusedS3D(nn.Module):
    """Inference-only S3D trunk with the weights of `model` (see the module docstring).

    forward: x [B, 3, T, H, W] float, normalised as for `S3D` (any memory layout) ->
    Mixed_5c [B, 1024, T', H', W'] in ``dtype``, channels_last_3d. The source model is untouched.
    """

    def __init__(self, model: S3D, precision: str = "fp32") -> None:
        super().__init__()
        if precision not in _DTYPES:
            raise ValueError(f"FusedS3D precision must be one of {tuple(_DTYPES)}, not {precision}")
        self.dtype = _DTYPES[precision]
        self.cfg: S3DConfig = model.cfg
        src = model.eval()
        self.conv1 = FusedUnit(src.conv1, self.dtype)
        self.conv_2b = FusedUnit(src.conv_2b, self.dtype)
        self.conv_2c = FusedUnit(src.conv_2c, self.dtype)
        self.gating = copy.deepcopy(src.gating).to(self.dtype) if self.cfg.gating else None
        self.maxpool_2a = SeparableMaxPool3d(src.maxpool_2a)
        self.maxpool_3a = SeparableMaxPool3d(src.maxpool_3a)
        self.maxpool_4a = SeparableMaxPool3d(src.maxpool_4a)
        self.maxpool_5a = SeparableMaxPool3d(src.maxpool_5a)
        self.blocks = nn.ModuleDict(
            {name: FusedInception(getattr(src, name), self.dtype) for name in INCEPTION_BLOCKS}
        )
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"S3D expects [B, 3, T, H, W], got {tuple(x.shape)}")
        x = x.to(self.dtype)
        if self.cfg.stem == "space_to_depth":
            if any(d % 2 for d in x.shape[2:]):
                raise ValueError(f"space-to-depth stem needs even T, H, W, got {tuple(x.shape)}")
            # Crop replicates TF 'SAME' for the even 2x4x4 kernel, as S3D.forward (s3dg.py).
            x = self.conv1(space_to_depth_channels_last(x))[:, :, 1:, 1:, 1:]
        else:
            x = self.conv1(x.contiguous(memory_format=_CL))
        x = self.conv_2c(self.conv_2b(self.maxpool_2a(x)))
        if self.gating is not None:
            gated = torch.empty_like(x, memory_format=_CL)
            _gate_into(self.gating, x, gated)
            x = gated
        x = self.maxpool_3a(x)
        for name, block in self.blocks.items():
            if name == "mixed_4b":
                x = self.maxpool_4a(x)
            elif name == "mixed_5b":
                x = self.maxpool_5a(x)
            x = block(x)
        return x


class S3DFeatureExtractor:
    """uint8 RGB clips -> pooled Mixed_5c features (and optionally a 2-D feature map).

    Determinism: eval mode (BatchNorm running stats, no dropout), cuDNN forced to deterministic
    algorithms. On a CPU the same input with the same batch shape and thread count gives
    bit-identical output; another batch size may pick another kernel (equal up to rounding).
    """

    def __init__(
        self,
        model: S3D,
        cfg: S3DConfig,
        device: str = "cpu",
        engine: str = "fused",
        precision: str = "auto",
    ) -> None:
        """Moves ``model`` to ``device`` in eval mode; see the module docstring for the options."""
        if engine not in ENGINES:
            raise ValueError(f"unknown S3D engine {engine!r}; expected one of {ENGINES}")
        self.device = torch.device(device)
        self.engine, self.precision = engine, resolve_precision(precision, self.device)
        self.cfg = cfg
        model = model.to(self.device).eval()
        self.model: nn.Module = FusedS3D(model, self.precision) if engine == "fused" else model
        self.mean = self.std = None
        self._host: Tensor | None = None  # see host_buffer
        if cfg.input_mean is not None and cfg.input_std is not None:
            self.mean = torch.tensor(cfg.input_mean, device=self.device).view(1, 3, 1, 1, 1)
            self.std = torch.tensor(cfg.input_std, device=self.device).view(1, 3, 1, 1, 1)

    def host_buffer(self, shape: tuple[int, ...]) -> np.ndarray:
        """A uint8 host array of `shape` to stack a batch into, reused across calls.

        On CUDA it is page-locked (pinned) memory, so the copy to the device is a non-blocking
        DMA transfer; `__call__` returns only after its results are on the host, so refilling the
        buffer for the next batch never races the previous copy.
        """
        if self._host is None or tuple(self._host.shape) != tuple(shape):
            pin = self.device.type == "cuda"
            self._host = torch.empty(shape, dtype=torch.uint8, pin_memory=pin)
        return self._host.numpy()

    def describe(self) -> dict[str, str]:
        """What meta.json records about how the features were computed."""
        numerics = {
            "reference": "S3D modules as written, NCDHW",
            "fused": "BatchNorm folded into the convolutions, conv+ReLU fused (oneDNN on CPU), "
            "channels_last_3d, separable max-pools; equal to the reference up to float rounding "
            "(~3e-7 relative in fp32)",
        }[self.engine]
        if self.precision != "fp32":  # bf16/fp16: ~5e-3 relative to fp32 (bench_s3d.py)
            how = "autocast" if self.engine == "reference" else "weights and activations"
            numerics += f"; {how} in {self.precision}"
        return {
            "s3d_engine": self.engine,
            "s3d_precision": self.precision,
            "s3d_numerics": numerics,
        }

    def preprocess(self, clips: np.ndarray | Tensor) -> Tensor:
        """uint8 [B, T, H, W, 3] RGB -> float32 [B, 3, T, H, W] in the variant's input range.

        The reference engine gets a contiguous NCDHW tensor; the fused one a channels_last_3d
        view of the same values (the clips are NDHWC already). A CUDA copy goes from pinned host
        memory without blocking, as uint8 (4x less to transfer), and is scaled on the device.
        """
        if isinstance(clips, np.ndarray):
            clips = torch.from_numpy(clips)
        if clips.dtype != torch.uint8 or clips.ndim != 5 or clips.shape[-1] != 3:
            raise ValueError(
                f"clips must be uint8 [B, T, H, W, 3] RGB, got {clips.dtype} {tuple(clips.shape)}"
            )
        if self.device.type == "cuda":
            clips = clips.pin_memory() if not clips.is_pinned() else clips
        x = torch.div(clips.to(self.device, non_blocking=True).permute(0, 4, 1, 2, 3), 255.0)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x.contiguous() if self.engine == "reference" else x

    @torch.inference_mode()
    def __call__(
        self, clips: np.ndarray | Tensor, spatial: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """clips uint8 [B, T, H, W, 3] RGB -> (feat float32 [B, D], fmap float16 [B, H', W', D]).

        feat is Mixed_5c averaged over T', H', W'; fmap (only when spatial=True, else None) is
        Mixed_5c averaged over time only (7x7 at 224 input).
        """
        x = self.preprocess(clips)
        autocast = self.engine == "reference" and self.precision != "fp32"
        with (
            torch.autocast(self.device.type, dtype=_DTYPES[self.precision], enabled=autocast),
            torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True),
        ):
            mixed_5c = self.model(x)
        mixed_5c = mixed_5c.float()  # [B, D, T', H', W']
        feat = mixed_5c.mean(dim=(2, 3, 4)).cpu().numpy()  # [B, D]
        fmap = None
        if spatial:
            fmap_t = mixed_5c.mean(dim=2).permute(0, 2, 3, 1)  # [B, H', W', D]
            fmap = fmap_t.to(torch.float16).cpu().numpy()
        return feat, fmap
