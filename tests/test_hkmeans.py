"""Tests for pipeline.hkmeans: the VideoBERT hierarchical k-means vocabulary (methods.md §1.1)."""

import json

import numpy as np
import pytest

from pipeline.hkmeans import (
    HierarchicalKMeans,
    HKMeansConfig,
    kmeans_plusplus_init,
    squared_distances,
)

CPU = {"use_gpu": False}


def nested_blobs(rng: np.random.Generator, per_blob: int = 40, dim: int = 6):
    """9 tight blobs in 3 well-separated groups of 3: x float32 [9 * per_blob, dim], blob ids."""
    x, blob = [], []
    for g in range(3):
        group_center = np.zeros(dim)
        group_center[g] = 100.0
        for b in range(3):
            center = group_center.copy()
            center[3 + b] = 10.0  # blobs of one group sit 14 apart, groups ~140 apart
            x.append(center + 0.3 * rng.standard_normal((per_blob, dim)))
            blob += [3 * g + b] * per_blob
    return np.concatenate(x).astype(np.float32), np.array(blob)


def test_known_hierarchy_is_recovered():
    rng = np.random.default_rng(0)
    x, blob = nested_blobs(rng)
    model = HierarchicalKMeans(HKMeansConfig(depth=2, k=3, seed=0, **CPU)).fit(x)
    assert model.leaf_centroids.shape == (9, 6)
    fresh, fresh_blob = nested_blobs(rng, per_blob=10)
    for points, truth in ((x, blob), (fresh, fresh_blob)):
        leaf = model.assign(points)
        assert leaf.dtype == np.int32
        # purity 1.0 both ways: every blob maps to one leaf and every leaf holds one blob
        leaf_of_blob = {b: np.unique(leaf[truth == b]) for b in range(9)}
        assert all(len(v) == 1 for v in leaf_of_blob.values())
        assert len({int(v[0]) for v in leaf_of_blob.values()}) == 9
        # the level-0 digit (leaf // k) is shared by exactly the blobs of one group
        for g in range(3):
            assert len(np.unique(leaf[truth // 3 == g] // 3)) == 1
        assert len(np.unique(leaf // 3)) == 3
    stats = model.level_stats
    assert [s["n_clusters"] for s in stats] == [3, 9]
    assert stats[1]["sizes"] == [40] * 9 and stats[1]["n_empty"] == 0
    assert stats[0]["inertia"] > stats[1]["inertia"] > 0


def test_assign_is_nearest_leaf_by_brute_force():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((600, 16)).astype(np.float32)
    model = HierarchicalKMeans(HKMeansConfig(depth=2, k=4, seed=3, **CPU)).fit(x)
    queries = rng.standard_normal((400, 16)).astype(np.float32) * 1.5
    leaves = model.leaf_centroids.astype(np.float64)
    d2 = ((queries[:, None, :].astype(np.float64) - leaves[None]) ** 2).sum(-1)  # [400, 16]
    labels = model.assign(queries)
    chosen = d2[np.arange(len(queries)), labels]
    assert np.all(chosen <= d2.min(axis=1) + 1e-3)  # faiss works in float32: allow round-off
    top2 = np.sort(d2, axis=1)[:, :2]
    clear = top2[:, 1] - top2[:, 0] > 1e-2  # no near-tie: the label must match exactly
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(labels[clear], d2.argmin(axis=1)[clear])


def test_same_seed_same_vocabulary_different_seed_differs():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((800, 8)).astype(np.float32)
    fit = [HierarchicalKMeans(HKMeansConfig(depth=2, k=3, seed=s, **CPU)).fit(x) for s in (5, 5, 6)]
    for a, b in zip(fit[0].level_centroids, fit[1].level_centroids, strict=True):
        np.testing.assert_array_equal(a, b)  # bitwise on CPU
    assert fit[0].level_stats == fit[1].level_stats
    assert not np.array_equal(fit[0].leaf_centroids, fit[2].leaf_centroids)


def test_nredo_restarts_are_deterministic_and_not_worse():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((500, 8)).astype(np.float32)
    one = HierarchicalKMeans(HKMeansConfig(depth=1, k=6, seed=1, **CPU)).fit(x)
    three = [HierarchicalKMeans(HKMeansConfig(depth=1, k=6, nredo=3, seed=1, **CPU)).fit(x)]
    three.append(HierarchicalKMeans(HKMeansConfig(depth=1, k=6, nredo=3, seed=1, **CPU)).fit(x))
    np.testing.assert_array_equal(three[0].leaf_centroids, three[1].leaf_centroids)
    # the first restart is the nredo=1 run, so keeping the best can only help
    assert three[0].level_stats[0]["inertia"] <= one.level_stats[0]["inertia"] * (1 + 1e-4)


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    model = HierarchicalKMeans(HKMeansConfig(depth=3, k=3, seed=2, **CPU)).fit(x)
    model.save(tmp_path / "vocab")
    assert sorted(p.name for p in (tmp_path / "vocab").iterdir()) == [
        "centroids.npy",
        "centroids_level0.npy",
        "centroids_level1.npy",
        "hkmeans.json",
    ]
    loaded = HierarchicalKMeans.load(tmp_path / "vocab")
    assert loaded.cfg == model.cfg and loaded.n_train == 300
    assert loaded.level_stats == model.level_stats
    for a, b in zip(model.level_centroids, loaded.level_centroids, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.assign(x), model.assign(x))


def test_load_rejects_bad_files(tmp_path):
    x = np.random.default_rng(5).standard_normal((100, 4)).astype(np.float32)
    model = HierarchicalKMeans(HKMeansConfig(depth=2, k=2, **CPU)).fit(x)
    model.save(tmp_path)
    (tmp_path / "centroids_level0.npy").write_bytes(b"not a numpy file")
    with pytest.raises(ValueError, match="centroids_level0.npy"):
        HierarchicalKMeans.load(tmp_path)
    model.save(tmp_path)
    np.save(tmp_path / "centroids.npy", np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="centroids.npy"):
        HierarchicalKMeans.load(tmp_path)
    meta = json.loads((tmp_path / "hkmeans.json").read_text())
    meta["config"]["k"] = 0
    (tmp_path / "hkmeans.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="hkmeans.json"):
        HierarchicalKMeans.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        HierarchicalKMeans.load(tmp_path / "missing")


def test_assign_streams_in_batches():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((400, 8)).astype(np.float32)
    model = HierarchicalKMeans(HKMeansConfig(depth=2, k=4, **CPU)).fit(x)
    queries = rng.standard_normal((101, 8))  # float64 and a ragged last batch: converted per batch
    np.testing.assert_array_equal(model.assign(queries, batch_size=7), model.assign(queries))


@pytest.mark.parametrize(("n_points", "n_empty", "n_unclustered"), [(6, 10, 4), (2, 14, 4)])
def test_fewer_points_than_leaves_flags_empty_clusters(n_points, n_empty, n_unclustered):
    x = np.random.default_rng(7).standard_normal((n_points, 5)).astype(np.float32) * 10
    model = HierarchicalKMeans(HKMeansConfig(depth=2, k=4, **CPU)).fit(x)
    assert model.leaf_centroids.shape == (16, 5)
    leaf = model.level_stats[1]
    assert leaf["n_empty"] == n_empty and leaf["n_unclustered_nodes"] == n_unclustered
    assert sum(leaf["sizes"]) == n_points and leaf["inertia"] == pytest.approx(0.0, abs=1e-6)
    # every training point became a leaf centroid itself, so its token is exact
    labels = model.assign(x)
    np.testing.assert_allclose(model.leaf_centroids[labels], x, atol=1e-5)
    # children without points are copies of their node's centroid
    level0 = model.level_centroids[0]
    for node in range(4):
        for child in range(4):
            if leaf["sizes"][node * 4 + child] == 0:
                np.testing.assert_array_equal(model.leaf_centroids[node * 4 + child], level0[node])


def test_kmeans_plusplus_beats_random_init_on_unbalanced_blobs():
    """One dense blob of 2,000 rows plus 11 far blobs of 15: uniform seeding misses the small ones."""
    rng = np.random.default_rng(8)
    centers = rng.standard_normal((12, 8)) * 40
    x = np.concatenate([centers[0] + rng.standard_normal((2000, 8))])
    x = np.concatenate([x, *(c + rng.standard_normal((15, 8)) for c in centers[1:])])
    x = x.astype(np.float32)
    inertia = {}
    for init in ("kmeans++", "random"):
        runs = [
            HierarchicalKMeans(HKMeansConfig(depth=1, k=12, init=init, seed=s, **CPU)).fit(x)
            for s in range(4)
        ]
        inertia[init] = np.mean([m.level_stats[0]["inertia"] for m in runs])
    assert inertia["kmeans++"] <= inertia["random"]


def test_kmeans_plusplus_init_seeds_every_separated_blob():
    rng = np.random.default_rng(9)
    centers = rng.standard_normal((12, 4)) * 50
    x = np.concatenate([c + rng.standard_normal((30, 4)) for c in centers]).astype(np.float32)
    seeds = kmeans_plusplus_init(x, 12, np.random.default_rng(0))
    assert seeds.shape == (12, 4) and seeds.dtype == np.float32
    nearest_blob = ((seeds[:, None] - centers[None]) ** 2).sum(-1).argmin(axis=1)
    assert sorted(nearest_blob) == list(range(12))


def test_bad_input_raises():
    model = HierarchicalKMeans(HKMeansConfig(depth=1, k=2, **CPU))
    with pytest.raises(RuntimeError, match="not fitted"):
        model.assign(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        model.fit(np.array([[0.0, np.nan], [1.0, 1.0]], dtype=np.float32))
    model.fit(np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32))
    with pytest.raises(ValueError, match="D = 3"):
        model.assign(np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="2-D"):
        model.assign(np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="NaN/Inf in rows"):
        model.assign(np.full((2, 3), np.inf, dtype=np.float32))
    with pytest.raises(ValueError, match="k must be"):
        HKMeansConfig(k=1)


def test_cluster_config_builds_the_same_hkmeans_config():
    """`vlpipe cluster` settings and the library's share one set of defaults and one builder."""
    from pipeline.cluster_config import ClusterConfig
    from pipeline.config import load_config

    assert ClusterConfig().hkmeans() == HKMeansConfig()
    cfg = load_config(
        ClusterConfig,
        None,
        ["depth=2", "k=5", "points_per_centroid=7", "report.tiny_cluster_size=3"],
    )
    assert cfg.hkmeans() == HKMeansConfig(depth=2, k=5, points_per_centroid=7, tiny_cluster_size=3)


def test_squared_distances_literal():
    """[[0, 0], [3, 4]] against [[0, 0], [1, 0]]: 0, 1 / 25, 20; with the row norms given or not."""
    x = np.array([[0.0, 0.0], [3.0, 4.0]], np.float32)
    c = np.array([[0.0, 0.0], [1.0, 0.0]], np.float32)
    expected = [[0.0, 1.0], [25.0, 20.0]]
    np.testing.assert_allclose(squared_distances(x, c), expected)
    np.testing.assert_allclose(squared_distances(x, c, np.array([0.0, 25.0], np.float32)), expected)


def test_assign_batch_size_and_the_rows_a_bad_batch_names():
    model = HierarchicalKMeans(HKMeansConfig(depth=1, k=2, **CPU))
    model.fit(np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32))
    x = np.random.default_rng(1).standard_normal((20, 3)).astype(np.float32)
    np.testing.assert_array_equal(model.assign(x, batch_size=1), model.assign(x))
    with pytest.raises(ValueError, match=r"^HierarchicalKMeans.assign: batch_size must be >= 1"):
        model.assign(x, batch_size=0)
    x[9, 1] = np.nan
    with pytest.raises(ValueError, match=r"^HierarchicalKMeans.assign: NaN/Inf in rows 7\.\.14$"):
        model.assign(x, batch_size=7)
    with pytest.raises(ValueError, match=r"^HierarchicalKMeans.assign: expected D = 3 columns"):
        model.assign(np.zeros((2, 4), dtype=np.float32))


def test_nearest_covers_every_row_of_a_large_input():
    """More rows than the 16384-row residual chunk (twice over): every row gets its label and its
    exact squared distance."""
    from pipeline.hkmeans import _nearest

    x = np.random.default_rng(2).standard_normal((40000, 2)).astype(np.float32)
    c = np.array([[0.0, 0.0], [5.0, 5.0], [-5.0, 0.0]], np.float32)
    d = ((x[:, None, :] - c[None]) ** 2).sum(-1)
    labels, d2 = _nearest(x, c)
    np.testing.assert_array_equal(labels, d.argmin(1))
    np.testing.assert_allclose(d2, d.min(1), rtol=1e-5, atol=1e-6)
