"""Shifted Patch Tokenization, SPT (Lee, Lee, Song, arXiv 2112.13492; methods.md 6.1), for video.

Legend: N clips, C channels, F frames, H x W space, (pt, ph, pw) a patch, D width.

The paper's SPT concatenates the image with four diagonally shifted copies (half a patch each way,
zero filled), cuts the 5C-channel result into patches, and embeds each flattened patch with
LayerNorm then Linear: x_s = LN(P(S)) E_s. For video the shift is spatial only (each frame is
shifted the same way); time is not shifted. The same operation, with a shift of one token and
2x2 patches, replaces Swin's patch merging (the paper's SL-Swin). Implemented from the paper; the
authors' code has no licence and nothing is copied from it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def patch_shift(x: Tensor, shift: int) -> Tensor:
    """[..., C, H, W] -> [..., 5C, H, W]: x and its left-up, right-up, left-bottom, right-bottom shifts.

    With zero padding p by `shift` on every side, the copies are p[:-2s, :-2s] (left-up),
    p[:-2s, 2s:] (right-up), p[2s:, :-2s] (left-bottom) and p[2s:, 2s:] (right-bottom); e.g. the
    left-up copy at (i, j) holds x[i - s, j - s] (0 outside the frame). Channel order: the
    original first, then the four copies in that order.
    """
    if shift < 1:
        raise ValueError(f"shift must be >= 1, got {shift}")
    s = shift
    padded = F.pad(x, (s, s, s, s))
    height, width = x.shape[-2:]
    copies = [
        padded[..., :height, :width],  # left-up: the view moves up-left, content down-right
        padded[..., :height, 2 * s :],  # right-up
        padded[..., 2 * s :, :width],  # left-bottom
        padded[..., 2 * s :, 2 * s :],  # right-bottom
    ]
    return torch.cat([x, *copies], dim=-3)


def patchify(x: Tensor, patch: tuple[int, int, int]) -> Tensor:
    """[N, C, F, H, W] -> [N, F/pt, H/ph, W/pw, pt*ph*pw*C] (per-patch values in (pt, ph, pw, c) order)."""
    n, c, f, h, w = x.shape
    pt, ph, pw = patch
    x = x.reshape(n, c, f // pt, pt, h // ph, ph, w // pw, pw)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # [N, t, h, w, pt, ph, pw, C]
    return x.reshape(n, f // pt, h // ph, w // pw, pt * ph * pw * c)


class ShiftedPatchEmbed(nn.Module):
    """SPT as a video patch embedding: clips [N, C, F, H, W] -> tokens [N, t, h, w, D].

    The shift is half the spatial patch (methods.md 6.1: `int(patch_size / 2)`), per axis.
    F, H, W must be multiples of the patch (callers pad first).
    """

    def __init__(self, in_channels: int, dim: int, patch: tuple[int, int, int]) -> None:
        super().__init__()
        if patch[1] != patch[2] or patch[1] < 2:
            raise ValueError(f"SPT needs square spatial patches >= 2, got {patch}")
        self.patch = tuple(patch)
        self.shift = patch[1] // 2
        flat = 5 * in_channels * patch[0] * patch[1] * patch[2]
        self.norm = nn.LayerNorm(flat)
        self.proj = nn.Linear(flat, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, c, f, h, w = x.shape
        # Shift every frame alike: fold time into the batch for the 2D shift.
        shifted = patch_shift(x.transpose(1, 2).reshape(n * f, c, h, w), self.shift)
        shifted = shifted.reshape(n, f, 5 * c, h, w).transpose(1, 2)  # [N, 5C, F, H, W]
        return self.proj(self.norm(patchify(shifted, self.patch)))  # [N, t, h, w, D]


class ShiftedPatchMerging(nn.Module):
    """SPT in place of Swin's patch merging: [N, T, H, W, C] -> [N, T, H/2, W/2, out_dim].

    Shift by one token (merging size 2, methods.md 6.1), 2x2 patches, LN(20C), Linear(20C -> 2C).
    Odd H or W is zero padded at the end first, as Swin's PatchMerging does.
    """

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(20 * dim)
        self.reduction = nn.Linear(20 * dim, out_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        n, t, h, w, c = x.shape
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        h, w = x.shape[2:4]
        y = patch_shift(x.permute(0, 1, 4, 2, 3), 1)  # [N, T, 5C, H, W]
        y = y.permute(0, 2, 1, 3, 4)  # [N, 5C, T, H, W]
        return self.reduction(self.norm(patchify(y, (1, 2, 2))))  # [N, T, H/2, W/2, 2C]
