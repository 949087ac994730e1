"""Evidence of video use (pretrain/evidence.py) on real shards and every registered model: the
held-out batches, matching accuracy, video dependence; determinism and no side effects on the
run (global RNG, train/eval mode); PretrainTask.evaluate logs it."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.config import load_config, load_config_dict
from pipeline.models import MODELS, build_model
from pipeline.segments import build_segments
from pipeline.train_config import DataConfig, PretrainConfig
from pipeline.visual_words import nearest_words
from pretrain.evidence import (
    heldout_batches,
    matching_accuracy,
    pair_batch,
    video_dependence,
)
from tests.corpus import F, write_corpus
from tests.test_models import SMALL

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def heldout(tmp_path_factory, tiny_bert) -> dict:
    """Real prep-schema shards (4 videos, 12 narrated segments), a [8, F] vocabulary, batches."""
    shards = write_corpus(tmp_path_factory.mktemp("evidence") / "shards", shards=2, per_shard=2)
    centroids = np.random.default_rng(0).normal(size=(8, F)).astype(np.float32)
    data = DataConfig(shards=str(shards), batch_size=5, max_clips=16, concat_prob=1.0)
    batches = heldout_batches(data, str(tiny_bert), centroids, seed=0)
    return {"shards": shards, "centroids": centroids, "data": data, "batches": batches}


def tiny(name: str, tiny_bert, centroids: np.ndarray) -> nn.Module:
    entry = MODELS.get(name)
    fields = entry.settings.__dataclass_fields__
    settings = load_config_dict(entry.settings, {k: v for k, v in SMALL.items() if k in fields})
    vocab = centroids if entry.vocabulary != "unused" else None
    return build_model(name, tiny_bert, vocab, settings, feat_dim=F)


# --- the metric's counting, with a scorer whose right answer is known ---------------------------


def keyed_batch(keys: list[int], videos: list[int], length: int = 5, clips: int = 3) -> dict:
    """Row i: text [k_i, 10, 11, ...], every clip the one-hot feature e_{k_i}."""
    n = len(keys)
    text = torch.arange(10, 10 + length).repeat(n, 1)
    text[:, 0] = torch.tensor(keys)
    feats = torch.zeros(n, clips, 32)
    feats[torch.arange(n), :, torch.tensor(keys)] = 1.0
    return {
        "text_ids": text,
        "text_mask": torch.ones(n, length, dtype=torch.bool),
        "video_feats": feats,
        "video_tokens": torch.full((n, clips), -1),
        "video_mask": torch.ones(n, clips, dtype=torch.bool),
        "video_ids": torch.tensor(videos),
    }


class KeyScorer(nn.Module):
    """Not a model: a scorer with a known answer for testing the metric's arithmetic,
    alignment = sign x [the clips' one-hot key == the first word]."""

    def __init__(self, sign: float) -> None:
        super().__init__()
        self.sign = sign

    def alignment_logits(self, batch: dict) -> torch.Tensor:
        key = batch["video_feats"][:, 0].argmax(-1)  # [B]
        return self.sign * (key == batch["text_ids"][:, 0]).float()


def test_matching_accuracy_counts_true_pairs_above_other_videos() -> None:
    batches = [keyed_batch([1, 2, 3], [0, 1, 2]), keyed_batch([4, 5], [3, 4])]
    right = matching_accuracy(KeyScorer(1.0), batches, negatives=3)
    assert right["matching_accuracy"] == 100.0 and right["pairs"] == 15
    assert right["margin"] == pytest.approx(1.0)
    assert matching_accuracy(KeyScorer(-1.0), batches)["matching_accuracy"] == 0.0
    assert matching_accuracy(KeyScorer(0.0), batches)["matching_accuracy"] == 50.0  # ties: 1/2


def test_negatives_never_come_from_the_same_video() -> None:
    # Rows 0 and 1 are one video with different keys: pairing them would be a false negative
    # that this scorer loses; drawn from other videos only, every pair is won.
    batches = [keyed_batch([1, 2, 3, 4], [7, 7, 8, 9])]
    assert matching_accuracy(KeyScorer(1.0), batches, negatives=8)["matching_accuracy"] == 100.0
    with pytest.raises(ValueError, match="two videos"):
        matching_accuracy(KeyScorer(1.0), [keyed_batch([1, 2], [5, 5])])


# --- real shards, real models -------------------------------------------------------------------


def test_heldout_batches_cover_every_segment_once(heldout, tiny_bert) -> None:
    import webdataset as wds

    from pipeline.shards import decode_sample, shard_urls

    batches = heldout["batches"]
    samples = [
        decode_sample(s)
        for s in wds.WebDataset(shard_urls(str(heldout["shards"])), shardshuffle=False)
    ]
    no_concat = DataConfig(shards="x", max_clips=16, concat_prob=0.0)
    expected = sum(len(build_segments(s, no_concat, random.Random(0))) for s in samples)
    # data.concat_prob=1.0 is ignored: every sentence on its own, each once, last batch kept.
    assert sum(len(b["text_ids"]) for b in batches) == expected == 12
    assert [len(b["text_ids"]) for b in batches] == [5, 5, 2]
    assert all(isinstance(v, torch.Tensor) for b in batches for v in b.values())
    again = heldout_batches(heldout["data"], str(tiny_bert), heldout["centroids"], seed=0)
    for b, c in zip(batches, again, strict=True):
        assert b.keys() == c.keys() and all(torch.equal(b[k], c[k]) for k in b)
    # Visual words: the nearest centroid of each clip, as zero-shot evaluation assigns them.
    n = int(batches[0]["video_mask"][0].sum())
    words = nearest_words(batches[0]["video_feats"][0, :n].numpy(), heldout["centroids"])
    assert torch.equal(batches[0]["video_tokens"][0, :n], torch.from_numpy(words))
    plain = heldout_batches(heldout["data"], str(tiny_bert))
    assert (plain[0]["video_tokens"] == -1).all()


@pytest.mark.parametrize("name", MODELS.names())
def test_evidence_is_deterministic_and_leaves_the_run_alone(name, heldout, tiny_bert) -> None:
    model = tiny(name, tiny_bert, heldout["centroids"]).train()
    batches = heldout["batches"]
    rng = torch.get_rng_state()
    mask_id = model.config.mask_token_id
    first = matching_accuracy(model, batches, seed=3) | video_dependence(
        model, batches, mask_id, seed=3
    )
    assert torch.equal(torch.get_rng_state(), rng)  # own generator, not the global RNG
    assert model.training  # mode restored
    again = matching_accuracy(model, batches, seed=3) | video_dependence(
        model, batches, mask_id, seed=3
    )
    assert first == again
    assert first["pairs"] == 12 * 4 and first["masked"] >= 2 * 12
    assert 0.0 <= first["matching_accuracy"] <= 100.0
    assert first["mlm_own"] > 0 and first["mlm_other"] > 0
    if model.masked_lm_sees_video:
        # Untrained, the words hardly depend on the clips, but the other video's clips do change
        # the input (the same clips twice would give exactly 0).
        assert first["video_dependence"] != 0.0
    else:  # CBT: the text tower never sees the clips (methods.md 2.1)
        assert first["video_dependence"] == 0.0
    other_seed = video_dependence(model, batches, mask_id, seed=4)
    assert other_seed["mlm_own"] != first["mlm_own"]  # the seed does draw the masks


@pytest.mark.parametrize("name", MODELS.names())
def test_own_clips_as_other_video_give_no_dependence(name, heldout, tiny_bert) -> None:
    """Every sentence paired with ONE clip set under distinct video ids: the "other" video's clips
    are the sentence's own, so both passes must see the same masked input (dependence 0) and a
    true pair scores as its negatives (margin 0)."""
    model = tiny(name, tiny_bert, heldout["centroids"])
    batch = heldout["batches"][0]
    rows = range(len(batch["text_ids"]))
    n = int(batch["video_mask"][0].sum())
    clips = {
        "video_feats": batch["video_feats"][0, :n],
        "video_tokens": batch["video_tokens"][0, :n],
    }
    texts = [batch["text_ids"][i, : int(batch["text_mask"][i].sum())] for i in rows]
    same = pair_batch(texts, [{**clips, "video_id": torch.tensor(i)} for i in rows])
    dependence = video_dependence(model, [same], model.config.mask_token_id)
    assert dependence["video_dependence"] == pytest.approx(0.0, abs=1e-5)
    assert dependence["mlm_own"] > 0
    assert matching_accuracy(model, [same])["margin"] == pytest.approx(0.0, abs=1e-5)


def test_pretrain_evaluate_logs_the_evidence_and_reads_heldout_once(heldout, tiny_bert) -> None:
    from pretrain.train import PretrainTask

    cfg = load_config(
        PretrainConfig,
        None,
        [
            "model.name=vilbert",
            f"model.text_model={tiny_bert}",
            f"data.shards={heldout['shards']}",
            f"data.heldout={heldout['shards']}",
            "data.batch_size=5",
            "data.max_clips=16",
            "model.config.max_clips=16",
            *[f"model.config.visual.{k}={v}" for k, v in SMALL["visual"].items()],
            "model.config.bi_hidden=48",
            "model.config.bi_heads=4",
        ],
    )
    task = PretrainTask(cfg)
    model = task.build_model().eval()
    with torch.random.fork_rng(devices=[]), torch.no_grad():  # as the engine calls it
        first = task.evaluate(model, 1)
        cached = task._heldout
        second = task.evaluate(model, 2)
    assert task._heldout is cached  # read once
    assert first == second
    assert {"heldout_loss", "matching_accuracy", "video_dependence", "pairs"} <= first.keys()
    assert first["pairs"] == 12 * 4


def test_report_states_the_last_evidence_and_plots_it(tmp_path) -> None:
    from pipeline.io import append_jsonl
    from vlpipe.report import evidence_line, plot_training

    run = tmp_path / "run"
    run.mkdir()
    assert evidence_line(run) == ""
    for step in (1, 2):
        append_jsonl(run / "metrics.jsonl", {"step": step, "loss": 3.0 - step, "text": 1.0})
    for step, acc in ((1, 52.0), (2, 61.25)):
        evals = {"matching_accuracy": acc, "pairs": 40.0, "video_dependence": 0.25 * step}
        append_jsonl(
            run / "metrics.jsonl", {"step": step, **{f"eval/{k}": v for k, v in evals.items()}}
        )
    line = evidence_line(run)
    assert "step 2" in line and "61.2 %" in line and "40 pairs" in line and "+0.500 nats" in line
    assert plot_training(run, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_nearest_words_literal():
    """Each clip's nearest centroid by Euclidean distance (not inner product), as int64; no
    centroids: -1 (no visual word) for every clip."""
    centroids = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 3.0]], np.float32)
    feats = np.array([[9.0, 1.0], [0.1, 2.0], [0.2, 0.1], [4.0, 4.0]], np.float64)
    words = nearest_words(feats, centroids)
    assert words.dtype == np.int64 and words.tolist() == [1, 2, 0, 2]
    none = nearest_words(feats, None)
    assert none.dtype == np.int64 and none.tolist() == [-1, -1, -1, -1]
