"""Resumable shard writer: temp names, atomic rename, manifest records, crash clean-up."""

import json
import os
import stat
import subprocess
import sys
import tarfile

import numpy as np
import torch
import webdataset as wds
from safetensors.torch import save_file

from pipeline.io import (
    append_jsonl,
    atomic_write_bytes,
    atomic_write_json,
    read_jsonl,
    umask_modes,
)
from pipeline.shards import (
    ResumableShardWriter,
    completed_shards,
    decode_sample,
    make_key,
    merge_state,
    npy_bytes,
    rank_state_path,
    shard_urls,
)


def _sample(i: int) -> dict:
    return {
        "__key__": f"video{i:03d}-abc",
        "feat.npy": npy_bytes(np.full((3, 4), i, np.float16)),
        "meta.json": {"i": i},
    }


def test_make_key_is_tar_safe_and_stable():
    k = make_key("cooking/my video.final (1)", "cooking/my video.final (1).mp4")
    assert "." not in k and " " not in k and "/" not in k
    assert k == make_key("cooking/my video.final (1)", "cooking/my video.final (1).mp4")
    assert make_key("ünïcode clip", "a") != make_key("ünïcode clip", "b")


def test_rollover_manifest_and_readback(tmp_path):
    w = ResumableShardWriter(tmp_path, rank=0, max_samples=3, max_bytes=10**9)
    for i in range(7):
        w.write(_sample(i))
    w.close()
    shards, fails = merge_state(tmp_path)
    assert [r["samples"] for r in shards] == [3, 3, 1]
    assert [r["name"] for r in shards] == [f"shard-000-{n:06d}.tar" for n in range(3)]
    assert not list(tmp_path.glob("*.tmp")) and fails == []
    manifest = [json.loads(x) for x in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert sum(r["samples"] for r in manifest) == 7
    # plain webdataset and plain tar read the shards back
    ds = wds.WebDataset(shard_urls(tmp_path), shardshuffle=False).map(decode_sample)
    got = {s["__key__"]: s for s in ds}
    assert len(got) == 7
    assert got["video004-abc"]["feat.npy"].dtype == np.float16
    assert float(got["video004-abc"]["feat.npy"][0, 0]) == 4.0
    with tarfile.open(tmp_path / "shard-000-000000.tar") as tf:
        assert "video000-abc.feat.npy" in tf.getnames()


def test_crash_leftovers_are_removed_and_numbering_continues(tmp_path):
    w = ResumableShardWriter(tmp_path, rank=1, max_samples=2, max_bytes=10**9)
    for i in range(3):
        w.write(_sample(i))
    # simulate kill -9: shard 1 is still a .tmp, and an unrecorded renamed tar exists
    del w
    (tmp_path / "shard-001-000007.tar").write_bytes(b"junk")
    assert (tmp_path / "shard-001-000001.tar.tmp").exists()
    w2 = ResumableShardWriter(tmp_path, rank=1, max_samples=2, max_bytes=10**9)
    assert not (tmp_path / "shard-001-000001.tar.tmp").exists()
    assert not (tmp_path / "shard-001-000007.tar").exists()
    done = {k for r in completed_shards(tmp_path) for k in r["keys"]}
    assert done == {"video000-abc", "video001-abc"}
    w2.write(_sample(2))
    w2.close()
    names = [r["name"] for r in completed_shards(tmp_path)]
    assert names == ["shard-001-000000.tar", "shard-001-000001.tar"]


def test_torn_jsonl_line_is_skipped_and_appends_stay_valid(tmp_path):
    path = tmp_path / "log.jsonl"
    append_jsonl(path, {"a": 1})
    with open(path, "a") as f:
        f.write('{"a": 2, "b"')  # torn by a crash
    append_jsonl(path, {"a": 3})
    assert [r["a"] for r in read_jsonl(path)] == [1, 3]


def test_failures_merge_latest_wins_and_success_clears(tmp_path):
    append_jsonl(
        rank_state_path(tmp_path, 0, "failures"), {"key": "a", "stage": "decode", "time": 1}
    )
    append_jsonl(rank_state_path(tmp_path, 1, "failures"), {"key": "a", "stage": "asr", "time": 2})
    append_jsonl(
        rank_state_path(tmp_path, 0, "failures"), {"key": "video000-abc", "stage": "x", "time": 1}
    )
    w = ResumableShardWriter(tmp_path, rank=0, max_samples=5, max_bytes=10**9)
    w.write(_sample(0))
    w.close()
    _, fails = merge_state(tmp_path)
    assert [(f["key"], f["stage"]) for f in fails] == [("a", "asr")]


def test_kill_during_writing_leaves_no_partial_shard(tmp_path):
    """A real process killed with SIGKILL in the middle of writing shards."""
    code = f"""
import numpy as np, time, sys
sys.path.insert(0, {str(tmp_path.parent)!r})
from pipeline.shards import ResumableShardWriter, npy_bytes
w = ResumableShardWriter(__import__('pathlib').Path({str(tmp_path)!r}), 0, 2, 10**9)
for i in range(1000):
    w.write({{"__key__": f"k{{i:04d}}", "feat.npy": npy_bytes(np.zeros((50, 1024), np.float16))}})
    if i == 5:
        print("ready", flush=True)
    time.sleep(0.01)
"""
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    p.kill()
    p.wait()
    w = ResumableShardWriter(tmp_path, 0, 2, 10**9)
    w.close()
    shards = completed_shards(tmp_path)
    assert shards, "some shards completed before the kill"
    keys = [k for r in shards for k in r["keys"]]
    assert len(keys) == len(set(keys))
    for r in shards:  # every recorded shard is a complete, readable tar
        with tarfile.open(tmp_path / r["name"]) as tf:
            assert len(tf.getnames()) == r["samples"]
    assert not list(tmp_path.glob("*.tmp"))


def test_atomic_writes_get_the_umask_mode_like_the_shards(tmp_path):
    """Issue 8.10: the atomic writer made 0600 files (manifest, configs, model) where the shards
    were 0644, so other users of a shared cluster could not read them."""
    old = os.umask(0o027)
    try:
        atomic_write_json(tmp_path / "config.json", {"a": 1})
        atomic_write_bytes(tmp_path / "model.bin", b"\0" * 10)
        w = ResumableShardWriter(tmp_path, 0, 1, 10**9)
        w.write(_sample(0))
        w.close()
        merge_state(tmp_path)
    finally:
        os.umask(old)
    shard = tmp_path / completed_shards(tmp_path)[0]["name"]
    for path in ("config.json", "model.bin", "manifest.jsonl", "failures.jsonl", shard.name):
        assert stat.S_IMODE((tmp_path / path).stat().st_mode) == 0o640, path
    assert not list(tmp_path.glob(".*.tmp"))
    # Overwriting keeps working (a fresh temporary name each time).
    atomic_write_json(tmp_path / "config.json", {"a": 2})
    assert json.loads((tmp_path / "config.json").read_text()) == {"a": 2}


def test_exported_safetensors_get_the_umask_mode(tmp_path):
    """safetensors writes 0600 files (so did every exported model.safetensors); the engine's
    export gives them the umask's mode with `umask_modes`, like the rest of the model dir."""
    model = tmp_path / "model"
    model.mkdir()
    save_file({"w": torch.zeros(2)}, str(model / "head.safetensors"))
    assert stat.S_IMODE((model / "head.safetensors").stat().st_mode) == 0o600  # why this exists
    old = os.umask(0o027)
    try:
        umask_modes(model)
    finally:
        os.umask(old)
    assert stat.S_IMODE((model / "head.safetensors").stat().st_mode) == 0o640
    assert [p.name for p in model.iterdir()] == ["head.safetensors"]  # the probe is gone
