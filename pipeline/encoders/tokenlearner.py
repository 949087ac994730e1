"""TokenLearner v1 and v1.1 and TokenFuser (methods.md 4; scenic `projects/token_learner/model.py`).

Legend: N frames (clips x time), P = h*w positions of one frame's token map, D width, S learned
tokens. Written from the scenic Flax modules, with their numerics:

* Flax `nn.gelu` is the tanh approximation (`jax.nn.gelu(approximate=True)`), so GELU here is
  `approximate="tanh"`; Flax `LayerNorm` has eps 1e-6.
* `MlpBlock`: Dense -> GELU -> Dropout -> Dense -> Dropout, xavier_uniform kernels, normal(1e-6)
  biases (4.2).
* v1 convolutions: 3x3, SAME padding, no bias, Flax default lecun_normal init (4.1).
* TokenFuser's token-mixing Dense has a zero kernel (4.3), so a fresh fuser adds only its bias path.

The two-stream model's TokenLearner (methods.md 3 + 4.2) is `TokenLearnerV11` from here too.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LN_EPS = 1e-6  # Flax nn.LayerNorm default


class ScenicMlp(nn.Module):
    """scenic `MlpBlock`: [..., in_dim] -> [..., out_dim] with tanh-GELU and two dropouts."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """scenic's init: xavier_uniform kernels, normal(std=1e-6) biases (a model whose generic
        init touches every Linear calls this again afterwards)."""
        for linear in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.normal_(linear.bias, std=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        x = self.dropout(F.gelu(self.fc1(x), approximate="tanh"))
        return self.dropout(self.fc2(x))


class TokenLearnerV11(nn.Module):
    """v1.1 (4.2): S softmax-weighted averages over space. x [N, P, D] -> [N, S, D]."""

    def __init__(self, dim: int, num_tokens: int, bottleneck_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = ScenicMlp(dim, bottleneck_dim, num_tokens, dropout)

    def weights(self, x: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """x [N, P, D] -> weights [N, S, P], each row a softmax over P."""
        return self.mlp(self.norm(x)).transpose(1, 2).softmax(dim=-1)

    def forward(self, x: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        return torch.einsum("nsp,npd->nsd", self.weights(x, grid), x)


class TokenLearnerV1(nn.Module):
    """v1 (4.1, the paper's experiments): sigmoid maps from 4 small convs, sum pooling.

    x [N, P, D] with P = h*w in row-major order of `grid` (h, w) -> [N, S, D]. Sum pooling (scenic's
    default) makes a token's scale grow with the number of positions it covers.
    """

    def __init__(self, dim: int, num_tokens: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        channels = [dim, num_tokens, num_tokens, num_tokens, num_tokens]
        self.convs = nn.ModuleList(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
            for c_in, c_out in zip(channels[:-1], channels[1:], strict=True)
        )
        for conv in self.convs:  # Flax Conv default: lecun_normal (fan_in, truncated normal)
            fan_in = conv.in_channels * 9
            std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
            nn.init.trunc_normal_(conv.weight, std=std, a=-2 * std, b=2 * std)

    def weights(self, x: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """x [N, P, D] -> sigmoid weights [N, S, P]."""
        if grid is None or grid[0] * grid[1] != x.shape[1]:
            raise ValueError(f"TokenLearner v1 needs the (h, w) grid of its {x.shape[1]} positions")
        n, p, d = x.shape
        y = self.norm(x).transpose(1, 2).reshape(n, d, *grid)  # [N, D, h, w]
        for i, conv in enumerate(self.convs):
            y = conv(y)
            if i < len(self.convs) - 1:
                y = F.gelu(y, approximate="tanh")
        return torch.sigmoid(y.flatten(2))  # [N, S, P]

    def forward(self, x: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        return torch.einsum("nsp,npd->nsd", self.weights(x, grid), x)


class TokenFuser(nn.Module):
    """TokenFuser (4.3): map S tokens back onto the P positions they came from.

    tokens [N, S, D], original [N, P, D] (the block input before TokenLearner) -> [N, P, D].
    The caller adds the residual (scenic `EncoderModFuser`: `x = fuser(...) + residual`).
    """

    def __init__(self, dim: int, num_tokens: int, bottleneck_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm_tokens = nn.LayerNorm(dim, eps=LN_EPS)  # fuser_mix_norm1
        self.mix_tokens = nn.Linear(num_tokens, num_tokens)  # Dense over the token axis
        nn.init.zeros_(self.mix_tokens.weight)  # zero kernel (scenic)
        nn.init.zeros_(self.mix_tokens.bias)  # Flax Dense default bias init
        self.norm_mixed = nn.LayerNorm(dim, eps=LN_EPS)  # fuser_mix_norm2
        self.norm_original = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = ScenicMlp(dim, bottleneck_dim, num_tokens, dropout)  # token_masking
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: Tensor, original: Tensor) -> Tensor:
        y = self.norm_tokens(tokens)  # [N, S, D]
        y = self.mix_tokens(y.transpose(1, 2)).transpose(1, 2)  # mix across S, [N, S, D]
        y = self.norm_mixed(y)
        mix = torch.sigmoid(self.mlp(self.norm_original(original)))  # [N, P, S]
        return self.dropout(torch.einsum("nsd,nps->npd", y, mix))  # [N, P, D]


def build_token_learner(
    version: str, dim: int, num_tokens: int, bottleneck_dim: int, dropout: float
) -> TokenLearnerV1 | TokenLearnerV11:
    """The TokenLearner of `version` ("v1" or "v1.1")."""
    if version == "v1":
        return TokenLearnerV1(dim, num_tokens)
    if version == "v1.1":
        return TokenLearnerV11(dim, num_tokens, bottleneck_dim, dropout)
    raise ValueError(f"unknown TokenLearner version {version!r}")
