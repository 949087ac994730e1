"""The annotation join: video ids -> prep samples, segments -> the clips that overlap them.

Shards are written with the real ResumableShardWriter in prep's sample layout; annotations are
read from a YouCook2 file and an MSRVTT-QA file written here.
"""

import json
import random
from pathlib import Path

import numpy as np
import pytest

import data_prep.align
from finetune.annotations import ShardIndex, join, segment_features, write_failures
from finetune.readers import read_msrvtt_qa, read_youcook2
from pipeline.clips import sentence_clip_range
from pipeline.shards import ResumableShardWriter, make_key, merge_state, npy_bytes

CLIP = 1.5


def write_shards(out: Path) -> dict[str, str]:
    """Four samples as prep writes them; returns source name -> sample key."""
    inputs = [  # (source as prep records it, manifest id or None, clips)
        ("/data/corpus/howto_0001.mp4", "howto_0001", 8),
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", None, 4),
        ("a/clip.mp4", None, 3),
        ("b/clip.mp4", None, 3),
    ]
    writer = ResumableShardWriter(out, rank=0, max_samples=2, max_bytes=10**9)
    keys = {}
    for n, (source, manifest_id, clips) in enumerate(inputs):
        key = make_key(manifest_id or source.rsplit(".", 1)[0], source)
        spans = [{"start": i * CLIP, "end": (i + 1) * CLIP, "words": []} for i in range(clips)]
        meta = {"key": key, "source": source}
        if manifest_id:
            meta["input_extra"] = {"manifest_id": manifest_id}
        feats = (100 * n + np.arange(clips))[:, None] * np.ones((1, 4))  # row i = 100 n + i
        writer.write(
            {
                "__key__": key,
                "feat.npy": npy_bytes(feats.astype(np.float16)),
                "clips.json": {"fps": 20, "clip_seconds": CLIP, "clips": spans},
                "meta.json": meta,
            }
        )
        keys[source] = key
    writer.close()
    merge_state(out)
    return keys


def linear_clip_range(spans, start, end):
    """The rule as data_prep/align.py had it before it moved to pipeline/clips.py."""
    first = next((i for i, (s, e) in enumerate(spans) if e > start and s < end), len(spans))
    stop = first
    while stop < len(spans) and spans[stop][0] < end:
        stop += 1
    return first, stop


def test_clip_range_is_shared_and_matches_the_old_rule():
    assert data_prep.align.sentence_clip_range is sentence_clip_range  # one function, two users
    rng = random.Random(0)
    for _ in range(500):
        n = rng.randint(0, 6)
        spans = [(i * CLIP, (i + 1) * CLIP) for i in range(n)]
        if n and rng.random() < 0.5:
            spans[-1] = (spans[-1][0], spans[-1][0] + 0.9)  # a shorter last clip
        start = rng.choice([rng.uniform(-1, 10), rng.randint(0, 7) * CLIP])
        end = start + rng.choice([rng.uniform(-0.5, 5), rng.randint(0, 3) * CLIP])
        assert sentence_clip_range(spans, start, end) == linear_clip_range(spans, start, end)


def test_join_segments_to_clips_and_failures(tmp_path: Path):
    keys = write_shards(tmp_path / "shards")
    index = ShardIndex.build(tmp_path / "shards")
    assert len(index.videos) == 4
    ann = tmp_path / "youcookii_annotations.json"
    db = {
        "howto_0001": {"subset": "training", "annotations": [
            {"segment": [1.5, 4.5], "id": 0, "sentence": "on the grid: clips 1 and 2"},
            {"segment": [1.0, 3.1], "id": 1, "sentence": "overlaps clips 0, 1 and 2"},
            {"segment": [12.0, 14.0], "id": 2, "sentence": "after the video"}]},
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01": {"subset": "validation", "annotations": [
            {"segment": [0, 1.5], "id": 0, "sentence": "by relative path"}]},
        "v_ApplyEyeMakeup_g08_c01": {"subset": "validation", "annotations": [
            {"segment": [4.4, 9.0], "id": 1, "sentence": "by file stem, past the end"}]},
        "clip": {"subset": "testing", "annotations": [
            {"segment": [0, 1], "id": 0, "sentence": "ambiguous stem"}]},
        "a/clip": {"subset": "testing", "annotations": [
            {"segment": [0, 1], "id": 1, "sentence": "unique path"}]},
        "nowhere": {"subset": "testing", "annotations": [
            {"segment": [0, 1], "id": 0, "sentence": "no such video"}]},
    }  # fmt: skip
    ann.write_text(json.dumps({"database": db}))
    read = read_youcook2(ann)
    assert not read.failures
    joined = join(read.items, index)
    got = [(j.item.caption, j.key, j.first, j.stop) for j in joined.items]
    ucf = keys["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi"]
    assert got == [
        ("on the grid: clips 1 and 2", keys["/data/corpus/howto_0001.mp4"], 1, 3),
        ("overlaps clips 0, 1 and 2", keys["/data/corpus/howto_0001.mp4"], 0, 3),
        ("by relative path", ucf, 0, 1),
        ("by file stem, past the end", ucf, 2, 4),
        ("unique path", keys["a/clip.mp4"], 0, 1),
    ]
    fails = {(f.where, f.reason.split(":")[0]) for f in joined.failures}
    assert fails == {
        ("database.howto_0001.annotations[2]", "segment [12.0, 14.0] overlaps no clip of "
         + keys["/data/corpus/howto_0001.mp4"] + " (0-12.0 s)"),
        ("database.clip.annotations[0]", "video 'clip' is ambiguous"),
        ("database.nowhere.annotations[0]", "video 'nowhere' is not in the shards"),
    }  # fmt: skip
    assert all(f.file == str(ann) for f in joined.failures)
    # The features of each joined segment, one pass over the shards.
    feats = {j.item.cid: f for j, f in segment_features(tmp_path / "shards", joined.items)}
    assert len(feats) == 5
    np.testing.assert_array_equal(feats["howto_0001#0"][:, 0], [1, 2])
    np.testing.assert_array_equal(feats["v_ApplyEyeMakeup_g08_c01#1"][:, 0], [102, 103])
    assert feats["howto_0001#1"].shape == (3, 4) and feats["howto_0001#1"].dtype == np.float32
    # Failures are written as JSON lines.
    n = write_failures(tmp_path / "out" / "failures.jsonl", joined.failures)
    lines = (tmp_path / "out" / "failures.jsonl").read_text().splitlines()
    assert n == len(lines) == 3 and json.loads(lines[0])["file"] == str(ann)


def test_join_whole_videos_by_manifest_id(tmp_path: Path):
    keys = write_shards(tmp_path / "shards")
    qa = tmp_path / "test_qa.json"
    qa.write_text(
        json.dumps(
            [
                {
                    "question": "what shape spins?",
                    "answer": "star",
                    "video_id": "howto_0001",
                    "id": 1,
                },
                {"question": "what jumps?", "answer": "cross", "video_id": "howto_9999", "id": 2},
            ]
        )
    )
    joined = join(read_msrvtt_qa(qa).items, ShardIndex.build(tmp_path / "shards"))
    assert [(j.key, j.first, j.stop) for j in joined.items] == [
        (keys["/data/corpus/howto_0001.mp4"], 0, 8)
    ]
    assert [(f.where, f.reason) for f in joined.failures] == [
        ("[1]", "video 'howto_9999' is not in the shards")
    ]


@pytest.mark.parametrize("video_id", ["howto_0001", "/data/corpus/howto_0001"])
def test_lookup_by_every_name(tmp_path: Path, video_id: str):
    keys = write_shards(tmp_path / "shards")
    key, why = ShardIndex.build(tmp_path / "shards").lookup(video_id)
    assert (key, why) == (keys["/data/corpus/howto_0001.mp4"], "")
