"""Cluster bootstrap and seed statistics."""

import numpy as np
import pytest

from pipeline.stats import bootstrap_interval, format_mean_std, mean_std


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_more_videos():
    rng = np.random.default_rng(0)
    small = (rng.random(50) < 0.6) * 100.0
    big = (rng.random(500) < 0.6) * 100.0
    lo, hi = bootstrap_interval(small, [f"v{i // 4}" for i in range(50)])
    assert lo < small.mean() < hi
    lo2, hi2 = bootstrap_interval(big, [f"v{i // 4}" for i in range(500)])
    assert hi2 - lo2 < (hi - lo) / 2
    assert bootstrap_interval(small, [f"v{i // 4}" for i in range(50)]) == (lo, hi)  # seeded


def test_bootstrap_resamples_whole_videos():
    # Two videos, each all right or all wrong: resampling videos can only give 0, 50 or 100,
    # and an interval over items alone would be far narrower than over videos.
    values = [100.0] * 10 + [0.0] * 10
    lo, hi = bootstrap_interval(values, ["a"] * 10 + ["b"] * 10)
    assert (lo, hi) == (0.0, 100.0)
    lo, hi = bootstrap_interval(values, [str(i) for i in range(20)])
    assert 20 < lo < 50 < hi < 80


def test_bad_shapes_and_empty():
    with pytest.raises(ValueError, match="shape"):
        bootstrap_interval([1.0, 2.0], ["a"])
    assert all(np.isnan(bootstrap_interval([], [])))


def test_mean_std_over_seeds():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([5.0]) == (5.0, 0.0)
    assert format_mean_std([40.0, 42.0, 44.0]) == "42.0 ± 2.0"
