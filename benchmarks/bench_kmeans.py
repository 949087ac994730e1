"""Benchmark: faiss hierarchical k-means (pipeline.hkmeans) against scikit-learn.

Run:  python benchmarks/bench_kmeans.py [--quick] [--depth 2 --k 12 --n 100000 --dim 1024]

What it measures (methods.md §1.1, the VideoBERT visual vocabulary):

1. Vocabulary quality and fit time. The SAME hierarchy (depth x k, same node routing, same
   handling of small nodes, same training sample) is built with three node clusterers: faiss
   (``HierarchicalKMeans.cluster_node``, our k-means++ seeding + faiss Lloyd), scikit-learn
   ``KMeans(init="k-means++")`` (library defaults: n_init=1, max_iter=300, tol=1e-4) and
   ``MiniBatchKMeans`` (defaults). Printed: fit seconds, routed leaf inertia (each training row to
   the leaf it was routed to), flat leaf inertia (each row to its nearest leaf, the token VideoBERT
   uses) on the training rows and on held-out rows, and faiss/sklearn ratios.
   The default full run is depth 2 x k 12 = 144 leaves (~700 rows per leaf at 100k rows): VideoBERT's
   4 x 12 = 20,736 leaves would leave ~5 rows per leaf on 100k rows, too few to compare quality.
2. A VideoBERT-size vocabulary (4 x 12) fit on the same rows (time and empty/tiny cluster counts),
   then assignment of 1M clips generated in chunks: rows/s, peak RSS increase, and the speed ratio
   against a numpy brute-force nearest-centroid baseline on one batch.
3. GPU vs CPU fit time when faiss sees a GPU; otherwise it says so.

Data: a synthetic two-level Gaussian mixture that mimics pooled CNN features: 24 groups x 16
sub-components (384 components), Zipf-like mixture weights (exponent 1.1), log-normal per-component
scale (sigma 0.4) and a heavy-tailed per-dimension spectrum s_j = (1 + j)^-0.6 shared by group
offsets, sub-component offsets and noise. It is axis-aligned because L2 k-means is invariant to
rotations, so a random rotation would change nothing but the generation time.

Threads and timing: by default every OpenMP/BLAS pool (faiss, scikit-learn, numpy) is limited to 1
thread (``--threads``) and times are reported as process CPU seconds besides wall seconds. On the
shared 2-core development machine other jobs hold the cores, and OpenMP's spin-waiting then made a
2-thread faiss k-means 10-17x slower in wall time than 1 thread; CPU seconds of 1-thread runs
are the comparison that survives such load. Use ``--threads 0`` on a dedicated machine.
"""

import argparse
import importlib.metadata
import os
import platform
import sys
import time
from dataclasses import astuple, dataclass, replace
from pathlib import Path

import faiss
import numpy as np
import sklearn
from sklearn.cluster import KMeans, MiniBatchKMeans
from threadpoolctl import threadpool_limits

# runnable as `python benchmarks/bench_kmeans.py` from a checkout without installing vlpipe
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import cpu_name  # noqa: E402
from pipeline.hkmeans import HierarchicalKMeans, HKMeansConfig  # noqa: E402


@dataclass(frozen=True)
class FeatureMixture:
    """Two-level Gaussian mixture: means [C, D], scales [C], weights [C], spectrum [D]."""

    means: np.ndarray
    scales: np.ndarray
    weights: np.ndarray
    spectrum: np.ndarray

    @classmethod
    def make(cls, dim: int, seed: int, groups: int = 24, per_group: int = 16) -> "FeatureMixture":
        rng = np.random.default_rng(seed)
        spectrum = ((1.0 + np.arange(dim)) ** -0.6).astype(np.float32)  # heavy-tailed spectrum
        group_means = rng.standard_normal((groups, dim)) * spectrum * 2.5
        offsets = rng.standard_normal((groups, per_group, dim)) * spectrum * 1.2
        means = (group_means[:, None, :] + offsets).reshape(-1, dim).astype(np.float32)
        weights = (1.0 + np.arange(groups * per_group)) ** -1.1  # Zipf-like component sizes
        weights = rng.permutation(weights / weights.sum())
        scales = rng.lognormal(0.0, 0.4, size=groups * per_group).astype(np.float32)
        return cls(means, scales, weights, spectrum)

    def sample(self, n: int, seed: int) -> np.ndarray:
        """float32 [n, D] rows drawn from the mixture."""
        rng = np.random.default_rng(seed)
        comp = rng.choice(len(self.weights), size=n, p=self.weights)
        x = rng.standard_normal((n, self.means.shape[1]), dtype=np.float32)
        x *= self.spectrum
        x *= self.scales[comp, None]
        x += self.means[comp]
        return x


class SklearnKMeansHierarchy(HierarchicalKMeans):
    """Same hierarchy, nodes clustered by sklearn KMeans(k-means++) with library defaults."""

    def cluster_node(self, xn: np.ndarray, seed: int) -> np.ndarray:
        km = KMeans(self.cfg.k, init="k-means++", n_init=1, random_state=seed).fit(xn)
        return km.cluster_centers_.astype(np.float32)


class SklearnMiniBatchHierarchy(HierarchicalKMeans):
    """Same hierarchy, nodes clustered by sklearn MiniBatchKMeans with library defaults."""

    def cluster_node(self, xn: np.ndarray, seed: int) -> np.ndarray:
        km = MiniBatchKMeans(self.cfg.k, init="k-means++", n_init=1, random_state=seed).fit(xn)
        return km.cluster_centers_.astype(np.float32)


def flat_inertia(model: HierarchicalKMeans, x: np.ndarray) -> float:
    """Sum of exact squared distances of x [N, D] to their assigned (nearest) leaf."""
    labels = model.assign(x)
    total = 0.0
    for a in range(0, len(x), 65536):
        diff = (x[a : a + 65536] - model.leaf_centroids[labels[a : a + 65536]]).astype(np.float64)
        total += float(np.einsum("nd,nd->", diff, diff))
    return total


def rss_mib(field: str) -> float:
    """VmRSS / VmHWM of this process in MiB (Linux /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def print_machine() -> None:
    cpu = cpu_name()
    print(f"machine: {cpu} | {os.cpu_count()} cores | {platform.platform()}")
    print(
        f"python {platform.python_version()} | torch {importlib.metadata.version('torch')} | "
        f"faiss {faiss.__version__} (omp threads {faiss.omp_get_max_threads()}) | "
        f"scikit-learn {sklearn.__version__} | numpy {np.__version__}"
    )


@dataclass(frozen=True)
class FitResult:
    wall_s: float
    cpu_s: float  # process CPU time: robust to other jobs on a shared machine
    routed: float  # mean squared distance of a training row to the leaf it was routed to
    flat: float  # same to its nearest leaf (the token), training rows
    held_out: float  # nearest leaf, held-out rows


def bench_fit(
    cls: type[HierarchicalKMeans], cfg: HKMeansConfig, x: np.ndarray, held: np.ndarray
) -> FitResult:
    wall, cpu = time.perf_counter(), time.process_time()
    model = cls(cfg).fit(x)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    routed = model.level_stats[-1]["inertia"] / model.n_train
    flat, held_flat = flat_inertia(model, x) / len(x), flat_inertia(model, held) / len(held)
    return FitResult(wall, cpu, routed, flat, held_flat)


def run_quality(args, x: np.ndarray, held: np.ndarray) -> None:
    leaves = args.k**args.depth
    base = HKMeansConfig(
        depth=args.depth,
        k=args.k,
        niter=args.niter,
        points_per_centroid=-(-len(x) // leaves),  # train on every row, as stated below
        use_gpu=False,
    )
    print(
        f"\n== fit: {x.shape[0]} x {x.shape[1]} training rows (all used), depth {args.depth} x "
        f"k {args.k} = {leaves} leaves (~{x.shape[0] / leaves:.0f} rows/leaf); held-out "
        f"{held.shape[0]} rows; inertia = mean squared distance per row; mean over seeds "
        f"{list(range(args.seeds))} (spread = (max - min) / mean of routed inertia) =="
    )
    runs = [("sklearn KMeans(k-means++)", SklearnKMeansHierarchy, base)]
    if not args.no_minibatch:
        runs.append(("sklearn MiniBatchKMeans", SklearnMiniBatchHierarchy, base))
    runs.append((f"faiss kmeans++ niter={args.niter}", HierarchicalKMeans, base))
    runs.append(
        ("faiss random init (faiss's own)", HierarchicalKMeans, replace(base, init="random"))
    )
    for extra in args.extra:
        cfg = replace(base, niter=extra[0], nredo=extra[1])
        name = f"faiss kmeans++ niter={extra[0]} nredo={extra[1]}"
        if len(extra) > 2:
            cfg = replace(cfg, kmeanspp_max_points=extra[2])
            name += f" kpp_pts={extra[2]}"
        runs.append((name, HierarchicalKMeans, cfg))
    print(
        f"{'method':44s} {'wall s':>7s} {'cpu s':>7s} {'routed':>8s} {'spread':>7s} {'flat':>8s} "
        f"{'held-out':>8s} {'cpu/sk':>7s} {'routed/sk':>9s} {'flat/sk':>8s} {'held/sk':>8s}"
    )
    sk = None
    for name, cls, cfg in runs:
        per_seed = [bench_fit(cls, replace(cfg, seed=s), x, held) for s in range(args.seeds)]
        r = FitResult(*np.mean([astuple(p) for p in per_seed], axis=0))
        routed = [p.routed for p in per_seed]
        spread = (max(routed) - min(routed)) / r.routed
        sk = sk or r
        print(
            f"{name:44s} {r.wall_s:7.2f} {r.cpu_s:7.2f} {r.routed:8.4f} {spread:7.2%} "
            f"{r.flat:8.4f} {r.held_out:8.4f} {r.cpu_s / sk.cpu_s:7.2f} "
            f"{r.routed / sk.routed:9.4f} {r.flat / sk.flat:8.4f} {r.held_out / sk.held_out:8.4f}"
        )
    print("ratios against sklearn KMeans(k-means++) in this run (< 1: faster / lower inertia)")


def run_vocab_and_assign(args, mixture: FeatureMixture, x: np.ndarray) -> None:
    cfg = HKMeansConfig(
        depth=args.vocab_depth,
        k=12,
        niter=args.niter,
        points_per_centroid=-(-len(x) // 12**args.vocab_depth),  # train on every row
        seed=0,
        use_gpu=False,
    )
    wall, cpu = time.perf_counter(), time.process_time()
    model = HierarchicalKMeans(cfg).fit(x)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    last = model.level_stats[-1]
    print(
        f"\n== vocabulary depth {cfg.depth} x k 12 = {cfg.num_leaves} leaves (VideoBERT: 4 x 12) on "
        f"{model.n_train} rows: fit {wall:.1f} s wall / {cpu:.1f} s cpu; leaves empty "
        f"{last['n_empty']}, tiny (<{cfg.tiny_cluster_size} rows) {last['n_tiny']}; nodes with <k "
        f"rows (not clustered) {last['n_unclustered_nodes']} =="
    )
    leaves = model.leaf_centroids
    probe = mixture.sample(8192, seed=99)
    model.assign(probe[:64])  # build the index once, outside the timings
    cpu = time.process_time()
    faiss_labels = model.assign(probe)
    faiss_rate = len(probe) / (time.process_time() - cpu)
    cpu = time.process_time()
    c_sq = np.einsum("md,md->m", leaves, leaves)
    brute = np.argmin(c_sq[None, :] - 2.0 * (probe @ leaves.T), axis=1)  # numpy baseline [N]
    numpy_rate = len(probe) / (time.process_time() - cpu)
    print(
        f"assign on {len(probe)} rows (cpu time): faiss {faiss_rate:,.0f} rows/s vs numpy brute "
        f"force {numpy_rate:,.0f} rows/s -> {faiss_rate / numpy_rate:.2f}x; label agreement "
        f"{(brute == faiss_labels).mean():.4f}"
    )

    total, chunk = args.assign_rows, args.chunk_rows
    have_peak = reset_peak_rss()
    rss0 = rss_mib("VmRSS")
    wall = cpu = 0.0
    counts = np.zeros(cfg.num_leaves, dtype=np.int64)
    for i, a in enumerate(range(0, total, chunk)):
        xb = mixture.sample(min(chunk, total - a), seed=1000 + i)  # clips arrive in chunks
        t_wall, t_cpu = time.perf_counter(), time.process_time()
        labels = model.assign(xb, batch_size=args.batch_size)
        wall += time.perf_counter() - t_wall
        cpu += time.process_time() - t_cpu
        counts += np.bincount(labels, minlength=cfg.num_leaves)
        del xb, labels
    peak = f"{rss_mib('VmHWM') - rss0:.0f} MiB" if have_peak else "unavailable (no clear_refs)"
    print(
        f"assign {total:,} clips x {x.shape[1]} in chunks of {chunk:,} rows (batch_size "
        f"{args.batch_size:,}): {wall:.0f} s wall / {cpu:.0f} s cpu -> {total / wall:,.0f} rows/s "
        f"wall, {total / cpu:,.0f} rows/s per cpu-second; peak RSS increase {peak} (one chunk "
        f"= {chunk * x.shape[1] * 4 / 2**20:.0f} MiB, all {total:,} rows would be "
        f"{total * x.shape[1] * 4 / 2**20:,.0f} MiB); leaves used {(counts > 0).sum()}"
    )


def run_gpu(args, x: np.ndarray) -> None:
    n_gpu = faiss.get_num_gpus()
    if n_gpu == 0:
        print("\n== GPU: faiss sees no GPU (faiss-cpu build / no device): GPU timing skipped ==")
        return
    cfg = HKMeansConfig(
        depth=args.depth,
        k=args.k,
        niter=args.niter,
        points_per_centroid=-(-len(x) // args.k**args.depth),  # train on every row
        seed=0,
        use_gpu=False,
    )
    times = {}
    for use_gpu in (False, True):
        t0 = time.perf_counter()
        HierarchicalKMeans(replace(cfg, use_gpu=use_gpu)).fit(x)
        times[use_gpu] = time.perf_counter() - t0
    print(
        f"\n== GPU ({n_gpu}): fit CPU {times[False]:.2f} s, GPU {times[True]:.2f} s -> "
        f"{times[False] / times[True]:.1f}x =="
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small run, < 60 s")
    parser.add_argument("--n", type=int, default=100_000, help="training rows")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=2, help="hierarchy depth for the comparison")
    parser.add_argument("--k", type=int, default=12, help="clusters per node for the comparison")
    parser.add_argument("--niter", type=int, default=20)
    parser.add_argument("--vocab-depth", type=int, default=4, help="depth of the 12-ary vocab")
    parser.add_argument("--assign-rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=65536)
    parser.add_argument("--no-minibatch", action="store_true")
    parser.add_argument("--seeds", type=int, default=3, help="fits per method (seeds 0..n-1)")
    parser.add_argument(
        "--extra", type=lambda s: tuple(int(v) for v in s.split(",")), action="append",
        default=None, help="extra faiss variant 'niter,nredo[,kmeanspp_max_points]' (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=1,
        help="threads for faiss, sklearn and BLAS alike (0 = library defaults), see module doc",
    )  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.n, args.dim, args.assign_rows, args.chunk_rows = 20_000, 256, 100_000, 25_000
        args.vocab_depth, args.seeds = 3, 1
    if args.extra is None:
        args.extra = [] if args.quick else [(40, 1), (20, 3)]
    if args.threads:
        # one limit for every OpenMP/BLAS pool in the process (faiss, sklearn, numpy), so both
        # sides get the same cores
        threadpool_limits(args.threads)
        faiss.omp_set_num_threads(args.threads)

    print_machine()
    mixture = FeatureMixture.make(args.dim, seed=0)
    t0 = time.perf_counter()
    x = mixture.sample(args.n, seed=1)
    held = mixture.sample(max(args.n // 5, 1000), seed=2)
    print(f"generated {args.n} + {len(held)} x {args.dim} rows in {time.perf_counter() - t0:.1f} s")
    run_quality(args, x, held)
    if args.assign_rows > 0:
        run_vocab_and_assign(args, mixture, x)
    run_gpu(args, x)


if __name__ == "__main__":
    main()
