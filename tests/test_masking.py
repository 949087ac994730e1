"""BERT masking (methods.md 1.4: 15 % of the positions, of those 80 % [MASK], 10 % a random id,
10 % unchanged) checked against the published numbers, not against the code's own constants:

* `mask_tokens` itself over ~10^5 positions, binomial tolerances (5 standard deviations);
* the defaults every objective publishes (settings classes and the non-demo configs; the demo
  configs raise the rates on purpose and are not pinned here);
* the rates the VideoBERT and CBT objectives really apply, read from what their models receive.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
import torch
from transformers import BertConfig

from pipeline.config import load_config
from pipeline.models.base import mask_tokens
from pipeline.models.cbt import CBTConfig, CBTForPretraining, CBTObjective
from pipeline.models.settings import (
    CBTObjectiveSettings,
    ObjectiveSettings,
    VideoBERTObjectiveSettings,
    ViLBERTObjectiveSettings,
)
from pipeline.models.videobert import VideoBERTConfig, VideoBERTForPretraining, VideoBERTObjective
from pipeline.train_config import PretrainConfig

REPO = Path(__file__).resolve().parent.parent
BERT_RATE, TO_MASK, TO_RANDOM, UNCHANGED = 0.15, 0.8, 0.1, 0.1  # methods.md 1.4 (BERT defaults)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def within(observed: float, p: float, n: int, sigmas: float = 5.0) -> bool:
    """observed share of n Bernoulli(p) draws lies within `sigmas` standard deviations of p."""
    return abs(observed - p) <= sigmas * math.sqrt(p * (1 - p) / n)


def test_mask_tokens_default_rate_and_80_10_10_split() -> None:
    gen = torch.Generator().manual_seed(0)
    vocab, mask_id = 1_000_000, 5
    ids = torch.randint(1000, 2000, (200, 500), generator=gen)  # far from mask_id and rare
    candidates = torch.rand(ids.shape, generator=gen) < 0.5
    masked, labels = mask_tokens(ids, candidates, mask_id, vocab, generator=gen)  # default prob
    chosen = labels != -100

    assert not (chosen & ~candidates).any()  # non-candidates are never chosen
    assert torch.equal(labels[chosen], ids[chosen])  # labels: the original id where chosen
    assert (labels[~chosen] == -100).all()  # ... and -100 everywhere else
    assert torch.equal(masked[~chosen], ids[~chosen])  # nothing else is touched

    n = int(candidates.sum())
    rate = chosen.sum().item() / n
    assert within(rate, BERT_RATE, n), f"{rate:.4f} of the candidates chosen, expected 0.15"
    m = int(chosen.sum())
    got = masked[chosen]
    to_mask = got == mask_id
    unchanged = got == ids[chosen]
    to_random = ~to_mask & ~unchanged
    for name, share, p in (
        ("[MASK]", to_mask, TO_MASK),
        ("random", to_random, TO_RANDOM),
        ("unchanged", unchanged, UNCHANGED),
    ):
        observed = share.float().mean().item()
        assert within(observed, p, m), f"{name}: {observed:.4f} of the chosen, expected {p}"
    # Random replacements are uniform over the whole vocabulary [0, vocab).
    random_ids = got[to_random].double()
    assert random_ids.min() >= 0 and random_ids.max() < vocab
    sd_of_mean = vocab / math.sqrt(12 * len(random_ids))
    assert abs(random_ids.mean().item() - vocab / 2) < 5 * sd_of_mean


def test_mask_tokens_publishes_bert_default_and_obeys_prob() -> None:
    assert inspect.signature(mask_tokens).parameters["prob"].default == 0.15
    ids = torch.arange(4000).view(8, 500)
    everywhere = torch.ones_like(ids, dtype=torch.bool)
    for prob in (0.05, 0.5):
        gen = torch.Generator().manual_seed(1)
        _, labels = mask_tokens(ids, everywhere, 0, 10, prob, gen)
        rate = (labels != -100).float().mean().item()
        assert within(rate, prob, ids.numel()), (prob, rate)
    _, labels = mask_tokens(ids, everywhere, 0, 10, 1.0)
    assert (labels == ids).all()  # prob 1: every candidate


def test_mask_tokens_forces_one_choice_per_row_with_candidates() -> None:
    ids = torch.arange(1, 25).view(4, 6)
    candidates = torch.tensor(
        [
            [0, 0, 0, 1, 0, 0],  # one candidate: always the one chosen
            [0, 0, 0, 0, 0, 0],  # none: nothing chosen
            [1, 0, 0, 0, 0, 1],  # two: one of them, each in turn
            [1, 1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    picked_in_row2 = set()
    for seed in range(40):
        gen = torch.Generator().manual_seed(seed)
        masked, labels = mask_tokens(ids, candidates, 99, 100, 1e-9, gen)
        chosen = labels != -100
        assert chosen.sum(1).tolist() == [1, 0, 1, 1], seed
        assert chosen[0, 3] and not (chosen & ~candidates).any()
        assert torch.equal(masked[1], ids[1]) and (labels[1] == -100).all()
        picked_in_row2.add(int(chosen[2].nonzero()))
    assert picked_in_row2 == {0, 5}  # a random candidate, not always the first


def test_mask_tokens_follows_its_generator() -> None:
    ids = torch.arange(600).view(3, 200)
    everywhere = torch.ones_like(ids, dtype=torch.bool)
    a = mask_tokens(ids, everywhere, 0, 1000, generator=torch.Generator().manual_seed(3))
    b = mask_tokens(ids, everywhere, 0, 1000, generator=torch.Generator().manual_seed(3))
    c = mask_tokens(ids, everywhere, 0, 1000, generator=torch.Generator().manual_seed(4))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[1], c[1])


@pytest.mark.parametrize(
    "settings",
    [ObjectiveSettings, VideoBERTObjectiveSettings, CBTObjectiveSettings, ViLBERTObjectiveSettings],
)
def test_objective_settings_publish_bert_masking(settings) -> None:
    s = settings()
    assert (s.mask_prob, s.clip_mask_prob) == (0.15, 0.15)


def test_objective_settings_other_published_defaults() -> None:
    # The NCE temperature is our choice (methods.md 2.1 gives none): pinned so a change is seen.
    assert CBTObjectiveSettings().nce_temperature == 0.1
    assert ViLBERTObjectiveSettings().clip_zero_prob == 0.9  # random_region's 90 % (3.5)
    assert VideoBERTObjectiveSettings().max_subsample == 5  # "1 to 5 steps" (1.2)
    assert VideoBERTObjective().settings.mask_prob == 0.15
    assert CBTObjective().settings.clip_mask_prob == 0.15


@pytest.mark.parametrize("model", ["videobert", "cbt", "vilbert"])
def test_published_pretrain_configs_mask_15_percent(model) -> None:
    cfg = load_config(
        PretrainConfig, REPO / f"configs/pretrain/{model}.yaml", ["data.shards=x", "data.vocab=y"]
    )
    assert (cfg.objective.mask_prob, cfg.objective.clip_mask_prob) == (0.15, 0.15)


# ------------------------------------------------------------- rates the objectives apply

TEXT_VOCAB, VISUAL_WORDS, MASK = 200, 60, 103


def tiny_videobert() -> VideoBERTForPretraining:
    text = BertConfig(
        vocab_size=TEXT_VOCAB,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=96,
    )
    config = VideoBERTConfig(
        text_config=text.to_dict(),
        num_visual_words=VISUAL_WORDS,
        cls_token_id=101,
        sep_token_id=102,
        mask_token_id=MASK,
        pad_token_id=0,
    )
    return VideoBERTForPretraining(config)


def test_videobert_objective_masks_15_percent_of_words_and_clips() -> None:
    """Share of [MASK] in the packed text and video slots the model receives: 0.8 x 0.15 (a
    row of 40 draws none with probability 0.85^40 = 0.0015: the forced choice is negligible)."""
    torch.manual_seed(0)
    model = tiny_videobert()
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    rows, words, clips = 16, 40, 40
    batch = {
        "text_ids": torch.randint(MASK + 1, TEXT_VOCAB, (rows, words)),
        "text_mask": torch.ones(rows, words, dtype=torch.bool),
        "video_feats": torch.zeros(rows, clips, 8),
        "video_tokens": torch.randint(0, VISUAL_WORDS, (rows, clips)),
        "video_mask": torch.ones(rows, clips, dtype=torch.bool),
        "video_ids": torch.arange(rows),
    }
    # Text-video rows only, every clip kept, no negatives: each row is [CLS] 40 words [>] 40 clips.
    settings = VideoBERTObjectiveSettings(
        p_text_only=0.0, p_video_only=0.0, max_subsample=1, negative_fraction=0.0
    )
    objective = VideoBERTObjective(settings)
    with torch.no_grad():
        for _ in range(5):
            objective(model, batch)
    ids = torch.cat(seen)  # [5 x 16, 83]
    assert ids.shape == (5 * rows, words + clips + 3)
    expected = TO_MASK * BERT_RATE
    for name, region in (("words", ids[:, 1 : 1 + words]), ("clips", ids[:, 2 + words : -1])):
        share = (region == MASK).float().mean().item()
        assert within(share, expected, region.numel()), f"[MASK] in {name}: {share:.4f}"


def test_cbt_objective_masks_15_percent_of_clips_and_words() -> None:
    """Masked clips / masked words the CBT model is asked to predict, as a share of the real
    ones. Every row with candidates gets at least one (mask_tokens), so the expected share is
    (n p + (1 - p)^n) / n for rows of n candidates."""
    torch.manual_seed(0)
    text = BertConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    model = CBTForPretraining(
        CBTConfig(
            text_config=text.to_dict(),
            feat_dim=8,
            max_clips=16,
            visual={"hidden": 16, "heads": 2, "intermediate": 32, "layers": 1},
            cross={"hidden": 16, "heads": 2, "intermediate": 32, "layers": 1},
            cls_token_id=1,
            sep_token_id=2,
            mask_token_id=3,
            freeze_text=False,
        )
    )
    seen: list[dict] = []
    model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs), with_kwargs=True
    )
    rows, words, clips = 32, 20, 16
    batch = {
        "text_ids": torch.randint(5, 120, (rows, words)),
        "text_mask": torch.ones(rows, words, dtype=torch.bool),
        "video_feats": torch.randn(rows, clips, 8),
        "video_tokens": torch.full((rows, clips), -1),
        "video_mask": torch.ones(rows, clips, dtype=torch.bool),
        "video_ids": torch.arange(rows),
    }
    objective = CBTObjective(CBTObjectiveSettings(w_text=1.0))  # w_text > 0: words masked too
    with torch.no_grad():
        for _ in range(5):
            objective(model, batch)
    for key, n in (("masked_clips", clips), ("mlm_positions", words)):
        chosen = torch.cat([kw[key] for kw in seen])
        expected = (n * BERT_RATE + (1 - BERT_RATE) ** n) / n
        share = chosen.float().mean().item()
        assert within(share, expected, chosen.numel()), f"{key}: {share:.4f} vs {expected:.4f}"


def test_mask_tokens_forces_a_choice_in_every_row_that_drew_none() -> None:
    """Row by row: a row that drew a choice does not spare the others. Row 0 has 200 candidates
    (it always draws some at 15 %), the 99 rows below one candidate each (most draw none)."""
    ids = torch.arange(100 * 200).view(100, 200)
    candidates = torch.zeros(100, 200, dtype=torch.bool)
    candidates[0] = True
    candidates[1:, 7] = True
    _, labels = mask_tokens(ids, candidates, 0, 100, 0.15, torch.Generator().manual_seed(0))
    chosen = labels != -100
    assert chosen[0].sum() > 1
    assert chosen[1:, 7].all() and chosen[1:].sum() == 99
