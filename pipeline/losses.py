"""Contrastive (NCE / InfoNCE) and soft-target (KL) losses shared by the vlpipe objectives.

Legend: M queries (e.g. masked clips), N candidates in the pool, K negatives per query,
V visual words, F feature width, D embedding width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nce_loss(positive: Tensor, negatives: Tensor, negative_mask: Tensor | None = None) -> Tensor:
    """Mean over queries of -log( exp(s⁺) / (exp(s⁺) + Σ_j exp(s⁻_j)) ) (methods.md 2.1).

    positive [M] and negatives [M, K] are scores (already scaled by any temperature);
    negative_mask Bool [M, K] is False on slots that are not negatives (padding, the positive
    itself). A query without negatives contributes 0. M == 0 gives a zero that keeps the graph.
    """
    if negative_mask is not None:
        negatives = negatives.masked_fill(~negative_mask, float("-inf"))
    logits = torch.cat([positive[:, None], negatives], dim=1)  # [M, 1+K]
    if logits.shape[0] == 0:
        return positive.sum() * 0.0
    return (torch.logsumexp(logits, dim=1) - positive).mean()


def pairwise_ranking(positive: Tensor, negative: Tensor) -> tuple[Tensor, Tensor]:
    """Each positive score against its own negative: positive, negative [E] -> (mean of
    -log softmax(positive, negative), i.e. `nce_loss` with one negative; the share of pairs with
    positive > negative, NaN without pairs). Invariant to a shift of both scores."""
    return nce_loss(positive, negative[:, None]), (positive > negative).float().mean()


def nce_with_pool_negatives(
    predictions: Tensor,
    pool: Tensor,
    positive_index: Tensor,
    temperature: float,
    max_negatives: int = 0,
) -> Tensor:
    """NCE of each prediction against its own pool entry, all other entries being negatives.

    predictions [M, D], pool [N, D] (e.g. every valid clip of the batch), positive_index Long [M]
    (row of `pool` that is each prediction's target). Scores are cosine similarities / temperature.
    With `max_negatives` > 0 and more candidates than that, a random subset of `max_negatives`
    pool rows (torch global RNG, shared by all queries) is scored; a query's own target is removed
    from the negatives wherever it falls in the subset.
    """
    predictions = F.normalize(predictions, dim=-1)
    pool = F.normalize(pool, dim=-1)
    positive = (predictions * pool[positive_index]).sum(-1) / temperature  # [M]
    num_pool = pool.shape[0]
    columns = torch.arange(num_pool, device=pool.device)  # [N]
    if 0 < max_negatives < num_pool - 1:
        columns = torch.randperm(num_pool, device=pool.device)[:max_negatives]  # [K]
    negatives = predictions @ pool[columns].T / temperature  # [M, K]
    not_self = columns[None, :] != positive_index[:, None]  # [M, K]
    return nce_loss(positive, negatives, not_self)


def soft_assignment(
    features: Tensor, centroids: Tensor, temperature: float, relative: bool = False
) -> Tensor:
    """Soft visual-word target softmax_k(-||x - c_k||² / τ) (brief for methods.md 3.5).

    features [M, F], centroids [V, F] -> probabilities [M, V]. Computed in float32 via the
    expansion ||x||² - 2 x·c + ||c||², which never materialises an [M, V, F] tensor.
    `relative=True` divides each row's distances by their median first, so τ is unit-free: an
    absolute τ is meaningless across feature extractors (random-init S3D features are ~1e-3 in
    scale, where τ = 1 gives a uniform, information-free target).
    """
    x = features.float()
    c = centroids.float()
    sq_dist = (x * x).sum(-1, keepdim=True) - 2.0 * x @ c.T + (c * c).sum(-1)[None, :]  # [M, V]
    sq_dist = sq_dist.clamp_min(0.0)
    if relative:
        sq_dist = sq_dist / sq_dist.median(-1, keepdim=True).values.clamp_min(1e-12)
    return torch.softmax(-sq_dist / temperature, dim=-1)


def soft_target_kl(logits: Tensor, target_probs: Tensor) -> Tensor:
    """KL(target ‖ softmax(logits)) summed over classes, averaged over rows (methods.md 3.5).

    Same as ViLBERT's `KLDivLoss(log_softmax(pred), image_target)` summed over the 1601 classes
    and divided by the number of masked regions. logits [M, V], target_probs [M, V] -> scalar.
    M == 0 gives a zero that keeps the graph.
    """
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    log_probs = F.log_softmax(logits.float(), dim=-1)
    kl = F.kl_div(log_probs, target_probs.float(), reduction="none").sum(-1)  # [M]
    return kl.mean()


def cross_entropy_or_zero(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross entropy of logits [M, C] against labels [M] (in float32); a zero that keeps
    the graph when M == 0 (a batch where nothing was masked, no pair was eligible ...)."""
    if labels.numel() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels)
