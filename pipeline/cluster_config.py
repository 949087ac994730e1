"""Settings of `vlpipe cluster` (defaults follow VideoBERT, methods.md 1.1: d = 4 levels, k = 12)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.config import ConfigError, check_range


@dataclass(frozen=True)
class HKMeansConfig:
    """Hierarchical k-means settings; defaults follow VideoBERT (methods.md §1.1)."""

    depth: int = 4  # tree levels (VideoBERT: 4)
    k: int = 12  # clusters per node (VideoBERT: 12) -> k**depth leaves = 20,736
    niter: int = 20  # Lloyd iterations per node (faiss runs exactly this many)
    nredo: int = 1  # independent restarts per node; the lowest inertia is kept
    init: Literal["kmeans++", "random"] = "kmeans++"  # random = faiss's own uniform seeding
    # Training sample bound: at most k**depth * this rows. 64 keeps VideoBERT's 20,736 leaves at
    # 1.33M rows (2.7 GB of float16 1024-d features, plus a float32 copy while fitting).
    points_per_centroid: int = 64
    seed: int = 0  # drives the sample, every seeding and faiss's rng
    use_gpu: bool | None = None  # None -> GPU when faiss sees one (faiss.get_num_gpus() > 0)
    kmeanspp_max_points: int = 16384  # k-means++ seeds on at most this many rows of a node
    tiny_cluster_size: int = 5  # clusters with 1..this-1 training points count as tiny in stats

    def __post_init__(self) -> None:
        for name in ("depth", "k", "niter", "nredo", "points_per_centroid", "kmeanspp_max_points"):
            if getattr(self, name) < 1:
                raise ValueError(f"HKMeansConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.k < 2:
            raise ValueError(f"HKMeansConfig.k must be >= 2, got {self.k}")
        if self.init not in ("kmeans++", "random"):
            raise ValueError(
                f"HKMeansConfig.init must be 'kmeans++' or 'random', got {self.init!r}"
            )
        if self.k**self.depth >= 2**31:
            raise ValueError(f"k**depth = {self.k**self.depth} leaves does not fit int32 ids")

    @property
    def num_leaves(self) -> int:
        """Vocabulary size k**depth."""
        return self.k**self.depth


@dataclass
class ReportConfig:
    grid_words: int = 16  # visual words shown as rows of the thumbnail grid (0 = no grid)
    thumbs_per_word: int = 8  # columns: the clips nearest to each shown word's centroid
    tiny_cluster_size: int = HKMeansConfig.tiny_cluster_size  # 1..this-1 clips: tiny (0: empty)
    histogram_bins: int = 50  # bins of the cluster-size histogram

    def validate(self) -> None:
        check_range("grid_words", self.grid_words, -1, 1024)
        check_range("thumbs_per_word", self.thumbs_per_word, 0, 64)
        check_range("tiny_cluster_size", self.tiny_cluster_size, 0)
        check_range("histogram_bins", self.histogram_bins, 0, 10_000)


@dataclass
class ClusterConfig:
    # The k-means knobs default to HKMeansConfig's (one source of defaults); `hkmeans()` below is
    # the one place a ClusterConfig becomes the HKMeansConfig that pipeline.hkmeans runs.
    depth: int = HKMeansConfig.depth  # levels of the hierarchy (VideoBERT: 4)
    k: int = HKMeansConfig.k  # clusters per node (VideoBERT: 12) -> k**depth = 20,736 words
    points_per_centroid: int = HKMeansConfig.points_per_centroid  # sample: k**depth * this clips
    niter: int = HKMeansConfig.niter  # Lloyd iterations per node
    nredo: int = HKMeansConfig.nredo  # k-means restarts per node; the lowest inertia is kept
    init: Literal["kmeans++", "random"] = HKMeansConfig.init  # seeding (random = faiss's own)
    seed: int = HKMeansConfig.seed  # drives the training sample (reservoir) and every k-means
    use_gpu: bool | None = HKMeansConfig.use_gpu  # None: GPU when faiss sees one
    assign_batch_size: int = 65536  # clips per nearest-centroid search when assigning tokens
    report: ReportConfig = field(default_factory=ReportConfig)
    # Fit even when the vocabulary has more words than the corpus has clips (most words would
    # stay empty); without it that is an error that suggests a smaller depth / k.
    force: bool = False
    progress: bool = True  # progress bar on stderr

    # Fields that change the vocabulary: a rerun into the same output directory must keep them.
    # (use_gpu, batch size and report settings change how, not what, so they may differ.)
    VOCAB_FIELDS = ("depth", "k", "points_per_centroid", "niter", "nredo", "init", "seed")
    # Fields handed to HKMeansConfig under the same name.
    HKMEANS_FIELDS = (*VOCAB_FIELDS, "use_gpu")

    @property
    def num_words(self) -> int:
        return self.k**self.depth

    def hkmeans(self) -> HKMeansConfig:
        """The hierarchical k-means settings of this config (tiny = report.tiny_cluster_size)."""
        same = {name: getattr(self, name) for name in self.HKMEANS_FIELDS}
        return HKMeansConfig(**same, tiny_cluster_size=self.report.tiny_cluster_size)

    def validate(self) -> None:
        check_range("depth", self.depth, 0, 8)
        check_range("k", self.k, 1, 4096)
        check_range("points_per_centroid", self.points_per_centroid, 0)
        check_range("niter", self.niter, 0, 10_000)
        check_range("nredo", self.nredo, 0, 1000)
        check_range("assign_batch_size", self.assign_batch_size, 0)
        if self.num_words >= 2**31:
            raise ConfigError(f"k: k**depth = {self.num_words} words do not fit int32 tokens")
