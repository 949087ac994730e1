"""Prep's promises that only an end-to-end run showed before (issue 13), checked against literal,
hand-derived expectations: duplicate detection confirmed by the full content hash, each rank
taking every world-th input, the refusal of a rerun with other content settings, the failures-by-
stage summary, and the values of meta.json / fmap.npy / frames.npy.

One small prep run (module fixture, ~1 s: two short videos at 64 px, seven inputs that fail or
duplicate) serves the run-level tests; the rest are unit tests of the functions prep calls.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import media
import numpy as np
import pytest
import torch
import webdataset as wds

from data_prep.inputs import InputItem, discover_inputs, find_duplicates, quick_fingerprint
from data_prep.prep import Prep
from data_prep.prep_report import PrepSummary, print_summary
from pipeline.config import ConfigError, load_config, to_dict
from pipeline.encoders.extract import rebuild_encoder
from pipeline.io import append_jsonl, read_jsonl
from pipeline.prep_config import PrepConfig
from pipeline.shards import decode_sample, merge_state, shard_urls

REPO = Path(__file__).resolve().parent.parent
# 8 fps x 1.5 s = 12 frames per clip at 64 x 64; the S3D-G Mixed_5c grid is then 2 x 2 (/32).
SETTINGS = [
    "video.fps=8",
    "video.size=64",
    "features.batch_size=4",
    "features.spatial=true",
    "features.frames=true",
    "features.frames_per_clip=0",  # every decoded frame, at video.size: what S3D saw
    "features.frames_size=0",
    "asr.source=none",
    "num_workers=0",
    "progress=false",
]
KIB64 = 1 << 16  # the quick fingerprint reads this much at each end


def prep_config(overrides: list[str]) -> PrepConfig:
    return load_config(PrepConfig, REPO / "configs/prep/default.yaml", overrides)


def key_of(relative: str) -> str:
    """The documented sample key, derived here: sanitised stem + 8 hex of sha1(relative path)."""
    stem = re.sub(r"[^A-Za-z0-9_\-]+", "_", relative.rsplit(".", 1)[0]).strip("_")
    return f"{stem}-{hashlib.sha1(relative.encode()).hexdigest()[:8]}"


def near_duplicates(size: int, seed: int) -> tuple[bytes, bytes]:
    """Two different byte strings of `size` with equal first and last 64 KiB (only the middle
    differs): equal size, head and tail, so equal quick fingerprints."""
    assert size > 2 * KIB64
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    middle = size // 2
    other = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
    return data, other


def samples_of(out: Path) -> dict[str, dict]:
    ds = wds.WebDataset(shard_urls(out), shardshuffle=False, empty_check=False).map(decode_sample)
    return {s["__key__"]: s for s in ds}


# --- duplicates: quick fingerprint, then the full sha256 ---------------------------------------


def test_quick_fingerprint_sees_size_head_and_tail_only(tmp_path):
    a, b = near_duplicates(3 * KIB64 + 123, seed=0)
    paths = {}
    for name, data in (
        ("a", a),
        ("b", b),  # differs from a in the middle only
        ("head", bytes([a[0] ^ 1]) + a[1:]),  # differs in the first byte
        ("tail", a[:-1] + bytes([a[-1] ^ 1])),  # differs in the last byte
        ("longer", a + b"\0"),
        ("empty", b""),
    ):
        paths[name] = tmp_path / f"{name}.mp4"
        paths[name].write_bytes(data)
    fp = {name: quick_fingerprint(str(p)) for name, p in paths.items()}
    assert fp["a"] is not None and fp["a"] == fp["b"]  # blind to the middle: needs confirmation
    assert len({fp["a"], fp["head"], fp["tail"], fp["longer"]}) == 4
    assert fp["empty"] is None  # empty files are failures, never duplicates of each other
    assert quick_fingerprint(str(tmp_path / "missing.mp4")) is None
    assert quick_fingerprint(f"tar:{tmp_path / 'x.tar'}:000.mp4") is None


def test_quick_fingerprint_literal(tmp_path):
    """sha256 of the decimal size + the first 64 KiB + the last 64 KiB (the whole file twice
    when it is smaller), derived here from the bytes."""
    small = bytes(range(200))
    big = np.random.default_rng(3).integers(0, 256, 3 * KIB64 + 5, dtype=np.uint8).tobytes()
    for name, data, head, tail in (
        ("small", small, small, small),
        ("big", big, big[:KIB64], big[-KIB64:]),
    ):
        path = tmp_path / f"{name}.mp4"
        path.write_bytes(data)
        expected = hashlib.sha256(str(len(data)).encode() + head + tail).hexdigest()
        assert quick_fingerprint(str(path)) == expected, name


def test_find_duplicates_after_a_unique_file(tmp_path):
    """A file with no twin before a pair of copies: the pair is still found."""
    items = []
    for name, data in (("a", b"unique"), ("b", b"copy"), ("c", b"copy")):
        (tmp_path / f"{name}.mp4").write_bytes(data)
        items.append(InputItem(key=name, path=str(tmp_path / f"{name}.mp4"), display=name))
    assert {k: v.key for k, v in find_duplicates(items).items()} == {"c": "b"}


def test_equal_size_head_and_tail_are_not_duplicates_without_equal_content(tmp_path):
    """Candidates sharing a quick fingerprint are merged only when their sha256 agrees."""
    a, b = near_duplicates(4 * KIB64, seed=1)
    contents = {"v0": a, "v1": b, "v2": a, "v3": b, "v4": a, "v5": b"", "v6": b""}
    items = []
    for key, data in contents.items():  # keys in sorted order, as discover_inputs gives them
        (tmp_path / f"{key}.mp4").write_bytes(data)
        items.append(InputItem(key, str(tmp_path / f"{key}.mp4"), f"{key}.mp4"))
    assert quick_fingerprint(items[0].path) == quick_fingerprint(items[1].path)
    dups = find_duplicates(items)
    # v2, v4 are byte copies of v0; v3 of v1; v0 and v1 (same size, head, tail) are different
    # videos, both kept; the two empty files are not duplicates.
    assert {k: v.key for k, v in dups.items()} == {"v2": "v0", "v4": "v0", "v3": "v1"}
    # Only a near-duplicate pair: nothing merged.
    assert find_duplicates(items[:2]) == {}


# --- distribution: each rank takes every world-th input ---------------------------------------


def test_each_rank_plans_every_world_th_sorted_input(tmp_path, monkeypatch):
    corpus = tmp_path / "in"
    corpus.mkdir()
    for i in (5, 2, 6, 0, 3, 1, 4):  # written out of order: the list is sorted by key
        data = f"video {i}".encode() if i != 4 else b"video 0"  # v4 is a byte copy of v0
        (corpus / f"v{i}.bin").write_bytes(data)
    items = discover_inputs(str(corpus), [".bin"])
    assert [it.display for it in items] == [f"v{i}.bin" for i in range(7)]
    cfg = prep_config(SETTINGS)
    out = tmp_path / "out"

    def plan(rank: int, world: int, retry_failed: bool = False):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world))
        prep = Prep(cfg, str(corpus), out, retry_failed)
        todo, dups = prep.plan(items)
        names = [it.display[1] for it in todo]  # "v3.bin" -> "3"
        return names, [(d.display, o.display) for d, o in dups], prep.summary

    # 7 inputs, world 3: rank r takes indices r, r + 3, r + 6 of the sorted list.
    assert plan(0, 3)[:2] == (["0", "3", "6"], [])
    assert plan(1, 3)[:2] == (["1"], [("v4.bin", "v0.bin")])  # its duplicate, of rank 0's input
    assert plan(2, 3)[:2] == (["2", "5"], [])
    assert plan(0, 1)[0] == ["0", "1", "2", "3", "5", "6"]
    assert plan(4, 5)[0] == [] and plan(3, 5)[0] == ["3"]
    # Resume: a key in a completed shard is skipped, a recorded failure too unless retried.
    state = out / "_state"
    state.mkdir(parents=True)
    (out / "shard-000-000000.tar").write_bytes(b"")
    shard = {"name": "shard-000-000000.tar", "keys": [items[3].key]}
    append_jsonl(state / "shards-rank000.jsonl", shard)
    append_jsonl(state / "failures-rank000.jsonl", {"key": items[6].key, "stage": "decode"})
    names, _, summary = plan(0, 3)
    assert names == ["0"] and (summary.skipped_done, summary.skipped_failed) == (1, 1)
    assert plan(0, 3, retry_failed=True)[0] == ["0", "6"]


# --- the end-of-run table: failures by stage ---------------------------------------------------


def table_rows(text: str) -> dict[str, str]:
    """rich's table printed on stderr -> {label: value} (box-drawing cells)."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) == 2 and cells[0]:
            rows[cells[0]] = cells[1]
    return rows


def test_summary_table_counts_failures_by_stage(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")  # one line per row
    failed = Counter({"decode": 2, "read": 1, "probe": 4})
    summary = PrepSummary(inputs=12, ok=3, duplicates=2, failed=failed, total_samples=3)
    print_summary(summary, tmp_path)
    err = capsys.readouterr().err
    rows = table_rows(err)
    assert {k: v for k, v in rows.items() if k.startswith("failed at")} == {
        "failed at decode": "2",
        "failed at probe": "4",
        "failed at read": "1",
    }
    assert rows["inputs found"] == "12" and rows["videos ok (this run)"] == "3"
    assert rows["duplicates (same content as another input; kept once)"] == "2"
    assert f"7 input(s) failed: see {tmp_path / 'failures.jsonl'}" in err
    print_summary(PrepSummary(inputs=3, ok=3), tmp_path)  # nothing failed: nothing said
    err = capsys.readouterr().err
    assert "failed at" not in err and "input(s) failed" not in err


def test_merged_failures_drop_inputs_done_since(tmp_path):
    """failures.jsonl (written at the end of every rank) lists the latest failure of each input
    not in a completed shard: an input retried with success, or done by another rank, drops out."""
    state = tmp_path / "_state"
    state.mkdir()
    (tmp_path / "shard-001-000000.tar").write_bytes(b"")
    append_jsonl(state / "shards-rank001.jsonl", {"name": "shard-001-000000.tar", "keys": ["k1"]})
    for rank, key, stage, t in ((0, "k1", "decode", 1.0), (0, "k2", "decode", 1.0),
                                (1, "k2", "probe", 2.0), (1, "k3", "read", 0.5)):  # fmt: skip
        append_jsonl(
            state / f"failures-rank{rank:03d}.jsonl", {"key": key, "stage": stage, "time": t}
        )
    append_jsonl(state / "duplicates-rank000.jsonl", {"key": "k1", "same_as": "x", "time": 1.0})
    append_jsonl(state / "duplicates-rank000.jsonl", {"key": "k4", "same_as": "x", "time": 1.0})
    _, fails = merge_state(tmp_path)
    want = [("k2", "probe"), ("k3", "read")]  # k2: its latest record (rank 1, t = 2)
    assert [(r["key"], r["stage"]) for r in fails] == want
    assert [(r["key"], r["stage"]) for r in read_jsonl(tmp_path / "failures.jsonl")] == want
    assert [r["key"] for r in read_jsonl(tmp_path / "duplicates.jsonl")] == ["k4"]


# --- one small prep run -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepped(tmp_path_factory) -> dict:
    """A corpus of 9 inputs: 2 good videos (one in a sub-folder), a byte copy, a near-duplicate pair of non-videos (same
    size, head and tail), an empty file, a text file and two videos shorter than half a clip."""
    root = tmp_path_factory.mktemp("claims")
    d = root / "in"
    d.mkdir()
    media.make_video(d / "a.mp4", seconds=3.2, fps=25, size=(96, 72), audio="tone")
    (d / "sub").mkdir()  # a relative path with a folder: the key and `source` keep it
    media.make_video(d / "sub" / "b.mp4", seconds=2.0, fps=25, size=(64, 64))
    shutil.copy(d / "a.mp4", d / "a copy.mp4")
    blob1, blob2 = near_duplicates(3 * KIB64, seed=2)
    (d / "blob1.mp4").write_bytes(blob1)
    (d / "blob2.mp4").write_bytes(blob2)
    (d / "empty.mp4").write_bytes(b"")
    (d / "notes.mp4").write_text("this is a text file named .mp4\n")
    for name, seconds in (("tiny1.mp4", 0.5), ("tiny2.mp4", 0.4)):  # not copies of each other
        media.make_video(d / name, seconds=seconds, fps=25, size=(64, 64))
    out = root / "out"
    cfg = prep_config(SETTINGS)
    summary = Prep(cfg, str(d), out).run()
    return {"corpus": d, "out": out, "cfg": cfg, "summary": summary}


# Inputs by key order (key_of): a, a copy, blob1, blob2, empty, notes, sub/b, tiny1, tiny2.
FAILED = {  # input -> stage, by what each file is
    "blob1.mp4": "probe",
    "blob2.mp4": "probe",
    "notes.mp4": "probe",
    "empty.mp4": "read",
    "tiny1.mp4": "decode",
    "tiny2.mp4": "decode",
}


def test_prep_failures_by_stage_and_duplicates(prepped, capsys, monkeypatch):
    out, summary = prepped["out"], prepped["summary"]
    assert (summary.inputs, summary.ok, summary.duplicates) == (9, 2, 1)
    assert summary.failed == Counter({"probe": 3, "read": 1, "decode": 2})
    assert (summary.clips, summary.total_samples) == (3, 2)  # a: 2 clips, b: 1
    fails = read_jsonl(out / "failures.jsonl")
    assert {r["input"]: r["stage"] for r in fails} == FAILED
    for r in fails:  # one line each, naming the file
        assert r["key"] == key_of(r["input"]) and "\n" not in r["error"]
        assert r["input"] in r["error"]
    # the byte copy is recorded against the input kept; the near-duplicate blobs are not merged
    assert [(r["input"], r["same_as"]) for r in read_jsonl(out / "duplicates.jsonl")] == [
        ("a copy.mp4", "a.mp4")
    ]
    assert sorted(samples_of(out)) == [key_of("a.mp4"), key_of("sub/b.mp4")]
    monkeypatch.setenv("COLUMNS", "160")
    print_summary(summary, out)
    err = capsys.readouterr().err
    rows = table_rows(err)
    assert {k: v for k, v in rows.items() if k.startswith("failed at")} == {
        "failed at decode": "2",
        "failed at probe": "3",
        "failed at read": "1",
    }
    assert f"6 input(s) failed: see {out / 'failures.jsonl'}" in err


# Every meta.json key the README's shard schema names (top level).
DOCUMENTED_META = {
    "source", "source_path", "bytes", "sha256", "duration", "truncated", "declared_duration",
    "native_fps", "variable_frame_rate", "width", "height", "rotation", "video_codec",
    "has_audio", "num_clips", "decoder", "extraction", "weights", "encoder", "frames",
    "transcript_source", "whisper_model", "versions", "content_config_hash",
}  # fmt: skip


def test_meta_json_values(prepped):
    corpus, out, cfg = prepped["corpus"], prepped["out"], prepped["cfg"]
    samples = samples_of(out)
    expected = {  # what each file is, as made in the fixture (1.5 s clips; a last part < 0.75 s
        # is dropped: 3.2 s -> 2 clips, 2.0 s -> 1)
        "a.mp4": dict(
            width=96, height=72, has_audio=True, duration=3.2, spans=[[0, 1.5], [1.5, 3]]
        ),
        "sub/b.mp4": dict(width=64, height=64, has_audio=False, duration=2.0, spans=[[0, 1.5]]),
    }
    # README: the hash of the video, features and asr sections (computed here from the config)
    content = {s: to_dict(cfg)[s] for s in ("video", "features", "asr")}
    content_hash = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]
    for name, want in expected.items():
        sample = samples[key_of(name)]
        meta = sample["meta.json"]
        assert DOCUMENTED_META <= set(meta), DOCUMENTED_META - set(meta)
        data = (corpus / name).read_bytes()
        assert meta["key"] == key_of(name)
        assert meta["source"] == name and meta["source_path"] == str(corpus / name)
        assert meta["bytes"] == len(data) and meta["sha256"] == hashlib.sha256(data).hexdigest()
        assert meta["duration"] == pytest.approx(want["duration"], abs=0.05)
        assert meta["declared_duration"] == pytest.approx(want["duration"], abs=0.05)
        assert meta["native_fps"] == pytest.approx(25.0, abs=1e-3)
        assert {k: meta[k] for k in ("width", "height", "has_audio")} == {
            k: want[k] for k in ("width", "height", "has_audio")
        }
        assert meta["variable_frame_rate"] is False
        assert meta["truncated"] is False and meta["rotation"] == 0
        assert (meta["video_codec"], meta["decoder"]) == ("h264", "decord")
        clips = sample["clips.json"]
        assert (clips["fps"], clips["clip_seconds"]) == (8.0, 1.5)
        assert [[c["start"], c["end"]] for c in clips["clips"]] == want["spans"]
        assert [c["num_frames"] for c in clips["clips"]] == [12] * len(want["spans"])
        assert meta["num_clips"] == len(want["spans"]) == len(sample["feat.npy"])
        assert sample["asr.json"]["source"] == "none" and sample["asr.json"]["sentences"] == []
        ext = meta["extraction"]
        assert {k: ext[k] for k in ("fps", "clip_seconds", "size", "frames_per_clip")} == {
            "fps": 8.0, "clip_seconds": 1.5, "size": 64, "frames_per_clip": 12
        }  # fmt: skip
        assert (ext["spatial"], ext["thumbnail_size"], ext["batch_size"]) == (True, 32, 4)
        assert (ext["s3d_variant"], ext["s3d_layer"]) == ("s3dg_howto100m", "Mixed_5c")
        assert (ext["s3d_engine"], ext["s3d_precision"]) == ("fused", "fp32")
        assert meta["weights"] == "random-init" and meta["s3d_weights_path"] is None
        enc = meta["encoder"]
        assert enc["encoder"] == "s3d" and enc["feature_dim"] == 1024
        assert enc["weights_sha256"] == "random-init"
        assert (enc["settings"]["variant"], enc["settings"]["seed"]) == ("s3dg_howto100m", 0)
        assert enc["settings"]["weights"] is None
        assert meta["frames"]["per_clip"] == 12 and meta["frames"]["size"] == 64
        assert meta["transcript_source"] == "none" and meta["whisper_model"] is None
        assert meta["asr_dropped"] == {}
        assert meta["versions"]["torch"] == torch.__version__
        assert meta["versions"]["numpy"] == np.__version__
        assert meta["content_config_hash"] == content_hash
        assert "input_extra" not in meta  # a plain directory input has no extra
    saved = (out / "prep_config.yaml").read_text()
    assert f"content_config_hash: {content_hash}" in saved


def test_feature_members_follow_the_schema(prepped):
    """feat [T, 1024] and fmap [T, h, w, 1024] float16 (h = w = 64 / 32), frames [T, 12, 64, 64, 3]
    and thumbs [T, 32, 32, 3] uint8; the record in meta.json rebuilds the extractor, whose
    reference (unfused) forward on frames.npy gives feat.npy and fmap.npy."""
    for key, sample in samples_of(prepped["out"]).items():
        n = sample["meta.json"]["num_clips"]
        feat, fmap = sample["feat.npy"], sample["fmap.npy"]
        frames, thumbs = sample["frames.npy"], sample["thumbs.npy"]
        assert feat.shape == (n, 1024) and feat.dtype == np.float16
        assert fmap.shape == (n, 2, 2, 1024) and fmap.dtype == np.float16
        assert frames.shape == (n, 12, 64, 64, 3) and frames.dtype == np.uint8
        assert thumbs.shape == (n, 32, 32, 3) and thumbs.dtype == np.uint8
        # 25 fps source, 8 fps sampling by timestamp: clip k, frame j shows source frame
        # floor(25 * (1.5 k + j / 8)); the thumbnail is the middle (6th) frame of its clip.
        for k in range(n):
            shown = [media.read_index(f) for f in frames[k]]
            assert shown == [int(25 * (1.5 * k + j / 8)) for j in range(12)], (key, k)
            assert media.read_index(thumbs[k]) == shown[6]
        encoder = rebuild_encoder(sample["meta.json"]["encoder"])
        with torch.no_grad():
            out = encoder(frames[None], return_tokens=True)
        pooled = out.pooled[0].numpy()  # [T, 1024]
        cells = out.tokens[0].reshape(n, 2, 2, 1024).numpy()  # tokens are (h, w) row-major
        scale = np.abs(pooled).max()
        assert scale > 1e-3
        np.testing.assert_allclose(feat.astype(np.float32), pooled, rtol=0, atol=2e-3 * scale)
        np.testing.assert_allclose(fmap.astype(np.float32), cells, rtol=0, atol=2e-3 * scale)
        assert np.abs(fmap.astype(np.float32).mean(axis=(1, 2)) - pooled).max() < 2e-3 * scale


def test_rerun_resumes_with_same_content_settings_and_refuses_others(prepped, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(prepped["out"], out)
    corpus = str(prepped["corpus"])
    manifest = (out / "manifest.jsonl").read_text()
    # Same content settings (shards, workers, progress may differ): nothing redone.
    for extra in ([], ["num_workers=1", "shards.max_samples=1", "progress=true"]):
        summary = Prep(prep_config([*SETTINGS, *extra]), corpus, out).run()
        assert (summary.ok, summary.skipped_done, summary.skipped_failed) == (0, 2, 6)
        assert summary.total_samples == 2 and not sum(summary.failed.values())
        assert (out / "manifest.jsonl").read_text() == manifest
    assert len(list(out.glob("shard-*.tar"))) == 1
    saved = (out / "prep_config.yaml").read_text()
    state = (out / "_state" / "content_config.json").read_text()
    assert json.loads(state) == {
        s: to_dict(prepped["cfg"])[s] for s in ("video", "features", "asr")
    }
    # A changed setting in any content section is refused, named, and nothing is written.
    for change, named in (
        ("video.size=32", "video.size: 64 -> 32"),
        ("features.thumbnail_size=16", "features.thumbnail_size: 32 -> 16"),
        ("asr.max_sentence_words=20", "asr.max_sentence_words: 30 -> 20"),
    ):
        with pytest.raises(ConfigError, match=re.escape(named)):
            Prep(prep_config([*SETTINGS, change]), corpus, out).run()
        assert (out / "prep_config.yaml").read_text() == saved
        assert (out / "_state" / "content_config.json").read_text() == state
        assert (out / "manifest.jsonl").read_text() == manifest
    # A setting added since the samples were made (absent from the record) counts as its
    # default: accepted when the rerun keeps the default, refused when it does not.
    path = out / "_state" / "content_config.json"
    for missing, refused in (("extractor", None), ("frames_per_clip", "8 -> 0")):
        record = json.loads(state)
        del record["features"][missing]
        path.write_text(json.dumps(record))
        if refused is None:
            assert Prep(prep_config(SETTINGS), corpus, out).run().skipped_done == 2
        else:
            with pytest.raises(ConfigError, match=re.escape(f"features.{missing}: {refused}")):
                Prep(prep_config(SETTINGS), corpus, out).run()


def test_two_ranks_split_the_sorted_inputs(prepped, tmp_path, monkeypatch):
    """Ranks run one after the other (torchrun's RANK / WORLD_SIZE): rank 0 takes inputs 0, 2,
    4, ... of the key-sorted list, rank 1 inputs 1, 3, ...; their shards, failures and duplicates
    merge into what the one-process run wrote."""
    out = tmp_path / "out"
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        Prep(prep_config(SETTINGS), str(prepped["corpus"]), out).run()
    for name in ("RANK", "WORLD_SIZE"):  # webdataset reads them too: read back as one process
        monkeypatch.delenv(name)
    state = out / "_state"

    def inputs(kind: str, rank: int) -> list[str]:
        return [r["input"] for r in read_jsonl(state / f"{kind}-rank{rank:03d}.jsonl")]

    # sorted: a, a copy, blob1, blob2, empty, notes, sub/b, tiny1, tiny2
    assert inputs("failures", 0) == ["blob1.mp4", "empty.mp4", "tiny2.mp4"]
    assert inputs("failures", 1) == ["blob2.mp4", "notes.mp4", "tiny1.mp4"]
    assert inputs("duplicates", 1) == ["a copy.mp4"] and not inputs("duplicates", 0)
    assert [r["keys"] for r in read_jsonl(state / "shards-rank000.jsonl")] == [
        [key_of("a.mp4"), key_of("sub/b.mp4")]
    ]
    assert not list(out.glob("shard-001-*.tar"))  # rank 1's inputs all failed or duplicate
    one = prepped["out"]
    for name in ("failures.jsonl", "duplicates.jsonl"):
        drop_time = [{k: v for k, v in r.items() if k != "time"} for r in read_jsonl(out / name)]
        want = [{k: v for k, v in r.items() if k != "time"} for r in read_jsonl(one / name)]
        assert drop_time == want, name
    got, want = samples_of(out), samples_of(one)
    assert sorted(got) == sorted(want)
    for k in want:
        assert np.array_equal(got[k]["feat.npy"], want[k]["feat.npy"])
