"""`vlpipe cluster`: prep shards -> a visual vocabulary and one token per clip (methods.md 1.1).

Three passes over the prep output, each resumable:

1. Fit. Reservoir-sample at most `k**depth * points_per_centroid` clip features (bounded memory,
   fixed seed), fit hierarchical k-means (`pipeline.hkmeans`) and write the vocabulary:
   `centroids.npy` float32 [V, F] (leaf centroids, V = k**depth), the upper levels, `hkmeans.json`,
   `cluster_config.yaml`, and last `vocab.json`, the commit marker: a rerun with the same
   vocabulary settings loads it instead of refitting; other settings are a ConfigError.
2. Assign. Every clip gets the id of its nearest leaf centroid. Input shards are never rewritten:
   each gets a token sidecar (format and writer: `pipeline.visual_words`, which the pretraining
   loader reads too) whose record names the shard's sha256 and the vocabulary's, so a rerun skips
   exactly the shards already done with this vocabulary.
3. Report (`data_prep.cluster_report`): word usage, inertia per level, a cluster-size histogram
   and a grid of the clips nearest to sampled words.

Prep shards are read by `data_prep.cluster_input`, which refuses samples of another feature space
(ClusterError): tokens of one vocabulary only mean something for one set of S3D features.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.cluster_input import (
    ClusterError,
    ShardSample,
    check_signature,
    feature_signature,
    iter_shard,
)
from data_prep.cluster_report import NearestClips, choose_grid_words, write_report
from pipeline.cluster_config import ClusterConfig
from pipeline.config import ConfigError, save_config
from pipeline.hkmeans import HierarchicalKMeans
from pipeline.io import atomic_write_json, file_sha256, read_jsonl
from pipeline.shards import shard_urls
from pipeline.visual_words import (
    shard_name,
    token_records,
    valid_record,
    write_tokens,
)

log = logging.getLogger("vlpipe.cluster")

VOCAB_FORMAT = "vlpipe.vocab"


class ReservoirSample:
    """Uniform sample of at most `capacity` rows of a stream (Algorithm R), memory O(capacity)."""

    def __init__(self, capacity: int, seed: int) -> None:
        self.capacity, self.rng = capacity, np.random.default_rng(seed)
        self.buf: np.ndarray | None = None  # float16 [capacity, F]: features are float16 already
        self.filled = self.seen = 0

    def add(self, rows: np.ndarray) -> None:
        """Offer rows [t, F] in stream order."""
        if self.buf is None:  # np.empty is lazy: untouched pages of a large bound cost nothing
            self.buf = np.empty((self.capacity, rows.shape[1]), dtype=np.float16)
        take = min(rows.shape[0], self.capacity - self.filled)
        self.buf[self.filled : self.filled + take] = rows[:take]
        self.filled += take
        rest = rows[take:]
        if rest.shape[0]:
            # row with global index i replaces slot j ~ U{0..i} when j < capacity
            j = self.rng.integers(0, self.seen + take + np.arange(rest.shape[0]) + 1)
            src = np.nonzero(j < self.capacity)[0]
            # a later row drawing the same slot overwrites an earlier one; numpy promises no
            # order for repeated fancy-index writes, so keep the last draw of each slot explicitly
            slots, first_rev = np.unique(j[src][::-1], return_index=True)
            self.buf[slots] = rest[src[::-1][first_rev]]
        self.seen += rows.shape[0]

    def rows(self) -> np.ndarray:
        """float32 [min(seen, capacity), F]."""
        if self.buf is None:
            return np.zeros((0, 0), dtype=np.float32)
        return self.buf[: self.filled].astype(np.float32)


# ------------------------------------------------------------------------------------ vocabulary
def vocab_settings(cfg: ClusterConfig) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in ClusterConfig.VOCAB_FIELDS}


def load_vocab(cfg: ClusterConfig, out: Path) -> tuple[HierarchicalKMeans, dict] | None:
    """The committed vocabulary of `out` if any; ConfigError if it was made with other settings."""
    path = out / "vocab.json"
    if not path.exists():
        return None
    vocab = json.loads(path.read_text())
    old, new = vocab.get("config", {}), vocab_settings(cfg)
    diffs = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in new.items() if old.get(k) != v]
    if diffs:
        raise ConfigError(
            f"{out} holds a vocabulary made with other settings ({'; '.join(diffs)}); "
            "use a new --output directory or the original settings"
        )
    if file_sha256(out / "centroids.npy") != vocab["vocab_sha256"]:
        raise ClusterError(f"{out / 'centroids.npy'} does not match {path} (modified?)")
    return HierarchicalKMeans.load(out, use_gpu=cfg.use_gpu), vocab


def vocabulary_size_problem(cfg: ClusterConfig, clips: int, dim: int) -> tuple[str, bool] | None:
    """(message, is_error) when `cfg.num_words` words do not suit a corpus of `clips` clips.

    A word needs clips to mean anything (VideoBERT: 20,736 words, methods.md 1.1, for 23,186 h of
    video, 1.2, i.e. ~55M clips of 1.5 s). More words than clips leaves words empty for sure: an error unless `cfg.force`.
    Fewer than `report.tiny_cluster_size` clips per word on average (the report's "tiny" bound)
    is allowed with a warning. The message names the numbers and a depth or k that fits.
    """
    words, per_word = cfg.num_words, max(cfg.report.tiny_cluster_size, 1)
    if words * per_word <= clips:
        return None
    fit = max(clips // per_word, 1)  # the most words that still get `per_word` clips each
    depth = next((d for d in range(cfg.depth, 0, -1) if cfg.k**d <= fit), 0)
    k = int(fit ** (1 / cfg.depth))
    while (k + 1) ** cfg.depth <= fit:  # float root: 64 ** (1 / 3) is 3.9999...
        k += 1
    options = [f"depth={depth} ({cfg.k**depth} words)"] * (depth > 0)
    options += [f"k={k} ({k**cfg.depth} words at depth {cfg.depth})"] * (k >= 2)
    suggest = (" or ".join(options) or "fewer words") + f" gives at least {per_word} clips per word"
    head = f"depth/k: {cfg.depth} x {cfg.k} = {words:,} visual words for {clips:,} clips"
    if words > clips:
        size_mb = words * dim * 4 / 1e6
        return (
            f"{head}: at least {words - clips:,} words would stay empty ({size_mb:,.0f} MB of leaf "
            f"centroids); {suggest}, or set force=true to fit anyway",
            not cfg.force,
        )
    return f"{head} ({clips / words:.1f} clips per word): many words will be tiny; {suggest}", False


def fit_vocab(
    cfg: ClusterConfig,
    urls: list[str],
    shards_dir: Path,
    out: Path,
    manifest_sha: str | None,
    notes: list[str],
) -> tuple[HierarchicalKMeans, dict]:
    """Pass 1: reservoir-sample clip features, fit, and commit the vocabulary into `out`.

    Raises ConfigError, before anything is written, when the vocabulary has more words than the
    corpus has clips (unless cfg.force); a milder mismatch is logged and added to `notes`.
    """
    from tqdm import tqdm

    sample = ReservoirSample(cfg.num_words * cfg.points_per_centroid, cfg.seed)
    ref, ref_where, dim, n_samples = None, "", None, 0
    for url in tqdm(urls, desc="cluster: sample", disable=not cfg.progress, unit="shard"):
        for s in iter_shard(url):
            where = f"{url}: sample {s.key}"
            sig = feature_signature(s.meta, where)
            if ref is None:
                ref, ref_where, dim = sig, where, s.feat.shape[1]
            check_signature(sig, ref, where, ref_where)
            if s.feat.shape[1] != dim:
                raise ClusterError(f"{where}: feature width {s.feat.shape[1]}, expected {dim}")
            sample.add(s.feat)
            n_samples += 1
    if sample.filled == 0:
        raise ClusterError(f"{shards_dir}: no clips to cluster in {len(urls)} shard(s)")
    if problem := vocabulary_size_problem(cfg, sample.seen, dim):
        message, is_error = problem
        if is_error:
            raise ConfigError(message)
        log.warning("%s%s", message, " (force=true: fitting anyway)" * cfg.force)
        notes.append(message)
    t0 = time.perf_counter()
    x = sample.rows()
    sample.buf = None  # free the float16 reservoir before k-means allocates
    log.info("fitting %d x %d hierarchical k-means on %d x %d", cfg.depth, cfg.k, *x.shape)
    hk = HierarchicalKMeans(cfg.hkmeans()).fit(x)
    hk.save(out)  # not atomic: vocab.json, written last, marks the vocabulary complete
    save_config(cfg, out / "cluster_config.yaml")
    vocab = {
        "format": VOCAB_FORMAT,
        "version": 1,
        "depth": cfg.depth,
        "k": cfg.k,
        "num_words": cfg.num_words,
        "feature_dim": int(dim),
        "extraction": ref["extraction"],
        "weights": ref["weights"],
        "prep_dir": str(shards_dir.resolve()),
        "prep_manifest_sha256": manifest_sha,
        "seed": cfg.seed,
        "config": vocab_settings(cfg),
        "training_points": int(x.shape[0]),
        "corpus_clips": int(sample.seen),
        "corpus_samples": n_samples,
        "fit_seconds": round(time.perf_counter() - t0, 3),
        "level_stats": [
            {k: v for k, v in st.items() if k != "sizes"} for st in hk.level_stats
        ],  # per-cluster sizes live in hkmeans.json
        "vocab_sha256": file_sha256(out / "centroids.npy"),
    }
    atomic_write_json(out / "vocab.json", vocab)
    return hk, vocab


# ------------------------------------------------------------------------------------ driver
def run_cluster(cfg: ClusterConfig, shards_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Fit (or reuse) the vocabulary of `shards_dir`, tokenise every shard, write the report.

    Returns the summary dict that `print_cluster_summary` shows. Raises ClusterError on bad or
    mixed input shards, and ConfigError when `out_dir` holds a vocabulary with other settings or
    when the vocabulary would have more words than the corpus has clips (see `force`).
    """
    from tqdm import tqdm

    t_start = time.perf_counter()
    shards_dir, out = Path(shards_dir), Path(out_dir)
    urls = shard_urls(shards_dir)
    if not urls:
        raise ClusterError(f"{shards_dir}: no prep shards (shard-*.tar) found")
    for url in urls:
        if not Path(url).is_file():
            raise ClusterError(f"{url}: listed in the prep manifest but missing")
    manifest = shards_dir / "manifest.jsonl"
    manifest_sha = file_sha256(manifest) if manifest.is_file() else None
    shard_sha = {r["name"]: r.get("sha256") for r in read_jsonl(manifest)}
    notes: list[str] = []  # out is created by its first write: a refused run leaves no directory

    loaded = load_vocab(cfg, out)
    fitted = loaded is None
    hk, vocab = fit_vocab(cfg, urls, shards_dir, out, manifest_sha, notes) if fitted else loaded
    if not fitted and vocab.get("prep_manifest_sha256") != manifest_sha:
        notes.append(
            "the prep manifest changed since the vocabulary was fit; new shards are tokenised "
            "with the existing vocabulary"
        )
    if vocab["weights"] == "random-init":
        notes.append("features come from a RANDOM-weight S3D: the vocabulary is only for testing")
    ref = {"extraction": vocab["extraction"], "weights": vocab["weights"]}
    centroids = hk.leaf_centroids

    grid_words = choose_grid_words(cfg, hk, vocab)
    collector = NearestClips(grid_words, centroids, cfg.report.thumbs_per_word)

    # Pass 2: tokens, shard by shard; a shard is done when its record matches shard + vocabulary.
    records = token_records(out)
    assigned, skipped, current = [], [], {}
    for url in tqdm(urls, desc="cluster: assign", disable=not cfg.progress, unit="shard"):
        name = shard_name(url)
        sha = shard_sha.get(Path(url).name) or file_sha256(Path(url))
        if valid_record(out, url, records.get(name), sha, vocab["vocab_sha256"]):
            skipped.append(url)
            current[name] = records[name]
            continue
        tokens = assign_shard(cfg, hk, url, ref, collector if len(grid_words) else None)
        current[name] = write_tokens(out, url, tokens, sha, vocab["vocab_sha256"])
        assigned.append(url)

    report = write_report(cfg, out, hk, vocab, urls, current, skipped, collector, notes)
    return {
        "output": str(out),
        "fitted": fitted,
        "num_words": vocab["num_words"],
        "depth": vocab["depth"],
        "k": vocab["k"],
        "training_points": vocab["training_points"],
        "weights": vocab["weights"],
        "shards": len(urls),
        "shards_assigned": len(assigned),
        "shards_skipped": len(skipped),
        "samples": sum(r["samples"] for r in current.values()),
        "clips": sum(r["clips"] for r in current.values()),
        **report,
        "notes": notes,
        "wall_s": round(time.perf_counter() - t_start, 3),
    }


def assign_shard(
    cfg: ClusterConfig,
    hk: HierarchicalKMeans,
    url: str,
    ref: dict,
    collector: NearestClips | None,
) -> dict[str, np.ndarray]:
    """Tokens of every sample of one shard: key -> int32 [T]; batches clips across samples."""
    tokens: dict[str, np.ndarray] = {}
    pending: list[ShardSample] = []

    def flush() -> None:
        if not pending:
            return
        x = np.concatenate([s.feat for s in pending]).astype(np.float32)  # [sum T, F]
        words = hk.assign(x, cfg.assign_batch_size) if x.shape[0] else np.zeros(0, np.int32)
        a = 0
        for s in pending:
            t = s.feat.shape[0]
            tokens[s.key] = words[a : a + t].astype(np.int32)
            if collector is not None:
                collector.add(shard_name(url), s, x[a : a + t], tokens[s.key])
            a += t
        pending.clear()

    n_rows, seen = 0, set()
    for s in iter_shard(url, thumbs=collector is not None):
        where = f"{url}: sample {s.key}"
        check_signature(feature_signature(s.meta, where), ref, where, "the vocabulary")
        if s.feat.shape[1] != hk.dim:
            raise ClusterError(f"{where}: feature width {s.feat.shape[1]}, vocabulary {hk.dim}")
        if s.key in seen:
            raise ClusterError(f"{where}: duplicate sample key")
        seen.add(s.key)
        pending.append(s)
        n_rows += s.feat.shape[0]
        if n_rows >= cfg.assign_batch_size:
            flush()
            n_rows = 0
    flush()
    return tokens


def print_cluster_summary(summary: dict[str, Any]) -> None:
    """The end-of-run table: vocabulary, shards done / skipped, word usage, report paths."""
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    t = Table(title=f"vlpipe cluster -> {summary['output']}", show_header=False)
    s = summary
    t.add_row("vocabulary", f"{s['depth']} x {s['k']} = {s['num_words']} words")
    t.add_row("fitted this run", "yes" if s["fitted"] else "no (reused)")
    t.add_row("training points", str(s["training_points"]))
    t.add_row("shards tokenised / skipped", f"{s['shards_assigned']} / {s['shards_skipped']}")
    t.add_row("samples / clips", f"{s['samples']} / {s['clips']}")
    if "words_used" in s:
        t.add_row("words used", str(s["words_used"]))
        t.add_row("empty / tiny words", f"{s['empty_words']} / {s['tiny_words']}")
    t.add_row("report", str(s.get("report", "")))
    t.add_row("wall time", f"{s['wall_s']:.1f} s")
    console.print(t)
    for note in s["notes"]:
        console.print(f"[yellow]note: {note}")
