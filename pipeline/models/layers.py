"""Small typed building blocks composed by the CBT and two-stream (ViLBERT) models.

Legend (as in `pipeline.models.base`): B batch, T clips, L text tokens, D width, S learned tokens,
N any sequence length, P = h*w spatial positions of one clip's feature map.

Masks follow one convention everywhere: a Bool key mask [B, N] is True on real positions. It is
turned into an additive bias with `finfo.min` (not -inf) so that a row whose keys are all padded
yields finite (ignored) values instead of NaN, while real rows are exact: exp(min - max) == 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def key_padding_bias(key_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Bool [B, N] (True = real key) -> additive attention bias [B, 1, 1, N] in `dtype`."""
    bias = torch.zeros(key_mask.shape, dtype=dtype, device=key_mask.device)
    bias = bias.masked_fill(~key_mask, torch.finfo(dtype).min)
    return bias[:, None, None, :]  # [B, 1, 1, N]: broadcast over heads and queries


class MLP(nn.Module):
    """Linear -> activation -> dropout -> Linear. [..., in_dim] -> [..., out_dim]."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(F.gelu(self.fc1(x))))


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention whose queries and keys may come from different streams.

    query [B, Nq, query_dim], context [B, Nk, context_dim], key_mask Bool [B, Nk] (True = real).
    Returns the per-head contexts concatenated, [B, Nq, hidden_dim], *without* an output
    projection: the caller owns it (BertSelfOutput / BertBiOutput, methods.md 3.3).

    `add_zero_attn` (torch.nn.MultiheadAttention's option of that name) appends a key and value
    of zeros: a query may then attend to "nothing" (score 0), so how well it matches the real
    keys shows in the size of its output instead of being normalised away by the softmax.
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int,
        hidden_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        add_zero_attn: bool = False,
    ) -> None:
        super().__init__()
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim {hidden_dim} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_dim // num_heads
        self.query = nn.Linear(query_dim, hidden_dim)
        self.key = nn.Linear(context_dim, hidden_dim)
        self.value = nn.Linear(context_dim, hidden_dim)
        self.dropout = dropout
        self.add_zero_attn = add_zero_attn

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        # [B, N, H*Dh] -> [B, N, H, Dh] -> [B, H, N, Dh]
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, query: Tensor, context: Tensor, key_mask: Tensor) -> Tensor:
        q = self._split_heads(self.query(query))  # [B, H, Nq, Dh]
        k = self._split_heads(self.key(context))  # [B, H, Nk, Dh]
        v = self._split_heads(self.value(context))  # [B, H, Nk, Dh]
        if self.add_zero_attn:  # one more key and value, all zeros, never padded
            k, v = F.pad(k, (0, 0, 0, 1)), F.pad(v, (0, 0, 0, 1))  # [B, H, Nk+1, Dh]
            key_mask = F.pad(key_mask, (0, 1), value=True)  # [B, Nk+1]
        bias = key_padding_bias(key_mask, q.dtype)  # [B, 1, 1, Nk]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0
        )  # [B, H, Nq, Dh]
        batch, _, length, _ = out.shape
        return out.transpose(1, 2).reshape(batch, length, -1)  # [B, Nq, H*Dh]


class FeedForward(nn.Module):
    """BERT intermediate + output: LN(x + dropout(W2 gelu(W1 x))). [B, N, D] -> [B, N, D]."""

    def __init__(self, dim: int, intermediate_dim: int, dropout: float, eps: float) -> None:
        super().__init__()
        self.mlp = MLP(dim, intermediate_dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.dropout(self.mlp(x)))


class TransformerBlock(nn.Module):
    """Post-LN BERT encoder layer (self-attention + feed-forward) with a key padding mask.

    x [B, N, D], mask Bool [B, N] -> [B, N, D]. Padded positions are computed but never attended to.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        intermediate_dim: int,
        dropout: float = 0.1,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        self.attention = MultiHeadAttention(dim, dim, dim, num_heads, dropout)
        self.attention_output = nn.Linear(dim, dim)
        self.attention_norm = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.feed_forward = FeedForward(dim, intermediate_dim, dropout, eps)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        context = self.attention(x, x, mask)  # [B, N, D]
        x = self.attention_norm(x + self.dropout(self.attention_output(context)))
        return self.feed_forward(x)


class CrossAttentionHalf(nn.Module):
    """One direction of a co-attention layer: `own` stream queries attend to the `other` stream.

    This is one half of BertBiAttention + BertBiOutput + the stream's own FFN (methods.md 3.3):
    own = LN(own + dense(softmax(Q_own K_otherᵀ/√d + mask_other) V_other)); own = FFN(own).
    own [B, No, own_dim], other [B, Nt, other_dim], other_mask Bool [B, Nt] -> [B, No, own_dim].
    """

    def __init__(
        self,
        own_dim: int,
        other_dim: int,
        bi_hidden: int,
        num_heads: int,
        intermediate_dim: int,
        dropout: float = 0.1,
        eps: float = 1e-12,
        add_zero_attn: bool = False,
    ) -> None:
        super().__init__()
        self.attention = MultiHeadAttention(
            own_dim, other_dim, bi_hidden, num_heads, dropout, add_zero_attn
        )
        self.output = nn.Linear(bi_hidden, own_dim)  # dense1 / dense2 of BertBiOutput
        self.norm = nn.LayerNorm(own_dim, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.feed_forward = FeedForward(own_dim, intermediate_dim, dropout, eps)

    def forward(self, own: Tensor, other: Tensor, other_mask: Tensor) -> Tensor:
        context = self.attention(own, other, other_mask)  # [B, No, bi_hidden]
        own = self.norm(own + self.dropout(self.output(context)))
        return self.feed_forward(own)


class CoAttentionLayer(nn.Module):
    """Co-TRM (methods.md 3.3, `BertConnectionLayer`): each stream attends to the other's keys.

    Both directions read the *input* states of the other stream (the reference computes both
    contexts before either stream is updated). Stream a [B, Na, dim_a] with mask [B, Na], stream b
    [B, Nb, dim_b] with mask [B, Nb]; returns (a' [B, Na, dim_a], b' [B, Nb, dim_b]). In ViLBERT
    stream a is the text and b the visual stream; the FFN widths follow each stream (text:
    BERT intermediate, visual: v_intermediate), as in the reference.
    """

    def __init__(
        self,
        dim_a: int,
        dim_b: int,
        bi_hidden: int,
        num_heads: int,
        intermediate_a: int,
        intermediate_b: int,
        dropout: float = 0.1,
        eps: float = 1e-12,
        add_zero_attn: bool = False,
    ) -> None:
        super().__init__()
        self.to_a = CrossAttentionHalf(
            dim_a, dim_b, bi_hidden, num_heads, intermediate_a, dropout, eps, add_zero_attn
        )
        self.to_b = CrossAttentionHalf(
            dim_b, dim_a, bi_hidden, num_heads, intermediate_b, dropout, eps, add_zero_attn
        )

    def forward(
        self, a: Tensor, a_mask: Tensor, b: Tensor, b_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        return self.to_a(a, b, b_mask), self.to_b(b, a, a_mask)


class RunningFeatureNorm(nn.Module):
    """Standardise each input feature dimension with statistics of the training clips seen so far.

    Why (issue 9, methods.md 2.1 / 3.4): clip features enter a stream as LN(Linear(x) + position).
    The references assume features of unit scale (ReLU outputs of a trained network); the scale of
    a feature extractor is otherwise arbitrary. Random-init S3D features have |x| ~ 4e-4 and vary
    between clips by ~1.5e-5 per dimension, so after a Linear with BERT's init the clip-dependent
    part reaching the LayerNorm was ~1/1400 of the position embeddings: the visual stream saw
    only positions, and Adam steps of size lr cannot grow the weights ~1000x within a run.
    Standardising makes the between-clip variation unit-scale whatever the extractor.

    x [..., F] -> (x - mean) / (std * sqrt(F)) [..., F]: each dimension has variance 1/F over
    the clips, so a clip vector has expected norm 1. Unit-variance dimensions would overshoot the
    other way: through a Linear with BERT's init (std 0.02) the clip part would be ~30x the
    position embeddings (measured 11.5 vs 0.38 in norm); at norm 1 it is ~0.36 vs 0.38, the
    balance BERT's word and position embeddings start with.

    `update(x, mask)` merges the real clips of a batch into exact running statistics over every
    clip seen (Chan et al.'s parallel mean / variance update, each clip weighted once: the
    extractor is frozen, so nothing drifts); the model calls it in training mode only, so
    evaluation never changes them. The statistics are buffers:
    saved with the weights, restored on resume, broadcast from rank 0 by DDP. Before any update
    it is the identity (as for a checkpoint saved before this module existed). std has a floor
    of `floor` x the mean std, so a dead dimension stays near 0.
    """

    def __init__(self, dim: int, floor: float = 1e-2) -> None:
        super().__init__()
        self.floor = floor
        self.register_buffer("count", torch.zeros(()))
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("m2", torch.zeros(dim))  # sum of squared deviations from the mean

    @torch.no_grad()
    def update(self, x: Tensor, mask: Tensor | None = None) -> None:
        """Absorb the rows of x [..., F] where mask [...] is True (all rows without a mask)."""
        rows = x.reshape(-1, x.shape[-1]) if mask is None else x[mask.bool()]
        rows = rows.float()  # [n, F]
        n = rows.shape[0]
        if n == 0:
            return
        batch_mean = rows.mean(0)
        batch_m2 = ((rows - batch_mean) ** 2).sum(0)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * (n / total)
        self.m2 += batch_m2 + delta**2 * (self.count * n / total)
        self.count.fill_(total)

    def divisor(self) -> Tensor:
        """[F] std (floored) x sqrt(F); ones before two clips were seen (identity)."""
        # Tensor ops only (no host sync on GPUs): torch.where instead of `if count < 2`.
        std = (self.m2 / (self.count - 1).clamp_min(1.0)).sqrt()
        std = torch.maximum(std, self.floor * std.mean()).clamp_min(1e-30)
        return torch.where(self.count >= 2, std * self.mean.shape[0] ** 0.5, torch.ones_like(std))

    def forward(self, x: Tensor) -> Tensor:
        return ((x - self.mean) / self.divisor()).to(x.dtype)
