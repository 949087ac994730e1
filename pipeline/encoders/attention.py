"""Global self-attention and the pre-norm transformer block of the ViViT encoders, with the options
LSA (methods.md 6.2) and ToMe's proportional attention and key metric (5.1, 5.3).

Legend: N sequences (clips or frames), L tokens, D width, Dh = D / heads.

Numerics follow scenic's `EncoderBlock` (ViViT) / HF `VivitLayer`: LayerNorm eps 1e-6, q/k/v and
output projections with bias, tanh-GELU MLP (Flax `nn.gelu`; HF `gelu_fast`), dropout after the
attention output, stochastic depth without rescaling (scenic `get_drop_pattern`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.encoders.base import DropPath
from pipeline.encoders.tokenlearner import LN_EPS, ScenicMlp

# A token merge between attention and MLP: (x, sizes, metric) -> (x, sizes).
MergeFn = Callable[[Tensor, Tensor | None, Tensor], tuple[Tensor, Tensor | None]]


def lsa_diagonal_bias(length: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """[L, L] additive bias: the dtype's most negative finite value on the diagonal, 0 elsewhere.

    LSA (6.2) masks R_ii so no token attends to itself. A finite value instead of -inf keeps a
    one-token sequence (whose only key is itself) finite; its exp underflows to exactly 0 whenever
    another key is present.
    """
    eye = torch.eye(length, dtype=torch.bool, device=device)
    return torch.zeros(length, length, dtype=dtype, device=device).masked_fill(
        eye, torch.finfo(dtype).min
    )


class SelfAttention(nn.Module):
    """Multi-head self-attention: x [N, L, D] -> (out [N, L, D], metric [N, L, Dh]).

    metric is the keys averaged over heads (ToMe's similarity feature, 5.1). `sizes` [N, L] adds
    log(size) to the logit of each key (proportional attention, 5.3). With `lsa` the scale is a
    learned per-head temperature (initialised to Dh^-0.5) and the diagonal is masked (6.2).
    """

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool, attention_dropout: float, lsa: bool
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attention_dropout = attention_dropout
        self.lsa = lsa
        if lsa:
            self.temperature = nn.Parameter(torch.full((num_heads,), self.head_dim**-0.5))
        for chunk in self.qkv.weight.data.chunk(3):  # scenic: xavier_uniform q, k, v, out kernels
            nn.init.xavier_uniform_(chunk)
        nn.init.xavier_uniform_(self.proj.weight)
        for linear in (self.qkv, self.proj):
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

    def _project(
        self, x: Tensor, sizes: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """(q scaled [N, h, L, Dh], k, v, additive bias [N or 1, 1, L, L] or None)."""
        n, length, _ = x.shape
        qkv = self.qkv(x).view(n, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [N, h, L, Dh]
        scale = self.temperature.view(1, -1, 1, 1) if self.lsa else self.head_dim**-0.5
        bias = None  # no mask at all lets SDPA pick its fused kernels
        if sizes is not None:
            bias = sizes.to(x.dtype).log()[:, None, None, :].expand(-1, -1, length, -1)
        if self.lsa:
            diagonal = lsa_diagonal_bias(length, x.dtype, x.device)
            bias = diagonal if bias is None else bias + diagonal
        return q * scale, k, v, bias

    def weights(self, x: Tensor, sizes: Tensor | None = None) -> Tensor:
        """Attention probabilities [N, h, L, L] (explicitly, for tests and inspection)."""
        q, k, _, bias = self._project(x, sizes)
        logits = q @ k.transpose(-2, -1)
        return (logits if bias is None else logits + bias).softmax(dim=-1)

    def forward(self, x: Tensor, sizes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        q, k, v, bias = self._project(x, sizes)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=bias,
            dropout_p=self.attention_dropout if self.training else 0.0,
            scale=1.0,  # q is already scaled (fixed Dh^-0.5 or the LSA temperature)
        )  # [N, h, L, Dh]
        out = out.transpose(1, 2).reshape(x.shape)
        return self.proj(out), k.mean(dim=1)


class ViTBlock(nn.Module):
    """Pre-norm block: x + attn(LN x) -> [merge] -> x + MLP(LN x). x [N, L, D] -> [N, L', D].

    `merge` (ToMe) runs between attention and MLP on the attention's key metric; `sizes` [N, L]
    drives proportional attention and is returned merged alongside x.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        qkv_bias: bool,
        dropout: float,
        attention_dropout: float,
        drop_path: float,
        lsa: bool,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = SelfAttention(dim, num_heads, qkv_bias, attention_dropout, lsa)
        self.dropout = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = ScenicMlp(dim, mlp_dim, dim, dropout)
        self.drop_path = DropPath(drop_path, scale_by_keep=False)

    def forward(
        self,
        x: Tensor,
        sizes: Tensor | None = None,
        merge: MergeFn | None = None,
        proportional: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        attended, metric = self.attn(self.norm1(x), sizes if proportional else None)
        x = x + self.drop_path(self.dropout(attended))
        if merge is not None:
            x, sizes = merge(x, sizes, metric)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, sizes
