"""Video Swin building blocks: 3D windows, (shifted) window attention with relative position bias,
the block and patch merging; Swin V2 and LSA as options (methods.md 7, 10, 6.2).

Legend: B clips, (D, H, W) token grid (time, height, width), C channels, (Wd, Wh, Ww) a window,
n = Wd*Wh*Ww tokens of a window, nW windows, h heads.

Written against SwinTransformer/Video-Swin-Transformer `mmaction/models/backbones/swin_transformer.py`
(the reference): parameter names match its release so official checkpoints load, and the numerics
are the same (shift mask -100, bias indexing, padding after norm1, GELU exact).

Shrunk windows (methods.md 10): where the input is not larger than the window on an axis, the
window shrinks to the input and that axis is not shifted. The reference then indexes its bias with
`relative_position_index[:n, :n]`, i.e. the first n tokens of the *full* window, which gives the
right offsets only when the time axis alone shrank. `bias_indexing="reference"` reproduces that (so
official checkpoints give official outputs at any input size); `"exact"` indexes the same table by
the true offsets inside the shrunk window. Both agree whenever only time (or nothing) shrank.

Swin V2 (microsoft/Swin-Transformer `swin_transformer_v2.py`, in 3D): cosine attention scaled by a
learned per-head logit scale clamped at log(100), bias 16*sigmoid(MLP(log-spaced coords)), q and v
biases only, residual post-norm, norm after the merging reduction. Relative coordinates are divided
by (window - 1) per axis; an axis whose window is 1 has only offset 0 and is left at 0 (the 2D
reference would divide by zero).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.encoders.attention import lsa_diagonal_bias
from pipeline.encoders.base import DropPath
from pipeline.encoders.spt import ShiftedPatchMerging

Triple = tuple[int, int, int]


def window_partition(x: Tensor, window: Triple) -> Tensor:
    """[B, D, H, W, C] (each a multiple of the window) -> [B*nW, n, C], windows in (d, h, w) order."""
    b, d, h, w, c = x.shape
    wd, wh, ww = window
    x = x.view(b, d // wd, wd, h // wh, wh, w // ww, ww, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, wd * wh * ww, c)


def window_reverse(windows: Tensor, window: Triple, b: int, d: int, h: int, w: int) -> Tensor:
    """Inverse of window_partition: [B*nW, n, C] -> [B, D, H, W, C]."""
    wd, wh, ww = window
    x = windows.view(b, d // wd, h // wh, w // ww, wd, wh, ww, -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, -1)


def effective_window(size: Triple, window: Triple, shift: Triple) -> tuple[Triple, Triple]:
    """The reference's `get_window_size`: an axis not larger than the window shrinks, unshifted."""
    use_window, use_shift = list(window), list(shift)
    for i in range(3):
        if size[i] <= window[i]:
            use_window[i], use_shift[i] = size[i], 0
    return tuple(use_window), tuple(use_shift)  # type: ignore[return-value]


def relative_position_index(window: Triple, table_window: Triple | None = None) -> Tensor:
    """[n, n] row index into a (2Td-1)(2Th-1)(2Tw-1) table for every token pair of `window`.

    `table_window` (default: `window`) is the window the table was made for; the offsets of a
    smaller window are a subset of its range.
    """
    tw = table_window or window
    coords = torch.stack(torch.meshgrid(*(torch.arange(s) for s in window), indexing="ij"))
    coords = coords.flatten(1)  # [3, n]
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # [n, n, 3]
    rel = rel + torch.tensor([s - 1 for s in tw])
    strides = torch.tensor([(2 * tw[1] - 1) * (2 * tw[2] - 1), 2 * tw[2] - 1, 1])
    return (rel * strides).sum(-1)


@lru_cache(maxsize=64)
def shift_mask(padded: Triple, window: Triple, shift: Triple, device: str) -> Tensor:
    """The reference's `compute_mask`: [nW, n, n] with -100 between tokens that came from
    different regions of the cyclically rolled grid, 0 within a region."""
    labels = torch.zeros(1, *padded, 1, device=device)
    count = 0
    slices = [
        (slice(-w), slice(-w, -s), slice(-s, None)) for w, s in zip(window, shift, strict=True)
    ]
    for d in slices[0]:
        for h in slices[1]:
            for w in slices[2]:
                labels[:, d, h, w, :] = count
                count += 1
    windows = window_partition(labels, window).squeeze(-1)  # [nW, n]
    diff = windows[:, None, :] - windows[:, :, None]
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class Mlp(nn.Module):
    """fc1 -> GELU (exact) -> dropout -> fc2 -> dropout, as the reference. [..., C] -> [..., C]."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class WindowAttention3D(nn.Module):
    """Multi-head attention inside windows with a relative position bias (V1 or V2), optional LSA.

    x [B*nW, n, C], window (the effective one), mask [nW, n, n] or None -> [B*nW, n, C].
    """

    def __init__(
        self,
        dim: int,
        window: Triple,
        num_heads: int,
        qkv_bias: bool,
        attention_dropout: float,
        dropout: float,
        v2: bool,
        lsa: bool,
        bias_indexing: str,
    ) -> None:
        super().__init__()
        self.window = window
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.v2, self.lsa, self.bias_indexing = v2, lsa, bias_indexing
        self.register_buffer("relative_position_index", relative_position_index(window))
        if v2:
            self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(num_heads, 1, 1)))
            self.cpb_mlp = nn.Sequential(
                nn.Linear(3, 512), nn.ReLU(inplace=True), nn.Linear(512, num_heads, bias=False)
            )
            self.register_buffer("relative_coords_table", _log_coords(window), persistent=False)
            self.qkv = nn.Linear(dim, 3 * dim, bias=False)
            self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
            self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        else:
            table = torch.zeros(math.prod(2 * s - 1 for s in window), num_heads)
            self.relative_position_bias_table = nn.Parameter(table)
            nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
            self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        if lsa:
            self.temperature = nn.Parameter(torch.full((num_heads,), self.head_dim**-0.5))
        self.attn_drop = attention_dropout
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)
        self._exact_index: dict[Triple, Tensor] = {}

    def position_bias(self, window: Triple) -> Tensor:
        """[h, n, n] bias for an effective `window` (see the module docstring on shrunk windows)."""
        n = math.prod(window)
        if window == self.window or self.bias_indexing == "reference":
            index = self.relative_position_index[:n, :n]
        else:
            if window not in self._exact_index:
                self._exact_index[window] = relative_position_index(window, self.window)
            index = self._exact_index[window].to(self.relative_position_index.device)
        if self.v2:
            table = self.cpb_mlp(self.relative_coords_table.to(self.qkv.weight.dtype))
            bias = 16 * torch.sigmoid(table.view(-1, self.num_heads)[index.reshape(-1)])
        else:
            bias = self.relative_position_bias_table[index.reshape(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)

    def _logits_parts(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(q ready for a plain dot product [B*nW, h, n, Dh], k, v)."""
        bw, n, c = x.shape
        bias = None
        if self.v2 and self.q_bias is not None:
            bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias if self.v2 else self.qkv.bias)
        q, k, v = qkv.view(bw, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.v2:  # scaled cosine attention, scale clamped at 1/0.01
            scale = torch.clamp(self.logit_scale, max=math.log(1.0 / 0.01)).exp()
            q, k = F.normalize(q, dim=-1) * scale, F.normalize(k, dim=-1)
        elif self.lsa:
            q = q * self.temperature.view(1, -1, 1, 1)
        else:
            q = q * self.head_dim**-0.5
        return q, k, v

    def _bias(self, x: Tensor, window: Triple, mask: Tensor | None) -> Tensor:
        """Additive logits [nW or 1, h, n, n]: position bias + shift mask + LSA diagonal."""
        n = x.shape[1]
        bias = self.position_bias(window).unsqueeze(0).to(x.dtype)  # [1, h, n, n]
        if mask is not None:
            bias = bias + mask.unsqueeze(1).to(x.dtype)  # [nW, h, n, n]
        if self.lsa:
            bias = bias + lsa_diagonal_bias(n, x.dtype, x.device)
        return bias

    def weights(self, x: Tensor, window: Triple, mask: Tensor | None = None) -> Tensor:
        """Attention probabilities [B*nW, h, n, n] (explicit, for tests)."""
        q, k, _ = self._logits_parts(x)
        bias = self._bias(x, window, mask)
        logits = (q @ k.transpose(-2, -1)).unflatten(0, (-1, bias.shape[0])) + bias
        return logits.softmax(-1).flatten(0, 1)

    def forward(self, x: Tensor, window: Triple, mask: Tensor | None = None) -> Tensor:
        bw, n, c = x.shape
        q, k, v = self._logits_parts(x)
        bias = self._bias(x, window, mask)  # [nW or 1, h, n, n]
        split = (-1, bias.shape[0])  # [B, nW, h, n, Dh] so the bias broadcasts over clips
        out = F.scaled_dot_product_attention(
            q.unflatten(0, split),
            k.unflatten(0, split),
            v.unflatten(0, split),
            attn_mask=bias,
            dropout_p=self.attn_drop if self.training else 0.0,
            scale=1.0,
        )
        out = out.flatten(0, 1).transpose(1, 2).reshape(bw, n, c)
        return self.proj_drop(self.proj(out))


def _log_coords(window: Triple) -> Tensor:
    """Swin V2 log-spaced relative coordinates [(2Wd-1)(2Wh-1)(2Ww-1), 3] (see module docstring)."""
    axes = [torch.arange(-(s - 1), s, dtype=torch.float32) for s in window]
    table = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # [2Wd-1, 2Wh-1, 2Ww-1, 3]
    for i, s in enumerate(window):
        if s > 1:  # guard: a window of 1 has only offset 0, which stays 0
            table[..., i] /= s - 1
    table = table * 8
    table = torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)
    return table.reshape(-1, 3)


class SwinBlock3D(nn.Module):
    """One (shifted) window block: x [B, D, H, W, C], mask -> [B, D, H, W, C].

    V1: x + DP(attn(LN x)), then x + DP(MLP(LN x)). V2 (residual post-norm): x + DP(LN(attn x)),
    then x + DP(LN(MLP x)).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: Triple,
        shift: Triple,
        mlp_ratio: float,
        qkv_bias: bool,
        dropout: float,
        attention_dropout: float,
        drop_path: float,
        v2: bool,
        lsa: bool,
        bias_indexing: str,
    ) -> None:
        super().__init__()
        self.window, self.shift, self.v2 = window, shift, v2
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(
            dim, window, num_heads, qkv_bias, attention_dropout, dropout, v2, lsa, bias_indexing
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)

    def attention(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """Window attention over the (normed, for V1) grid x [B, D, H, W, C] -> same shape.

        Pads to a multiple of the window at the end (the padded zeros are keys, unmasked, as in
        the reference), rolls by -shift, attends in windows, rolls back and crops.
        """
        b, d, h, w, c = x.shape
        window, shift = effective_window((d, h, w), self.window, self.shift)
        pads = [(-size) % win for size, win in zip((d, h, w), window, strict=True)]
        x = F.pad(x, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
        _, dp, hp, wp, _ = x.shape
        shifted = any(shift)
        if shifted:
            x = torch.roll(x, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        windows = self.attn(window_partition(x, window), window, mask if shifted else None)
        x = window_reverse(windows, window, b, dp, hp, wp)
        if shifted:
            x = torch.roll(x, shifts=shift, dims=(1, 2, 3))
        return x[:, :d, :h, :w].contiguous()

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        if self.v2:
            x = x + self.drop_path(self.norm1(self.attention(x, mask)))
            return x + self.drop_path(self.norm2(self.mlp(x)))
        x = x + self.drop_path(self.attention(self.norm1(x), mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 spatial merge: [B, D, H, W, C] -> [B, D, ceil(H/2), ceil(W/2), 2C] (time untouched).

    V1: concat (x0, x1, x2, x3) -> LN(4C) -> Linear(4C -> 2C, no bias). V2: Linear then LN(2C).
    With `spt` the paper's shifted merging replaces it (spt.ShiftedPatchMerging).
    """

    def __init__(self, dim: int, v2: bool, spt: bool) -> None:
        super().__init__()
        self.v2, self.spt = v2, spt
        if spt:
            self.shifted = ShiftedPatchMerging(dim, 2 * dim)
            return
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(2 * dim if v2 else 4 * dim)

    def forward(self, x: Tensor) -> Tensor:
        if self.spt:
            return self.shifted(x)
        h, w = x.shape[2:4]
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x0 = x[:, :, 0::2, 0::2]  # reference order: (0,0), (1,0), (0,1), (1,1)
        x1 = x[:, :, 1::2, 0::2]
        x2 = x[:, :, 0::2, 1::2]
        x3 = x[:, :, 1::2, 1::2]
        x = torch.cat([x0, x1, x2, x3], dim=-1)
        if self.v2:
            return self.norm(self.reduction(x))
        return self.reduction(self.norm(x))
