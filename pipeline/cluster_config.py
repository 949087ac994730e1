"""Settings of `vlpipe cluster` (defaults follow VideoBERT, methods.md 1.1: d = 4 levels, k = 12)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.config import ConfigError, check_range


@dataclass
class ReportConfig:
    grid_words: int = 16  # visual words shown as rows of the thumbnail grid (0 = no grid)
    thumbs_per_word: int = 8  # columns: the clips nearest to each shown word's centroid
    tiny_cluster_size: int = 5  # a word with 1..this-1 clips counts as tiny (0 clips: empty)
    histogram_bins: int = 50  # bins of the cluster-size histogram

    def validate(self) -> None:
        check_range("grid_words", self.grid_words, -1, 1024)
        check_range("thumbs_per_word", self.thumbs_per_word, 0, 64)
        check_range("tiny_cluster_size", self.tiny_cluster_size, 0)
        check_range("histogram_bins", self.histogram_bins, 0, 10_000)


@dataclass
class ClusterConfig:
    depth: int = 4  # levels of the hierarchy (VideoBERT: 4)
    k: int = 12  # clusters per node (VideoBERT: 12) -> k**depth = 20,736 visual words
    points_per_centroid: int = 64  # training sample bound: k**depth * this clips (memory!)
    niter: int = 20  # Lloyd iterations per node
    nredo: int = 1  # k-means restarts per node; the lowest inertia is kept
    init: Literal["kmeans++", "random"] = "kmeans++"  # node seeding (random = faiss's own)
    seed: int = 0  # drives the training sample (reservoir) and every node's k-means
    use_gpu: bool | None = None  # None: GPU when faiss sees one
    assign_batch_size: int = 65536  # clips per nearest-centroid search when assigning tokens
    report: ReportConfig = field(default_factory=ReportConfig)
    progress: bool = True  # progress bar on stderr

    # Fields that change the vocabulary: a rerun into the same output directory must keep them.
    # (use_gpu, batch size and report settings change how, not what, so they may differ.)
    VOCAB_FIELDS = ("depth", "k", "points_per_centroid", "niter", "nredo", "init", "seed")

    @property
    def num_words(self) -> int:
        return self.k**self.depth

    def validate(self) -> None:
        check_range("depth", self.depth, 0, 8)
        check_range("k", self.k, 1, 4096)
        check_range("points_per_centroid", self.points_per_centroid, 0)
        check_range("niter", self.niter, 0, 10_000)
        check_range("nredo", self.nredo, 0, 1000)
        check_range("assign_batch_size", self.assign_batch_size, 0)
        if self.num_words >= 2**31:
            raise ConfigError(f"k: k**depth = {self.num_words} words do not fit int32 tokens")
