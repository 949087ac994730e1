"""`vlpipe cluster` on prep-style shards written in the test (no real prep run).

Features are drawn around a two-level tree of centres (3 far-apart groups of 3 sub-centres), so a
2 x 3 hierarchical k-means must put each true cluster into its own leaf.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from data_prep.cluster import (
    ClusterError,
    ReservoirSample,
    iter_shard,
    print_cluster_summary,
    run_cluster,
)
from pipeline.cluster_config import ClusterConfig
from pipeline.config import ConfigError, load_config
from pipeline.io import file_sha256
from pipeline.shards import npy_bytes, shard_urls
from pipeline.visual_words import load_tokens, tokens_path

F = 64  # feature width of the synthetic corpus
REPO = Path(__file__).resolve().parent.parent
EXTRACTION = {
    "decoder": "pyav",
    "fps": 20.0,
    "clip_seconds": 1.5,
    "size": 224,
    "extensions": [".mp4"],
    "frames_per_clip": 30,
    "spatial": False,
    "thumbnail_size": 8,
    "s3d_variant": "torchvision",
    "s3d_layer": "Mixed_5c",
    "pooling": "mean over T,H,W (feat); mean over T (fmap)",
}


@pytest.fixture(autouse=True)
def one_faiss_thread():
    """Nodes here hold ~100 points: OpenMP start-up on shared cores costs more than the work."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def true_centres(seed: int = 0) -> np.ndarray:
    """[9, F]: 3 groups far apart (scale 10), 3 sub-centres each (scale 3)."""
    rng = np.random.default_rng(seed)
    groups = rng.normal(0, 10, (3, F))
    return np.concatenate([g + rng.normal(0, 3, (3, F)) for g in groups]).astype(np.float32)


def write_prep_dir(
    out: Path,
    num_shards: int = 3,
    per_shard: int = 5,
    seed: int = 0,
    thumbs: bool = True,
    extraction: dict | None = None,
    weights: str = "sha256:0123abcd",
    name_offset: int = 0,
) -> dict[str, np.ndarray]:
    """Prep-schema shards + manifest.jsonl; returns key -> true cluster label per clip [T]."""
    rng = np.random.default_rng(seed + 1)
    centres = true_centres()
    palette = rng.integers(0, 256, (9, 3))
    labels_of: dict[str, np.ndarray] = {}
    out.mkdir(parents=True, exist_ok=True)
    manifest = []
    for sh in range(num_shards):
        name = f"shard-000-{sh + name_offset:06d}.tar"
        keys = []
        with wds.TarWriter(str(out / name)) as tw:
            for i in range(per_shard):
                key = f"video_{sh + name_offset}_{i}-{seed:08x}"
                t = int(rng.integers(20, 40))
                labels = rng.integers(0, 9, t)
                feat = centres[labels] + rng.normal(0, 0.1, (t, F))
                sample = {
                    "__key__": key,
                    "feat.npy": npy_bytes(feat.astype(np.float16)),
                    "clips.json": {"fps": 20.0, "clip_seconds": 1.5, "clips": []},
                    "asr.json": {"source": "none", "sentences": []},
                    "meta.json": {
                        "key": key,
                        "num_clips": t,
                        "extraction": extraction or EXTRACTION,
                        "weights": weights,
                    },
                }
                if thumbs:
                    th = np.broadcast_to(palette[labels][:, None, None, :], (t, 8, 8, 3))
                    sample["thumbs.npy"] = npy_bytes(th.astype(np.uint8))
                tw.write(sample)
                labels_of[key] = labels
                keys.append(key)
        manifest.append({"name": name, "samples": per_shard, "sha256": file_sha256(out / name)})
        manifest[-1]["keys"] = keys
    with open(out / "manifest.jsonl", "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in manifest)
    return labels_of


def small_config(*overrides: str) -> ClusterConfig:
    # 9 leaves x 32 = 288 training rows < ~450 clips: the reservoir really subsamples
    base = ["depth=2", "k=3", "points_per_centroid=32", "progress=false", "report.grid_words=4"]
    return load_config(ClusterConfig, None, [*base, *overrides])


def test_cluster_end_to_end(tmp_path: Path) -> None:
    prep, vocab_dir = tmp_path / "prep", tmp_path / "vocab"
    labels_of = write_prep_dir(prep)
    summary = run_cluster(small_config(), prep, vocab_dir)
    print_cluster_summary(summary)
    assert summary["fitted"] and summary["shards_assigned"] == 3

    vocab = json.loads((vocab_dir / "vocab.json").read_text())
    centroids = np.load(vocab_dir / "centroids.npy", allow_pickle=False)
    assert centroids.dtype == np.float32 and centroids.shape == (9, F)
    assert vocab["num_words"] == 9 and vocab["depth"] == 2 and vocab["k"] == 3
    assert vocab["training_points"] == 288 and vocab["corpus_clips"] > 288
    assert vocab["prep_manifest_sha256"] == file_sha256(prep / "manifest.jsonl")
    assert vocab["weights"] == "sha256:0123abcd" and vocab["extraction"]["fps"] == 20.0
    assert len(vocab["level_stats"]) == 2 and vocab["seed"] == 0
    assert (vocab_dir / "hkmeans.json").exists() and (vocab_dir / "cluster_config.yaml").exists()

    true, got = [], []
    for url in shard_urls(prep):
        tokens = load_tokens(vocab_dir, url)
        samples = list(iter_shard(url))
        assert sorted(tokens) == sorted(s.key for s in samples)
        for s in samples:
            tok = tokens[s.key]
            assert tok.dtype == np.int32 and tok.shape == (s.feat.shape[0],)
            x = s.feat.astype(np.float32)
            brute = ((x[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
            np.testing.assert_array_equal(tok, brute)
            true.append(labels_of[s.key])
            got.append(tok)
    true, got = np.concatenate(true), np.concatenate(got)
    # the planted structure is recovered: true cluster <-> visual word is a bijection
    pairs = set(zip(true.tolist(), got.tolist(), strict=True))
    assert len(pairs) == 9 and len({t for _, t in pairs}) == 9

    report = json.loads((vocab_dir / "report.json").read_text())
    assert [lv["level"] for lv in report["levels"]] == [0, 1]
    assert report["summary"]["words_used"] == 9 and report["summary"]["grid"]
    assert len(report["grid"]) == 4
    for row in report["grid"]:
        dists = [c["sq_distance"] for c in row["clips"]]
        assert len(dists) == 8 and dists == sorted(dists)
    for png in ("cluster_sizes.png", "word_grid.png"):
        assert (vocab_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (vocab_dir / "report.md").read_text()
    assert "word_grid.png" in md and "Training inertia" in md


def test_rerun_is_a_noop_and_resumes(tmp_path: Path) -> None:
    prep, vocab_dir = tmp_path / "prep", tmp_path / "vocab"
    write_prep_dir(prep)
    run_cluster(small_config(), prep, vocab_dir)
    watched = [vocab_dir / "centroids.npy", vocab_dir / "vocab.json", vocab_dir / "report.json"]
    watched += sorted((vocab_dir / "tokens").glob("*.npz"))
    before = {p: p.stat().st_mtime_ns for p in watched}

    first_grid = json.loads((vocab_dir / "report.json").read_text())["grid"]
    again = run_cluster(small_config("assign_batch_size=7"), prep, vocab_dir)
    assert not again["fitted"] and again["shards_skipped"] == 3 and again["shards_assigned"] == 0
    assert again["report"] == "up to date"
    assert {p: p.stat().st_mtime_ns for p in watched} == before

    # a lost sidecar is redone alone, identically (batching across samples changes nothing)
    url = shard_urls(prep)[1]
    old = load_tokens(vocab_dir, url)
    tokens_path(vocab_dir, url).unlink()
    third = run_cluster(small_config("assign_batch_size=7"), prep, vocab_dir)
    assert third["shards_assigned"] == 1 and third["shards_skipped"] == 2
    new = load_tokens(vocab_dir, url)
    assert old.keys() == new.keys() and all(np.array_equal(old[k], new[k]) for k in old)
    # the grid of the partial rerun (clips of skipped shards scanned again) is the same
    assert json.loads((vocab_dir / "report.json").read_text())["grid"] == first_grid

    # killed before the vocabulary was committed: the refit is bitwise identical (same seed and
    # training sample), so the sidecars of that vocabulary stay valid and are kept
    (vocab_dir / "vocab.json").unlink()
    refit = run_cluster(small_config(), prep, vocab_dir)
    assert refit["fitted"] and refit["shards_skipped"] == 3 and refit["shards_assigned"] == 0
    assert json.loads((vocab_dir / "report.json").read_text())["grid"] == first_grid

    # a shard added to the prep output later is tokenised with the existing vocabulary
    write_prep_dir(prep, num_shards=1, seed=5, name_offset=3)
    grown = run_cluster(small_config(), prep, vocab_dir)
    assert not grown["fitted"] and grown["shards_assigned"] == 1
    assert any("manifest changed" in n for n in grown["notes"])
    assert tokens_path(vocab_dir, shard_urls(prep)[3]).exists()


def test_other_config_into_same_dir_errors(tmp_path: Path) -> None:
    prep, vocab_dir = tmp_path / "prep", tmp_path / "vocab"
    write_prep_dir(prep, num_shards=1)
    run_cluster(small_config(), prep, vocab_dir)
    with pytest.raises(ConfigError, match=r"k: 3 -> 4"):
        run_cluster(small_config("k=4"), prep, vocab_dir)
    with pytest.raises(ConfigError, match="seed"):
        run_cluster(small_config("seed=1"), prep, vocab_dir)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"extraction": {**EXTRACTION, "fps": 30.0}}, r"extraction\.fps 20\.0 vs 30\.0"),
        ({"weights": "random-init"}, "weights 'sha256:0123abcd' vs 'random-init'"),
    ],
)
def test_mixed_feature_settings_error(tmp_path: Path, change: dict, message: str) -> None:
    prep = tmp_path / "prep"
    write_prep_dir(prep, num_shards=1)
    write_prep_dir(prep, num_shards=1, seed=3, name_offset=1, **change)
    with pytest.raises(ClusterError, match=message) as err:
        run_cluster(small_config(), prep, tmp_path / "vocab")
    assert "shard-000-000001.tar" in str(err.value)


def test_shard_added_with_other_settings_errors(tmp_path: Path) -> None:
    prep, vocab_dir = tmp_path / "prep", tmp_path / "vocab"
    write_prep_dir(prep, num_shards=1)
    run_cluster(small_config(), prep, vocab_dir)
    write_prep_dir(
        prep, num_shards=1, seed=3, name_offset=1, extraction={**EXTRACTION, "size": 256}
    )
    with pytest.raises(ClusterError, match=r"000001\.tar.*than the vocabulary.*size 224 vs 256"):
        run_cluster(small_config(), prep, vocab_dir)
    assert not tokens_path(vocab_dir, "shard-000-000001.tar").exists()


def test_ignored_extraction_keys_may_differ(tmp_path: Path) -> None:
    prep = tmp_path / "prep"
    write_prep_dir(prep, num_shards=1)
    write_prep_dir(
        prep, num_shards=1, seed=3, name_offset=1, extraction={**EXTRACTION, "extensions": [".mkv"]}
    )
    summary = run_cluster(small_config(), prep, tmp_path / "vocab")
    assert summary["shards_assigned"] == 2


def test_no_thumbnails_skips_grid_with_note(tmp_path: Path) -> None:
    prep, vocab_dir = tmp_path / "prep", tmp_path / "vocab"
    write_prep_dir(prep, num_shards=1, thumbs=False)
    summary = run_cluster(small_config(), prep, vocab_dir)
    assert not summary["grid"] and any("no thumbnails" in n for n in summary["notes"])
    assert not (vocab_dir / "word_grid.png").exists()
    assert (vocab_dir / "cluster_sizes.png").exists()
    assert "No grid" in (vocab_dir / "report.md").read_text()


def test_reservoir_sample_is_uniform_and_seeded() -> None:
    n, cap, runs = 600, 60, 300
    stream = np.arange(n, dtype=np.float16)[:, None]  # row i holds i (exact in float16)
    chunks = np.cumsum(np.random.default_rng(0).integers(1, 40, 40))
    hits = np.zeros(n)
    for seed in range(runs):
        r = ReservoirSample(cap, seed)
        for part in np.split(stream, chunks[chunks < n]):
            r.add(part)
        got = r.rows()[:, 0].astype(int)
        assert r.seen == n and len(got) == cap and len(set(got.tolist())) == cap
        hits[got] += 1
    # each row is kept with probability cap / n = 0.1: expected 30 hits per row over 300 runs
    for part in np.split(hits, 6):  # early rows are not favoured over late ones
        assert abs(part.mean() - 30) < 3
    a, b = ReservoirSample(cap, 7), ReservoirSample(cap, 7)
    a.add(stream), b.add(stream)
    np.testing.assert_array_equal(a.rows(), b.rows())


def test_load_tokens_missing_and_configs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="shard-000-000009"):
        load_tokens(tmp_path, tmp_path / "shard-000-000009.tar")
    default = load_config(ClusterConfig, REPO / "configs/cluster/default.yaml")
    assert (default.depth, default.k, default.num_words) == (4, 12, 20736)
    demo = load_config(ClusterConfig, REPO / "configs/cluster/demo.yaml")
    assert demo.num_words <= 128
    with pytest.raises(ConfigError, match="k: must be > 1"):
        load_config(ClusterConfig, None, ["k=1"])
    with pytest.raises(ConfigError, match="unknown key report.colour"):
        load_config(ClusterConfig, None, ["report.colour=1"])


def test_token_sidecar_round_trip(tmp_path: Path) -> None:
    """The library's writer and reader agree (a key named `file` included: np.savez's argument)."""
    from pipeline.visual_words import token_records, valid_record, write_tokens

    tokens = {"file": np.array([3, 1, 4]), "video_b-0001": np.zeros(0, np.int64)}
    rec = write_tokens(tmp_path, "/prep/shard-000-000002.tar", tokens, "shard-sha", "vocab-sha")
    assert rec == {**rec, "name": "shard-000-000002", "samples": 2, "clips": 3}
    got = load_tokens(tmp_path, "shard-000-000002.tar")
    assert got.keys() == tokens.keys() and all(v.dtype == np.int32 for v in got.values())
    np.testing.assert_array_equal(got["file"], [3, 1, 4])
    assert token_records(tmp_path) == {"shard-000-000002": rec}
    assert valid_record(tmp_path, "shard-000-000002.tar", rec, "shard-sha", "vocab-sha")
    assert not valid_record(tmp_path, "shard-000-000002.tar", rec, "other", "vocab-sha")
    tokens_path(tmp_path, "shard-000-000002.tar").write_bytes(b"torn")
    assert not valid_record(tmp_path, "shard-000-000002.tar", rec, "shard-sha", "vocab-sha")


def run_vlpipe(*args: str) -> subprocess.CompletedProcess:
    """The real command line, as a user runs it (from the repository root)."""
    cmd = [sys.executable, "-m", "vlpipe", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)


def test_default_vocabulary_on_a_small_corpus_is_refused(tmp_path: Path) -> None:
    """Issue 8 item 6: the defaults (4 x 12 = 20,736 words) on ~150 clips used to fit 85 MB of
    nearly empty centroids and exit 0 without a word, after seven `INFO faiss.loader` lines."""
    prep, vocab_dir = tmp_path / "prep", tmp_path / "vocab"
    labels = write_prep_dir(prep, num_shards=1, per_shard=5)
    clips = sum(len(v) for v in labels.values())
    assert clips < 200
    refused = run_vlpipe("cluster", "--shards", str(prep), "--output", str(vocab_dir))
    assert refused.returncode == 2, refused.stderr
    lines = [x for x in refused.stderr.splitlines() if x.strip() and "cluster: sample" not in x]
    assert len(lines) == 1 and "Traceback" not in refused.stderr, refused.stderr
    for needle in ("20,736 visual words", f"{clips} clips", "depth=1 (12 words)", "force=true"):
        assert needle in lines[0]
    assert "faiss.loader" not in refused.stderr and not vocab_dir.exists()

    # forced: it fits (here 12**3 = 1,728 words), says so, and records it in the report
    forced = run_vlpipe(
        "cluster", "--shards", str(prep), "--output", str(vocab_dir), "depth=3", "force=true"
    )
    assert forced.returncode == 0, forced.stderr
    assert "WARNING" in forced.stderr and "fitting anyway" in forced.stderr
    assert "faiss.loader" not in forced.stderr
    report = json.loads((vocab_dir / "report.json").read_text())
    assert any("1,728 visual words" in note for note in report["notes"])


def test_few_clips_per_word_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    prep = tmp_path / "prep"
    clips = sum(len(v) for v in write_prep_dir(prep, num_shards=1, per_shard=2).values())
    cfg = small_config("k=4", "report.tiny_cluster_size=5")  # 16 words, fewer than 5 clips each
    assert 16 < clips < 16 * 5
    summary = run_cluster(cfg, prep, tmp_path / "vocab")
    assert summary["fitted"] and any("many words will be tiny" in n for n in summary["notes"])
    assert "k=3 (9 words at depth 2)" in caplog.text
