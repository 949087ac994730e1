"""Hierarchical k-means visual vocabulary (VideoBERT, methods.md §1.1).

VideoBERT quantises each 1.5 s clip's 1024-d S3D feature with hierarchical k-means, d = 4 levels
of k = 12 clusters, giving 12**4 = 20,736 visual words; a clip's token is the id of the nearest
leaf centroid, written as a 4-digit base-12 number (level-0 digit most significant).

Algorithm (``HierarchicalKMeans.fit``):

1. Draw at most ``k**depth * points_per_centroid`` training rows (uniform, without replacement).
2. Level 0 clusters all of them into k; every point is routed to its nearest centroid. Level l
   clusters, separately for each of the k**l nodes, the points routed to that node. Child c of
   node n gets id ``n * k + c``, so a leaf id is the base-k number of its path.
3. Each node runs faiss k-means (``faiss.Kmeans``, Lloyd iterations, L2). The default
   initialisation is our own greedy k-means++ (the variant scikit-learn uses: 2 + ln k candidate
   seeds per step, keep the one that lowers the potential most) on a bounded subsample, passed to
   faiss through ``train(x, init_centroids=...)``. faiss's own uniform random seeding gave worse
   inertia than scikit-learn's k-means++ (+1.6 % in benchmarks/bench_kmeans.py, ~15 % in an
   earlier measurement on other data); with this seeding faiss matched scikit-learn (-0.4 %) in
   about half the CPU time there.

Choices a reader should know:

* ``nredo`` with k-means++ is run here, not by faiss: when ``init_centroids`` is given, faiss's own
  redo loop starts every redo from the (already converged) previous centroids instead of a fresh
  seeding, so its restarts would not be restarts. We seed each restart anew and keep the lowest
  inertia. With ``init="random"`` faiss's native ``nredo`` is used.
* faiss subsamples a node to 256 points per centroid by default. We disable that per node
  (``max_points_per_centroid``): the global sample bound of step 1 already limits the work, and a
  256 x k = 3,072-row cap would train the top levels, which shape every leaf below them, on a
  small fraction of the sample (scikit-learn, the quality baseline, uses every row).
* Nodes with fewer than k routed points (possible deep in the tree, e.g. 4 x 12 on a small corpus)
  are not clustered: their points become the first children and the remaining children are copies
  of the node's own centroid. Those children receive no training points and are counted as
  ``n_empty`` in ``level_stats``; keeping them (rather than shrinking the vocabulary) keeps every
  leaf id a valid fixed-width base-k path, as the embedding table of methods.md §1.3 expects.
* ``assign`` searches all leaves flat (faiss ``IndexFlatL2``), as methods.md §1.1 defines the token
  as the nearest leaf centroid; this can differ from greedy top-down routing used in training.
* Determinism: the sample, every k-means++ seeding and faiss's seed derive from ``cfg.seed`` and the
  node's (level, index); on CPU the same data and seed give bitwise-identical centroids (same
  machine and thread count: BLAS summation order may change with either). GPU runs are not bitwise.
* Cost: every level passes all training rows through k-way k-means (niter x N x k x D per level);
  nodes below the root work on a copy of their rows, so peak memory is about twice the sample.
"""

import json
import logging
import math
from dataclasses import asdict, replace
from pathlib import Path

# faiss's loader reports at INFO which CPU build it tries, quoting a ModuleNotFoundError for each
# build that is not installed: library chatter that reads like an error to a user. Keep it out of
# the default output; with debug logging on (`vlpipe -v`) it is shown.
_faiss_loader_log = logging.getLogger("faiss.loader")
if _faiss_loader_log.level == logging.NOTSET and not logging.getLogger().isEnabledFor(
    logging.DEBUG
):
    _faiss_loader_log.setLevel(logging.WARNING)

import faiss  # noqa: E402  (after the logger setting above)
import numpy as np  # noqa: E402

from pipeline.cluster_config import HKMeansConfig  # noqa: E402

_FORMAT = "vlpipe.hkmeans"
_FORMAT_VERSION = 1


def squared_distances(x: np.ndarray, c: np.ndarray, x_sq: np.ndarray | None = None) -> np.ndarray:
    """Squared L2 distances [N, M] between rows of x [N, D] and c [M, D] (float32, clipped at 0)."""
    if x_sq is None:
        x_sq = np.einsum("nd,nd->n", x, x)
    d2 = x_sq[:, None] - 2.0 * (x @ c.T) + np.einsum("md,md->m", c, c)[None, :]
    return np.maximum(d2, 0.0, out=d2)


def kmeans_plusplus_init(
    x: np.ndarray, k: int, rng: np.random.Generator, n_local_trials: int | None = None
) -> np.ndarray:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; scikit-learn's variant).

    Each new seed is drawn with probability proportional to D(x)^2, the squared distance to the
    nearest seed so far; of ``n_local_trials`` (default 2 + ln k) such draws the one that lowers the
    total potential most is kept. x: float32 [N, D] with N >= 1. Returns float32 [k, D] (rows repeat
    when x has fewer than k distinct points).
    """
    n = x.shape[0]
    trials = n_local_trials if n_local_trials is not None else 2 + int(math.log(k))
    x_sq = np.einsum("nd,nd->n", x, x)
    seeds = np.empty((k, x.shape[1]), dtype=np.float32)
    seeds[0] = x[rng.integers(n)]
    closest = squared_distances(x, seeds[:1], x_sq)[:, 0].astype(np.float64)  # [N]
    potential = closest.sum()
    for i in range(1, k):
        # D^2 sampling by inverting the cumulative potential; clip guards float round-off at the end
        targets = rng.random(trials) * potential
        cand = np.minimum(np.searchsorted(np.cumsum(closest), targets), n - 1)  # [trials]
        d_cand = np.minimum(closest[:, None], squared_distances(x, x[cand], x_sq))  # [N, trials]
        pots = d_cand.sum(axis=0)
        best = int(np.argmin(pots))
        seeds[i] = x[cand[best]]
        closest, potential = d_cand[:, best].astype(np.float64), pots[best]
    return seeds


def _faiss_int_seed(seed: int, *path: int) -> int:
    """A non-negative int32 seed derived from the root seed and a (level, node, ...) path."""
    return int(np.random.SeedSequence([seed, *path]).generate_state(1)[0] & 0x7FFFFFFF)


def _nearest(x: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (faiss, [N] int64) and its squared distance from the residual ([N]).

    faiss's distances come from |x|^2 - 2<x, c> + |c|^2, which cancels badly for tight clusters;
    the residual form keeps the inertia statistics accurate (float32 terms, float64 totals).
    """
    index = faiss.IndexFlatL2(c.shape[1])
    index.add(c)
    _, labels = index.search(x, 1)
    labels = labels[:, 0]
    d2 = np.empty(x.shape[0], dtype=np.float64)
    for a in range(0, x.shape[0], 16384):  # chunked so the residual copy stays small
        diff = x[a : a + 16384] - c[labels[a : a + 16384]]
        d2[a : a + 16384] = np.einsum("nd,nd->n", diff, diff)
    return labels, d2


def _check_matrix(x: np.ndarray, what: str, dim: int | None = None) -> None:
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D array [N, D], got {getattr(x, 'shape', type(x))}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{what}: expected D = {dim} columns, got {x.shape[1]}")


class HierarchicalKMeans:
    """VideoBERT visual vocabulary: hierarchical k-means with k**depth leaves (module docstring)."""

    def __init__(self, cfg: HKMeansConfig) -> None:
        self.cfg = cfg
        self.use_gpu = faiss.get_num_gpus() > 0 if cfg.use_gpu is None else cfg.use_gpu
        if self.use_gpu and faiss.get_num_gpus() == 0:
            raise RuntimeError("HKMeansConfig.use_gpu=True but faiss sees no GPU (faiss-cpu?)")
        self.level_centroids: list[np.ndarray] = []  # level l: float32 [k**(l+1), D]
        self.level_stats: list[dict] = []
        self.n_train = 0
        self._leaf_index: faiss.Index | None = None

    @property
    def leaf_centroids(self) -> np.ndarray:
        """float32 [k**depth, D]; row i is visual word i (base-k path, level-0 digit first)."""
        if not self.level_centroids:
            raise RuntimeError("HierarchicalKMeans is not fitted: call fit() or load() first")
        return self.level_centroids[-1]

    @property
    def dim(self) -> int:
        return self.leaf_centroids.shape[1]

    def fit(self, x: np.ndarray) -> "HierarchicalKMeans":
        """Build the vocabulary from features x float32 [N, D] (N >= 1, finite). Returns self."""
        _check_matrix(x, "HierarchicalKMeans.fit")
        cfg = self.cfg
        rng = np.random.default_rng(cfg.seed)
        max_train = cfg.num_leaves * cfg.points_per_centroid
        if x.shape[0] > max_train:
            rows = np.sort(rng.choice(x.shape[0], size=max_train, replace=False))
            xs = np.ascontiguousarray(x[rows], dtype=np.float32)
        else:
            xs = np.ascontiguousarray(x, dtype=np.float32)
        if xs.shape[0] == 0:
            raise ValueError("HierarchicalKMeans.fit: no training rows")
        if not np.isfinite(xs).all():
            raise ValueError("HierarchicalKMeans.fit: features contain NaN or Inf")
        n, k = xs.shape[0], cfg.k

        node = np.zeros(n, dtype=np.int64)  # node id of every training row at the current level
        parents = xs.mean(axis=0, keepdims=True, dtype=np.float64).astype(np.float32)
        self.level_centroids, self.level_stats = [], []
        for level in range(cfg.depth):
            n_nodes = k**level
            centroids = np.empty((n_nodes * k, xs.shape[1]), dtype=np.float32)
            child, d2 = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.float64)
            order = np.argsort(node, kind="stable")
            bounds = np.concatenate([[0], np.cumsum(np.bincount(node, minlength=n_nodes))])
            n_degenerate = 0
            for nd in range(n_nodes):
                rows = order[bounds[nd] : bounds[nd + 1]]
                # the root node holds every row: use xs itself instead of an N x D copy
                xn = xs if rows.shape[0] == n else xs[rows]
                if rows.shape[0] < k:
                    n_degenerate += 1
                    c = np.concatenate([xn, np.repeat(parents[nd : nd + 1], k - len(rows), 0)])
                else:
                    c = self.cluster_node(xn, _faiss_int_seed(cfg.seed, level, nd))
                centroids[nd * k : (nd + 1) * k] = c
                if rows.shape[0]:
                    labels, dist = _nearest(xn, centroids[nd * k : (nd + 1) * k])
                    child[rows], d2[rows] = nd * k + labels, dist
            sizes = np.bincount(child, minlength=n_nodes * k)
            self.level_stats.append(
                {
                    "level": level,
                    "n_clusters": n_nodes * k,
                    "inertia": float(d2.sum()),  # rows to the centroid they are routed to
                    "n_empty": int((sizes == 0).sum()),
                    "n_tiny": int(((sizes > 0) & (sizes < cfg.tiny_cluster_size)).sum()),
                    "n_unclustered_nodes": n_degenerate,  # nodes with < k rows (not k-means'd)
                    "sizes": [int(s) for s in sizes],
                }
            )
            self.level_centroids.append(centroids)
            node, parents = child, centroids
        self.n_train = n
        self._leaf_index = None
        return self

    def cluster_node(self, xn: np.ndarray, seed: int) -> np.ndarray:
        """k centroids float32 [k, D] for one node's rows xn float32 [n, D], n >= k.

        The one place the clustering algorithm lives; benchmarks override it to plug in another
        k-means under the identical hierarchy.
        """
        cfg, d = self.cfg, xn.shape[1]
        params = {
            "niter": cfg.niter,
            "seed": seed,
            "gpu": self.use_gpu,
            "spherical": False,
            # the global sample is already bounded: let faiss use every row of the node
            "max_points_per_centroid": xn.shape[0] // cfg.k + 1,
            "min_points_per_centroid": 1,  # small nodes are expected deep in the tree
        }
        if cfg.init == "random":
            km = faiss.Kmeans(d, cfg.k, nredo=cfg.nredo, **params)
            km.train(xn)
            return km.centroids
        rng = np.random.default_rng(seed)
        best, best_obj = None, math.inf
        for _ in range(cfg.nredo):
            sub = xn
            if xn.shape[0] > cfg.kmeanspp_max_points:
                sub = xn[np.sort(rng.choice(xn.shape[0], cfg.kmeanspp_max_points, replace=False))]
            init = kmeans_plusplus_init(sub, cfg.k, rng)
            km = faiss.Kmeans(d, cfg.k, nredo=1, **params)
            km.train(xn, init_centroids=init)
            if cfg.nredo == 1:
                return km.centroids
            dist, _ = km.index.search(xn, 1)  # km.index holds the final centroids
            obj = float(dist.sum(dtype=np.float64))
            if obj < best_obj:
                best, best_obj = km.centroids, obj
        return best

    def _index(self) -> faiss.Index:
        if self._leaf_index is None:
            index = faiss.IndexFlatL2(self.dim)
            if self.use_gpu:
                index = faiss.index_cpu_to_all_gpus(index)
            index.add(self.leaf_centroids)
            self._leaf_index = index
        return self._leaf_index

    def assign(self, x: np.ndarray, batch_size: int = 65536) -> np.ndarray:
        """Visual word of each row: int32 [N] id of the nearest leaf centroid for x [N, D].

        Rows are searched batch_size at a time (works on np.memmap too), so memory stays bounded by
        one float32 batch plus faiss's blocked distance buffers. Raises ValueError on a wrong shape
        or on NaN/Inf rows (naming the batch's first row).
        """
        _check_matrix(x, "HierarchicalKMeans.assign", self.dim)
        if batch_size < 1:
            raise ValueError(
                f"HierarchicalKMeans.assign: batch_size must be >= 1, got {batch_size}"
            )
        index = self._index()
        out = np.empty(x.shape[0], dtype=np.int32)
        for a in range(0, x.shape[0], batch_size):
            xb = np.ascontiguousarray(x[a : a + batch_size], dtype=np.float32)
            if not np.isfinite(xb).all():
                raise ValueError(f"HierarchicalKMeans.assign: NaN/Inf in rows {a}..{a + len(xb)}")
            _, labels = index.search(xb, 1)
            out[a : a + xb.shape[0]] = labels[:, 0]
        return out

    def save(self, directory: str | Path) -> None:
        """Write centroids.npy (leaves), centroids_level{l}.npy (l < depth-1) and hkmeans.json."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "centroids.npy", self.leaf_centroids)
        for level, c in enumerate(self.level_centroids[:-1]):
            np.save(directory / f"centroids_level{level}.npy", c)
        meta = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "config": asdict(self.cfg),
            "dim": self.dim,
            "n_train": self.n_train,
            "level_stats": self.level_stats,
        }
        (directory / "hkmeans.json").write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, directory: str | Path, use_gpu: bool | None = None) -> "HierarchicalKMeans":
        """Read a vocabulary written by save(); use_gpu overrides the saved setting if given.

        Raises FileNotFoundError for a missing file and ValueError for a malformed one.
        """
        directory = Path(directory)
        meta_path = directory / "hkmeans.json"
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("format") != _FORMAT or meta.get("version") != _FORMAT_VERSION:
                raise ValueError(f"format {meta.get('format')!r} v{meta.get('version')}")
            cfg = HKMeansConfig(**meta["config"])
            dim, n_train, level_stats = int(meta["dim"]), int(meta["n_train"]), meta["level_stats"]
        except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{meta_path}: not a vlpipe hkmeans file ({err!r})") from err
        if use_gpu is not None:
            cfg = replace(cfg, use_gpu=use_gpu)
        model = cls(cfg)
        names = [f"centroids_level{level}.npy" for level in range(cfg.depth - 1)]
        for level, name in enumerate([*names, "centroids.npy"]):
            path, expected = directory / name, (cfg.k ** (level + 1), dim)
            try:
                c = np.load(path, allow_pickle=False)
            except FileNotFoundError:
                raise
            except (OSError, ValueError) as err:  # truncated file, object array, not .npy
                raise ValueError(f"{path}: unreadable centroid array ({err})") from err
            if c.dtype != np.float32 or c.shape != expected:
                raise ValueError(f"{path}: expected float32 {expected}, got {c.dtype} {c.shape}")
            model.level_centroids.append(c)
        model.level_stats, model.n_train = level_stats, n_train
        return model
