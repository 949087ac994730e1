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
3. Report. `report.json`, `report.md`, a cluster-size histogram and a grid of the clips nearest
   to a sample of words (VideoBERT shows such grids to judge coherence, methods.md 1.1 "how k and
   d were chosen"), from the `thumbs.npy` thumbnails prep stores.

Samples whose feature settings (`meta.json` "extraction" and "weights") differ from the rest are
refused with a ClusterError: tokens of one vocabulary only mean something for one feature space.
"""

from __future__ import annotations

import io
import json
import logging
import re
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cluster_config import ClusterConfig
from pipeline.config import ConfigError, save_config, to_dict
from pipeline.hkmeans import HierarchicalKMeans, HKMeansConfig
from pipeline.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_jsonl
from pipeline.shards import file_digest, shard_urls
from pipeline.visual_words import (
    load_tokens,
    shard_name,
    token_records,
    valid_record,
    write_tokens,
)

log = logging.getLogger("vlpipe.cluster")

VOCAB_FORMAT = "vlpipe.vocab"
# Extraction keys that cannot change feat.npy (input discovery only): mixing them is harmless.
IGNORED_EXTRACTION_KEYS = ("extensions",)
# webdataset's rule: the key is the member path up to the first dot of its basename.
MEMBER_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


class ClusterError(ValueError):
    """Bad or inconsistent input shards: the message names the file (and sample) and the cause."""


@dataclass
class ShardSample:
    """What clustering reads of one prep sample (T clips, F feature width, s thumbnail side)."""

    key: str
    feat: np.ndarray  # float16 [T, F]
    meta: dict[str, Any]
    thumbs: np.ndarray | None  # uint8 [T, s, s, 3], or None when prep stored none


def iter_shard(url: str, thumbs: bool = False) -> Iterator[ShardSample]:
    """Samples of one prep shard; reads only feat.npy, meta.json (and thumbs.npy if asked).

    tarfile rather than a webdataset pipeline: it lets us skip the large optional fmap.npy
    members without decoding them. Raises ClusterError naming the shard and key on bad data.
    """
    wanted = {"feat.npy", "meta.json"} | ({"thumbs.npy"} if thumbs else set())
    try:
        tar = tarfile.open(url, "r")
    except (OSError, tarfile.TarError) as e:
        raise ClusterError(f"{url}: cannot open shard ({e})") from None
    with tar:
        key, parts = None, {}
        try:
            for member in tar:
                m = MEMBER_RE.match(member.name)
                if not member.isfile() or m is None:
                    continue
                if m.group(1) != key:
                    if key is not None:
                        yield _make_sample(url, key, parts)
                    key, parts = m.group(1), {}
                if m.group(2) in wanted:
                    parts[m.group(2)] = tar.extractfile(member).read()
        except tarfile.TarError as e:
            raise ClusterError(f"{url}: corrupt shard after sample {key} ({e})") from None
        if key is not None:
            yield _make_sample(url, key, parts)


def _make_sample(url: str, key: str, parts: dict[str, bytes]) -> ShardSample:
    for need in ("feat.npy", "meta.json"):
        if need not in parts:
            raise ClusterError(f"{url}: sample {key} has no {need}")
    try:
        feat = np.load(io.BytesIO(parts["feat.npy"]), allow_pickle=False)
        meta = json.loads(parts["meta.json"])
        thumbs = parts.get("thumbs.npy")
        thumbs = None if thumbs is None else np.load(io.BytesIO(thumbs), allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ClusterError(f"{url}: sample {key}: unreadable member ({e})") from None
    if feat.ndim != 2 or not np.isfinite(feat).all():
        raise ClusterError(f"{url}: sample {key}: feat.npy must be finite [T, F], got {feat.shape}")
    if thumbs is not None and (thumbs.ndim != 4 or thumbs.shape[0] != feat.shape[0]):
        log.warning(
            "%s: sample %s: thumbs.npy %s does not match feat; ignored", url, key, thumbs.shape
        )
        thumbs = None
    return ShardSample(key, feat, meta, thumbs)


def feature_signature(meta: dict[str, Any], where: str) -> dict[str, Any]:
    """The settings that define a sample's feature space: extraction settings + S3D weights."""
    if not isinstance(meta.get("extraction"), dict):
        raise ClusterError(f"{where}: meta.json has no 'extraction' settings")
    extraction = {k: v for k, v in meta["extraction"].items() if k not in IGNORED_EXTRACTION_KEYS}
    return {"extraction": extraction, "weights": meta.get("weights")}


def check_signature(sig: dict, ref: dict, where: str, ref_where: str) -> None:
    if sig == ref:
        return
    diffs = [f"weights {ref['weights']!r} vs {sig['weights']!r}"] * (
        sig["weights"] != ref["weights"]
    )
    keys = sorted(set(sig["extraction"]) | set(ref["extraction"]))
    diffs += [
        f"extraction.{k} {ref['extraction'].get(k)!r} vs {sig['extraction'].get(k)!r}"
        for k in keys
        if sig["extraction"].get(k) != ref["extraction"].get(k)
    ]
    raise ClusterError(
        f"{where} was extracted with other settings than {ref_where} ({'; '.join(diffs)}); "
        "one vocabulary needs one feature space: cluster each prep output separately"
    )


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


class NearestClips:
    """For each chosen word, the `m` clips with thumbnails nearest to its centroid."""

    def __init__(self, words: np.ndarray, centroids: np.ndarray, m: int) -> None:
        self.words, self.centroids, self.m = words, centroids, m
        self.best: dict[int, list[tuple[float, str, str, int, np.ndarray]]] = {
            int(w): [] for w in words
        }

    def add(self, shard: str, s: ShardSample, x: np.ndarray, tokens: np.ndarray) -> None:
        """x float32 [T, F] and tokens int32 [T] of sample s."""
        if s.thumbs is None:
            return
        for t in np.nonzero(np.isin(tokens, self.words))[0]:
            w = int(tokens[t])
            d2 = float(((x[t] - self.centroids[w]) ** 2).sum())
            cands = self.best[w]
            cands.append((d2, shard, s.key, int(t), s.thumbs[t]))
            if len(cands) > 2 * self.m:  # amortised trim; ties broken by (shard, key, clip)
                cands.sort(key=lambda c: c[:4])
                del cands[self.m :]

    def result(self) -> dict[int, list[tuple[float, str, str, int, np.ndarray]]]:
        return {w: sorted(c, key=lambda c: c[:4])[: self.m] for w, c in self.best.items()}


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
    if file_digest(out / "centroids.npy") != vocab["vocab_sha256"]:
        raise ClusterError(f"{out / 'centroids.npy'} does not match {path} (modified?)")
    return HierarchicalKMeans.load(out, use_gpu=cfg.use_gpu), vocab


def fit_vocab(
    cfg: ClusterConfig, urls: list[str], shards_dir: Path, out: Path, manifest_sha: str | None
) -> tuple[HierarchicalKMeans, dict]:
    """Pass 1: reservoir-sample clip features, fit, and commit the vocabulary into `out`."""
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
    hk_cfg = HKMeansConfig(
        depth=cfg.depth,
        k=cfg.k,
        niter=cfg.niter,
        nredo=cfg.nredo,
        init=cfg.init,
        points_per_centroid=cfg.points_per_centroid,
        seed=cfg.seed,
        use_gpu=cfg.use_gpu,
        tiny_cluster_size=cfg.report.tiny_cluster_size,
    )
    t0 = time.perf_counter()
    x = sample.rows()
    sample.buf = None  # free the float16 reservoir before k-means allocates
    log.info("fitting %d x %d hierarchical k-means on %d x %d", cfg.depth, cfg.k, *x.shape)
    hk = HierarchicalKMeans(hk_cfg).fit(x)
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
        "vocab_sha256": file_digest(out / "centroids.npy"),
    }
    atomic_write_json(out / "vocab.json", vocab)
    return hk, vocab


# ------------------------------------------------------------------------------------ driver
def run_cluster(cfg: ClusterConfig, shards_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Fit (or reuse) the vocabulary of `shards_dir`, tokenise every shard, write the report.

    Returns the summary dict that `print_cluster_summary` shows. Raises ClusterError on bad or
    mixed input shards and ConfigError when `out_dir` holds a vocabulary with other settings.
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
    manifest_sha = file_digest(manifest) if manifest.is_file() else None
    shard_sha = {r["name"]: r.get("sha256") for r in read_jsonl(manifest)}
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []

    loaded = load_vocab(cfg, out)
    fitted = loaded is None
    hk, vocab = fit_vocab(cfg, urls, shards_dir, out, manifest_sha) if fitted else loaded
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
        sha = shard_sha.get(Path(url).name) or file_digest(Path(url))
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


# ------------------------------------------------------------------------------------ report
def choose_grid_words(cfg: ClusterConfig, hk: HierarchicalKMeans, vocab: dict) -> np.ndarray:
    """A seeded random sample of words that received training points (int64, sorted)."""
    if cfg.report.grid_words == 0 or cfg.report.thumbs_per_word == 0:
        return np.zeros(0, dtype=np.int64)
    if vocab["extraction"].get("thumbnail_size") == 0:
        return np.zeros(0, dtype=np.int64)  # prep stored no thumbnails: nothing to show
    sizes = np.asarray(hk.level_stats[-1]["sizes"])
    candidates = np.nonzero(sizes)[0]
    n = min(cfg.report.grid_words, candidates.shape[0])
    return np.sort(np.random.default_rng(cfg.seed).choice(candidates, n, replace=False))


def word_path(word: int, k: int, depth: int) -> str:
    """Leaf id -> its base-k path, level-0 digit first (`4-0-11-7`)."""
    digits = [(word // k**p) % k for p in range(depth - 1, -1, -1)]
    return "-".join(str(d) for d in digits)


def _png(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def plot_sizes(counts: np.ndarray, train_sizes: np.ndarray, cfg: ClusterConfig, path: Path) -> None:
    """Histogram of clips per word over the corpus and of training points per leaf."""
    from matplotlib.figure import Figure  # object API: no pyplot, no global backend switch (Agg)
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 3.6))
    for ax, data, what in zip(
        fig.subplots(1, 2),
        (counts, train_sizes),
        ("clips (whole corpus)", "training points"),
        strict=True,
    ):
        ax.hist(data, bins=min(cfg.report.histogram_bins, int(data.max()) + 1), color="tab:blue")
        ax.axvline(cfg.report.tiny_cluster_size, color="tab:red", ls="--", lw=1, label="tiny")
        empty = int((data == 0).sum())
        ax.set(xlabel=f"{what} per word", ylabel="words", title=f"{empty} empty of {len(data)}")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    _png(fig, path)


def plot_grid(nearest: dict, counts: np.ndarray, k: int, depth: int, path: Path) -> None:
    """Rows = words, columns = their nearest clips' middle frames (VideoBERT-style figure)."""
    from matplotlib.figure import Figure

    words = [w for w, c in nearest.items() if c]
    cols = max(len(nearest[w]) for w in words)
    s = nearest[words[0]][0][4].shape[0]
    pad = max(s // 16, 1)
    mosaic = np.full((len(words) * (s + pad), cols * (s + pad), 3), 255, dtype=np.uint8)
    for r, w in enumerate(words):
        for c, cand in enumerate(nearest[w]):
            thumb = cand[4]
            if thumb.shape[:2] == (s, s):
                mosaic[r * (s + pad) : r * (s + pad) + s, c * (s + pad) : c * (s + pad) + s] = thumb
    cell = max(0.6, s / 100)
    fig = Figure(figsize=(cell * cols, 0.4 + cell * len(words)))
    ax = fig.subplots()
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_yticks([r * (s + pad) + s / 2 for r in range(len(words))])
    ax.set_yticklabels([f"{w} ({word_path(w, k, depth)}) n={counts[w]}" for w in words])
    ax.set_xticks([])
    ax.set_title("clips nearest to each visual word's centroid")
    _png(fig, path)


def write_report(
    cfg: ClusterConfig,
    out: Path,
    hk: HierarchicalKMeans,
    vocab: dict,
    urls: list[str],
    current: dict[str, dict],
    skipped: list[str],
    collector: NearestClips,
    notes: list[str],
) -> dict[str, Any]:
    """Pass 3: report.json, report.md, cluster_sizes.png, word_grid.png; returns summary fields.

    Skipped when nothing changed since the last report (same vocabulary, shards and settings).
    Shards tokenised this run fed `collector` already; skipped ones are scanned for it here.
    """
    inputs = {
        "vocab_sha256": vocab["vocab_sha256"],
        "shards": {n: r["shard_sha256"] for n, r in sorted(current.items())},
        "report": to_dict(cfg.report),
    }
    old_path = out / "report.json"
    if len(skipped) == len(urls) and old_path.exists():
        old = json.loads(old_path.read_text())
        if old.get("inputs") == inputs:
            return {**old["summary"], "report": "up to date"}

    counts = np.zeros(vocab["num_words"], dtype=np.int64)
    for url in urls:
        for t in load_tokens(out, url).values():
            counts += np.bincount(t, minlength=counts.shape[0])
    if len(collector.words):
        for url in skipped:
            tokens = load_tokens(out, url)
            for s in iter_shard(url, thumbs=True):
                x = s.feat.astype(np.float32)
                collector.add(shard_name(url), s, x, tokens[s.key])
    tiny = cfg.report.tiny_cluster_size
    train_sizes = np.asarray(hk.level_stats[-1]["sizes"])
    plot_sizes(counts, train_sizes, cfg, out / "cluster_sizes.png")

    nearest = collector.result()
    grid = any(nearest.values())
    if grid:
        plot_grid(nearest, counts, vocab["k"], vocab["depth"], out / "word_grid.png")
    else:
        (out / "word_grid.png").unlink(missing_ok=True)
        if cfg.report.grid_words and cfg.report.thumbs_per_word:
            notes.append("no thumbnails in the prep shards (features.thumbnail_size=0?): no grid")

    p = counts[counts > 0] / max(counts.sum(), 1)
    summary = {
        "words_used": int((counts > 0).sum()),
        "empty_words": int((counts == 0).sum()),
        "tiny_words": int(((counts > 0) & (counts < tiny)).sum()),
        "largest_word": int(counts.max()),
        # exp(entropy) of word usage: the number of equally used words with the same spread
        "effective_vocabulary": round(float(np.exp(-(p * np.log(p)).sum())), 2),
        "grid": grid,
    }
    levels = [
        {
            "level": st["level"],
            "clusters": st["n_clusters"],
            "inertia": st["inertia"],
            "mean_sq_distance": st["inertia"] / max(vocab["training_points"], 1),
            "empty": int((np.asarray(st["sizes"]) == 0).sum()),
            "tiny": int(((np.asarray(st["sizes"]) > 0) & (np.asarray(st["sizes"]) < tiny)).sum()),
            "unclustered_nodes": st.get("n_unclustered_nodes", 0),
        }
        for st in hk.level_stats
    ]
    report = {
        "inputs": inputs,
        "summary": summary,
        "vocabulary": {k: vocab[k] for k in ("depth", "k", "num_words", "feature_dim", "seed")},
        "training_points": vocab["training_points"],
        "weights": vocab["weights"],
        "levels": levels,
        "tiny_cluster_size": tiny,
        "corpus_counts_histogram": np.bincount(np.minimum(counts, 100)).tolist(),  # 100 = 100+
        "grid": [
            {
                "word": w,
                "path": word_path(w, vocab["k"], vocab["depth"]),
                "clips": [
                    {"shard": c[1], "key": c[2], "clip": c[3], "sq_distance": c[0]} for c in cands
                ],
            }
            for w, cands in nearest.items()
        ],
        "notes": notes,
    }
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", report_markdown(report, vocab))
    return {**summary, "report": str(out / "report.md")}


def report_markdown(report: dict, vocab: dict) -> str:
    s, t = report["summary"], report["tiny_cluster_size"]
    ext = vocab["extraction"]
    lines = [
        "# Visual vocabulary report",
        "",
        f"- vocabulary: {vocab['depth']} levels x k = {vocab['k']} -> {vocab['num_words']} words, "
        f"feature width {vocab['feature_dim']}, seed {vocab['seed']}",
        f"- trained on {vocab['training_points']} of {vocab['corpus_clips']} clips",
        f"- features: S3D {ext.get('s3d_variant')} {ext.get('s3d_layer')}, weights "
        f"`{vocab['weights']}`, {ext.get('fps')} fps, {ext.get('clip_seconds')} s clips",
        f"- prep manifest sha256 `{vocab['prep_manifest_sha256']}`",
        "",
        "## Training inertia per level",
        "",
        f"| level | clusters | inertia | mean sq. distance | empty | tiny (< {t}) | unclustered |",
        "|---|---|---|---|---|---|---|",
    ]
    for lv in report["levels"]:
        lines.append(
            f"| {lv['level']} | {lv['clusters']} | {lv['inertia']:.4g} | "
            f"{lv['mean_sq_distance']:.4g} | {lv['empty']} | {lv['tiny']} | "
            f"{lv['unclustered_nodes']} |"
        )
    lines += [
        "",
        "## Word usage over the corpus",
        "",
        f"| words used | empty | tiny (< {t} clips) | largest word | effective vocabulary |",
        "|---|---|---|---|---|",
        f"| {s['words_used']} | {s['empty_words']} | {s['tiny_words']} | {s['largest_word']} | "
        f"{s['effective_vocabulary']} |",
        "",
        "![cluster sizes](cluster_sizes.png)",
        "",
        "## Clips nearest to sampled words",
        "",
        "![word grid](word_grid.png)" if s["grid"] else "No grid: see the notes.",
    ]
    if report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"
