"""Pass 3 of `vlpipe cluster`: the vocabulary report (methods.md 1.1, "how k and d were chosen").

`report.json`, `report.md`, a cluster-size histogram and a grid of the clips nearest to a sample
of words, from the `thumbs.npy` thumbnails prep stores: VideoBERT's authors judged k and d by
looking at such grids (coherence and representativeness of the clusters).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.cluster_input import ShardSample, iter_shard
from pipeline.cluster_config import ClusterConfig
from pipeline.config import to_dict
from pipeline.hkmeans import HierarchicalKMeans
from pipeline.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from pipeline.visual_words import load_tokens, shard_name


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
