"""Statistics a reader can trust: bootstrap intervals over videos, mean and spread over seeds.

Held-out segments of one video are not independent (same shapes, same narrator, same clips
nearby), so intervals resample whole videos: a cluster bootstrap. Every function is seeded and
deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bootstrap_interval(
    values: Sequence[float] | np.ndarray,
    groups: Sequence[str] | np.ndarray,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of the mean of `values` [N], resampling whole groups (videos).

    values: per-item scores, e.g. 100.0 for a correct top-1 and 0.0 otherwise; groups [N]: the
    video of each item. Each resample draws as many groups as there are, with replacement, and
    takes the mean over all their items. Returns (low, high); (nan, nan) for no items.
    """
    values = np.asarray(values, dtype=np.float64)
    groups = np.asarray(groups)
    if values.shape != groups.shape:
        raise ValueError(f"values {values.shape} and groups {groups.shape} differ in shape")
    if not len(values):
        return float("nan"), float("nan")
    names, index = np.unique(groups, return_inverse=True)
    sums = np.bincount(index, weights=values, minlength=len(names))  # [G]
    counts = np.bincount(index, minlength=len(names)).astype(np.float64)  # [G]
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(names), size=(resamples, len(names)))  # [R, G]
    means = sums[draws].sum(1) / counts[draws].sum(1)  # [R]
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value) over seeds."""
    arr = np.asarray(values, dtype=np.float64)
    if not len(arr):
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def format_mean_std(values: Sequence[float], digits: int = 1) -> str:
    """'42.3 ± 4.1' over seeds (n shown when it is not obvious from context)."""
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"
