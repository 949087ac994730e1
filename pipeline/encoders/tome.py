"""Token merging, ToMe (Bolya et al., ICLR 2023; methods.md 5), written from the paper's algorithm.

Legend: G matching groups (clips, or frames with scope=frame), M tokens in a group, C metric width,
D token width, r merges.

Per block (5.1): attention (proportional to token sizes, 5.3) -> merge r tokens of each group by
bipartite soft matching on the keys averaged over heads (5.2) -> MLP. Tokens are merged by a
size-weighted average and sizes add up, so `sizes.sum()` stays the number of input patches, and
attention over a merged token with `+ log(size)` on its logit equals attention over the identical
tokens it replaced (tested exactly). The official code is CC-BY-NC: nothing is copied from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Matching:
    """The outcome of one bipartite soft matching over G groups of M tokens.

    Tokens alternate between set A (even positions) and set B (odd positions). `kept` [G, |A|-r]:
    A tokens that stay (in order of their best score, protected first token kept first);
    `merged` [G, r]: A tokens folded into B; `into` [G, r]: the B token each of them joins.
    The merged sequence is [kept A tokens, all B tokens]: M - r tokens.
    """

    kept: Tensor
    merged: Tensor
    into: Tensor

    @property
    def r(self) -> int:
        return self.merged.shape[1]

    def merge(self, x: Tensor, reduce: str = "sum") -> Tensor:
        """x [G, M, D] -> [G, M - r, D]: A tokens in `merged` reduced (sum) into their B token."""
        a, b = x[:, ::2], x[:, 1::2]
        width = x.shape[-1]
        kept = a.gather(1, self.kept[..., None].expand(-1, -1, width))
        moving = a.gather(1, self.merged[..., None].expand(-1, -1, width))
        b = b.scatter_reduce(1, self.into[..., None].expand(-1, -1, width), moving, reduce=reduce)
        return torch.cat([kept, b], dim=1)


def bipartite_soft_matching(metric: Tensor, r: int, protect_first: bool) -> Matching | None:
    """Choose r merges per group from the cosine similarity of `metric` [G, M, C] (5.2).

    At most half of the unprotected tokens merge (r is capped); None when nothing merges. With
    `protect_first` the first token (the class token) never merges and stays first. Ties are
    broken by position (stable sort), so the result is deterministic.
    """
    groups, length, _ = metric.shape
    r = min(r, (length - int(protect_first)) // 2)
    if r <= 0:
        return None
    with torch.no_grad():  # the matching is a discrete choice: no gradient through it
        unit = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        scores = unit[:, ::2] @ unit[:, 1::2].transpose(1, 2)  # [G, |A|, |B|] cosine similarity
        if protect_first:
            scores[:, 0, :] = -torch.inf
        best_score, best_partner = scores.max(dim=-1)  # [G, |A|]
        order = best_score.sort(dim=-1, descending=True, stable=True).indices  # [G, |A|]
        merged, kept = order[:, :r], order[:, r:]
        if protect_first:  # keep the class token first (its score is -inf, so it is in `kept`)
            kept = kept.sort(dim=-1).values
        into = best_partner.gather(1, merged)
    return Matching(kept=kept, merged=merged, into=into)


def merge_weighted(matching: Matching, x: Tensor, sizes: Tensor) -> tuple[Tensor, Tensor]:
    """Size-weighted average merge (5.2 step 8): x [G, M, D], sizes [G, M] -> [G, M-r, D], [G, M-r]."""
    s = sizes[..., None].to(x.dtype)
    total = matching.merge(s, "sum")
    return matching.merge(x * s, "sum") / total, total[..., 0]


def merge_tokens(
    x: Tensor,
    sizes: Tensor,
    metric: Tensor,
    r: int,
    has_cls: bool,
    frames: int,
) -> tuple[Tensor, Tensor]:
    """One ToMe step on a clip's tokens, across the clip (frames=1) or within each frame.

    x [N, c + frames*m, D], sizes [N, c + frames*m], metric [N, c + frames*m, C] with c = 1 when
    `has_cls` (the class token first, never merged). Within frames, each frame's m tokens are one
    matching group and r merges happen in each, so every frame keeps the same count.
    Returns (x, sizes) with frames*r fewer tokens (or fewer when r is capped).
    """
    if frames == 1:
        matching = bipartite_soft_matching(metric, r, protect_first=has_cls)
        return (x, sizes) if matching is None else merge_weighted(matching, x, sizes)
    c = int(has_cls)
    n, length, width = x.shape
    m = (length - c) // frames
    if m * frames != length - c:
        raise ValueError(f"{length - c} tokens do not split into {frames} frames")
    matching = bipartite_soft_matching(metric[:, c:].reshape(n * frames, m, -1), r, False)
    if matching is None:
        return x, sizes
    patches, patch_sizes = merge_weighted(
        matching, x[:, c:].reshape(n * frames, m, width), sizes[:, c:].reshape(n * frames, m)
    )  # [N*frames, m - r, D], [N*frames, m - r]
    patches = patches.reshape(n, -1, width)
    patch_sizes = patch_sizes.reshape(n, -1)
    return torch.cat([x[:, :c], patches], 1), torch.cat([sizes[:, :c], patch_sizes], 1)
