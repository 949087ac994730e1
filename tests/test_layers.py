"""Building blocks and losses: NCE / KL against their formulas, co-attention streams and masks,
text framing, BERT run on rows grouped by length. (TokenLearner: tests/test_encoders_reducers.py.)"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from pipeline.losses import (
    nce_loss,
    nce_with_pool_negatives,
    pairwise_ranking,
    soft_assignment,
    soft_target_kl,
)
from pipeline.models.layers import (
    CoAttentionLayer,
    MultiHeadAttention,
    RunningFeatureNorm,
    TransformerBlock,
)
from pipeline.models.text import add_cls_sep, bert_by_length, length_runs

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# --- NCE ------------------------------------------------------------------------------------


def test_nce_matches_formula() -> None:
    positive = torch.randn(5)
    negatives = torch.randn(5, 7)
    keep = torch.rand(5, 7) > 0.3
    keep[0] = False  # a query without negatives contributes log(1) = 0
    expected = []
    for m in range(5):
        denominator = math.exp(positive[m]) + sum(
            math.exp(negatives[m, k]) for k in range(7) if keep[m, k]
        )
        expected.append(-math.log(math.exp(positive[m]) / denominator))
    got = nce_loss(positive, negatives, keep)
    assert got.item() == pytest.approx(sum(expected) / 5, rel=1e-5)
    assert expected[0] == pytest.approx(0.0, abs=1e-7)


def test_nce_equal_scores_is_log_one_plus_negatives() -> None:
    for k in (1, 4, 31):
        score = torch.full((3,), 0.7)
        got = nce_loss(score, torch.full((3, k), 0.7))
        assert got.item() == pytest.approx(math.log(1 + k), rel=1e-6)


def test_nce_without_queries_is_zero_and_differentiable() -> None:
    positive = torch.zeros(0, requires_grad=True)
    got = nce_loss(positive, torch.zeros(0, 3))
    got.backward()
    assert got.item() == 0.0


def test_pool_nce_matches_direct_computation() -> None:
    predictions, pool = torch.randn(4, 8), torch.randn(10, 8)
    positive_index = torch.tensor([0, 3, 3, 9])
    tau = 0.2
    cos = torch.nn.functional.cosine_similarity(predictions[:, None], pool[None], dim=-1) / tau
    expected = torch.stack(
        [torch.logsumexp(cos[m], 0) - cos[m, positive_index[m]] for m in range(4)]
    ).mean()
    got = nce_with_pool_negatives(predictions, pool, positive_index, tau, max_negatives=0)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_pool_nce_cap_limits_negatives() -> None:
    # All vectors equal: every score is 1/τ, so the loss is log(1 + #negatives) per query and the
    # sampled subset of 5 holds 5 negatives, or 4 when the query's own target falls in it.
    predictions, pool = torch.ones(6, 4), torch.ones(50, 4)
    got = nce_with_pool_negatives(predictions, pool, torch.arange(6), 0.5, max_negatives=5)
    assert math.log(5) - 1e-5 <= got.item() <= math.log(6) + 1e-5


# --- KL soft targets ------------------------------------------------------------------------


def test_soft_assignment_is_softmax_of_negative_squared_distance() -> None:
    features, centroids = torch.randn(6, 5), torch.randn(9, 5)
    got = soft_assignment(features, centroids, temperature=2.0)
    expected = torch.softmax(-(torch.cdist(features, centroids) ** 2) / 2.0, dim=-1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert torch.equal(got.argmax(1), torch.cdist(features, centroids).argmin(1))
    # relative: invariant to the feature scale (the target stays peaked for tiny features)
    small = soft_assignment(features * 1e-3, centroids * 1e-3, 0.1, relative=True)
    torch.testing.assert_close(small, soft_assignment(features, centroids, 0.1, relative=True))
    assert small.max(1).values.min() > 1.5 / 9


def test_pairwise_ranking_literal_and_ties_count_as_wrong() -> None:
    """-log softmax over (positive, negative) per pair; accuracy counts strict wins only."""
    loss, acc = pairwise_ranking(torch.tensor([2.0, 1.0]), torch.tensor([0.0, 1.0]))
    expected = (math.log(1 + math.exp(-2.0)) + math.log(2.0)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert acc.item() == 0.5  # the tie (1 vs 1) is not a win


@pytest.mark.parametrize(
    ("max_negatives", "negatives_per_row"),
    [
        (0, [3, 3, 3, 3]),  # 0: every other pool entry
        (3, [3, 3, 3, 3]),  # N - 1 would leave out one column: no sampling, all are used
        (2, [1, 1, 2, 2]),  # 2 sampled columns: the 2 rows owning one of them keep 1 negative
        (1, [0, 1, 1, 1]),  # 1 sampled column: its owner has none, the 3 others 1
    ],
)
def test_pool_negatives_subsampling_counts(max_negatives, negatives_per_row) -> None:
    """Pool = 4 orthonormal rows, each query its own pool row: positive 1/τ = 2, every
    negative 0, so a row with k negatives loses log(1 + k e^-2); the mean is exact whichever
    columns the sampling draws."""
    pool = torch.eye(4)
    expected = sum(math.log(1 + k * math.exp(-2.0)) for k in negatives_per_row) / 4
    torch.manual_seed(0)
    loss = nce_with_pool_negatives(pool, pool, torch.arange(4), 0.5, max_negatives)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_soft_assignment_relative_divides_each_row_by_its_median() -> None:
    """Hand-computed: squared distances [[1, 4, 0], [4, 13, 9]], row medians 1 and 9."""
    features = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    centroids = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])

    def softmax(row: list[float]) -> list[float]:
        e = [math.exp(-v / 0.5) for v in row]
        return [v / sum(e) for v in e]

    expected = torch.tensor([softmax([1.0, 4.0, 0.0]), softmax([4 / 9, 13 / 9, 1.0])])
    got = soft_assignment(features, centroids, temperature=0.5, relative=True)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    absolute = torch.tensor([softmax([1.0, 4.0, 0.0]), softmax([4.0, 13.0, 9.0])])
    torch.testing.assert_close(soft_assignment(features, centroids, 0.5), absolute)


def test_soft_target_kl_of_one_row_and_of_none() -> None:
    """One row: KL([.5, .5] || softmax([0, ln 3]) = [.25, .75]) = sum .5 (ln .5 - ln q); no row:
    exactly 0 and still part of the graph."""
    logits = torch.tensor([[0.0, math.log(3.0)]])
    target = torch.tensor([[0.5, 0.5]])
    q = [0.25, 0.75]
    expected = sum(0.5 * (math.log(0.5) - math.log(x)) for x in q)
    assert soft_target_kl(logits, target).item() == pytest.approx(expected, rel=1e-6)
    empty = torch.zeros(0, 4, requires_grad=True)
    zero = soft_target_kl(empty, torch.zeros(0, 4))
    assert zero.item() == 0.0 and zero.requires_grad


def test_soft_target_kl_matches_formula() -> None:
    logits = torch.randn(4, 6)
    target = torch.softmax(torch.randn(4, 6), -1)
    log_q = torch.log_softmax(logits, -1)
    expected = (target * (target.log() - log_q)).sum(-1).mean()
    assert soft_target_kl(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)
    assert soft_target_kl(target.log(), target).item() == pytest.approx(0.0, abs=1e-6)


# --- attention and co-attention -------------------------------------------------------------


def _mask(lengths: list[int], n: int) -> torch.Tensor:
    return torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]


def test_attention_with_all_keys_padded_stays_finite() -> None:
    attention = MultiHeadAttention(8, 8, 8, 2)
    x = torch.randn(2, 3, 8)
    out = attention(x, x, _mask([3, 0], 3))
    assert torch.isfinite(out).all()


def test_transformer_block_ignores_padding() -> None:
    block = TransformerBlock(16, 4, 32, dropout=0.0).eval()
    x, mask = torch.randn(2, 5, 16), _mask([5, 3], 5)
    changed = x.clone()
    changed[1, 3:] = torch.randn(2, 16) * 100
    torch.testing.assert_close(block(x, mask)[1, :3], block(changed, mask)[1, :3])


def test_co_attention_shapes() -> None:
    layer = CoAttentionLayer(
        24, 16, bi_hidden=32, num_heads=4, intermediate_a=48, intermediate_b=20
    )
    a, b = layer(
        torch.randn(3, 7, 24), _mask([7, 2, 5], 7), torch.randn(3, 4, 16), _mask([4, 4, 1], 4)
    )
    assert a.shape == (3, 7, 24)
    assert b.shape == (3, 4, 16)


def test_co_attention_respects_padding_masks() -> None:
    layer = CoAttentionLayer(16, 12, 16, 4, 32, 24, dropout=0.0).eval()
    a, a_mask = torch.randn(2, 6, 16), _mask([6, 3], 6)
    b, b_mask = torch.randn(2, 5, 12), _mask([2, 5], 5)
    a_out, b_out = layer(a, a_mask, b, b_mask)
    a2, b2 = a.clone(), b.clone()
    a2[1, 3:] = torch.randn(3, 16) * 50  # padded text positions of row 1
    b2[0, 2:] = torch.randn(3, 12) * 50  # padded clips of row 0
    a2_out, b2_out = layer(a2, a_mask, b2, b_mask)
    torch.testing.assert_close(a_out[a_mask], a2_out[a_mask])
    torch.testing.assert_close(b_out[b_mask], b2_out[b_mask])
    # and the real content does matter: changing a real clip changes the other stream
    b2[0, 0] += 1.0
    assert not torch.allclose(layer(a2, a_mask, b2, b_mask)[0][0], a2_out[0])


def test_co_attention_swapping_streams_and_weights_swaps_outputs() -> None:
    first = CoAttentionLayer(16, 16, 16, 4, 32, 32, dropout=0.0).eval()
    second = CoAttentionLayer(16, 16, 16, 4, 32, 32, dropout=0.0).eval()
    # stream-1 weights into the stream-2 slots and vice versa
    second.to_a.load_state_dict(first.to_b.state_dict())
    second.to_b.load_state_dict(first.to_a.state_dict())
    a, a_mask = torch.randn(2, 5, 16), _mask([5, 2], 5)
    b, b_mask = torch.randn(2, 5, 16), _mask([3, 5], 5)
    a_out, b_out = first(a, a_mask, b, b_mask)
    b_swapped, a_swapped = second(b, b_mask, a, a_mask)
    torch.testing.assert_close(a_out, a_swapped)
    torch.testing.assert_close(b_out, b_swapped)
    # without the weight swap the roles are not interchangeable
    assert not torch.allclose(first(b, b_mask, a, a_mask)[0], b_out)


# --- text framing ---------------------------------------------------------------------------


def test_add_cls_sep_layout() -> None:
    ids = torch.tensor([[7, 8, 9], [5, 0, 0], [0, 0, 0]])
    mask = _mask([3, 1, 0], 3)
    framed, framed_mask = add_cls_sep(ids, mask, cls_id=101, sep_id=102, pad_id=0)
    assert framed.tolist() == [[101, 7, 8, 9, 102], [101, 5, 102, 0, 0], [101, 102, 0, 0, 0]]
    assert framed_mask.sum(1).tolist() == [5, 3, 2]


def test_add_cls_sep_rejects_non_prefix_mask() -> None:
    with pytest.raises(ValueError, match="prefix"):
        add_cls_sep(
            torch.ones(1, 3, dtype=torch.long), torch.tensor([[True, False, True]]), 1, 2, 0
        )


# --- BERT on rows grouped by length ---------------------------------------------------------


def _brute_force_runs(lengths: list[int], overhead: int) -> float:
    """The least cost over every way to cut the sorted rows into contiguous runs."""
    n, best = len(lengths), float("inf")
    for cuts in range(2 ** (n - 1)):
        bounds = [0] + [i + 1 for i in range(n - 1) if cuts >> i & 1] + [n]
        cost = sum((b - a) * lengths[b - 1] + overhead for a, b in itertools.pairwise(bounds))
        best = min(best, cost)
    return best


@pytest.mark.parametrize("overhead", [0, 5, 40])
def test_length_runs_is_the_cheapest_cut(overhead: int) -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        lengths = sorted(torch.randint(1, 30, (9,), generator=gen).tolist())
        runs = length_runs(lengths, overhead)
        assert runs[0][0] == 0 and runs[-1][1] == len(lengths)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(runs))  # contiguous, no gap
        cost = sum((b - a) * lengths[b - 1] + overhead for a, b in runs)
        assert cost == _brute_force_runs(lengths, overhead)
    assert length_runs([3, 3, 3], 0) == [(0, 3)]  # rows of one length stay together
    assert length_runs([2, 2, 20, 20], 0) == [(0, 2), (2, 4)]
    assert length_runs([2, 2, 20, 20], 100) == [(0, 4)]


def test_bert_by_length_equals_one_padded_call() -> None:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=40,
    )  # fmt: skip
    bert = BertModel(config, add_pooling_layer=True).eval()
    lengths = [3, 17, 4, 30, 3, 16, 29, 5]
    mask = _mask(lengths, 30).long()
    ids = torch.randint(1, 50, (8, 30)) * mask
    types = (torch.arange(30)[None] >= 2).long() * mask
    one = bert(input_ids=ids, attention_mask=mask, token_type_ids=types)
    assert len(length_runs(sorted(lengths), 0)) > 1  # the grouped path runs
    hidden, pooled = bert_by_length(bert, mask, 0, input_ids=ids, token_type_ids=types)
    real = mask.bool()
    torch.testing.assert_close(hidden[real], one.last_hidden_state[real])
    torch.testing.assert_close(pooled, one.pooler_output)
    assert not hidden[~real].any()  # padding comes back as zeros
    # The gradients through the regrouping are those of the one call (padding's are zero).
    weight = torch.randn(8, 30, 32)
    grads = []
    for grouped in (False, True):
        embeds = bert.embeddings.word_embeddings(ids).detach().requires_grad_()
        if grouped:
            hidden, _ = bert_by_length(bert, mask, 0, inputs_embeds=embeds, token_type_ids=types)
        else:
            hidden = bert(inputs_embeds=embeds, attention_mask=mask, token_type_ids=types)[0]
        (hidden * weight * real[..., None]).sum().backward()
        grads.append(embeds.grad)
    torch.testing.assert_close(grads[1][real], grads[0][real])
    assert grads[1][real].abs().sum(-1).gt(0).all() and not grads[1][~real].any()


def test_running_feature_norm_matches_the_statistics_of_every_clip_seen() -> None:
    norm = RunningFeatureNorm(6)
    x = torch.randn(3, 5, 6) * 1e-4 + 4e-4  # tiny scale, like random-init S3D features
    assert torch.equal(norm(x), x)  # identity before any clip was seen
    masks = [torch.rand(3, 5) < 0.6 for _ in range(4)]
    batches = [x * (i + 1) for i in range(4)]
    for batch, mask in zip(batches, masks, strict=True):
        norm.update(batch, mask)
    seen = torch.cat([b[m] for b, m in zip(batches, masks, strict=True)]).double()  # [n, 6]
    assert norm.count == len(seen)
    torch.testing.assert_close(norm.mean.double(), seen.mean(0), rtol=1e-5, atol=0)
    std = seen.std(0)  # unbiased, as the module
    torch.testing.assert_close(norm.divisor().double(), std * 6**0.5, rtol=1e-4, atol=0)
    out = norm(seen.float())
    torch.testing.assert_close(out.mean(0), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.norm(dim=1).pow(2).mean(), torch.tensor(1.0), rtol=0.05, atol=0)
    norm.update(torch.zeros(2, 6), torch.zeros(2, dtype=torch.bool))  # nothing real: no change
    assert norm.count == len(seen)


def test_running_feature_norm_floors_dead_dimensions() -> None:
    norm = RunningFeatureNorm(4, floor=0.1)
    x = torch.randn(50, 4)
    x[:, 3] = 2.0  # a dimension that never varies
    norm.update(x)
    out = norm(x)
    assert torch.isfinite(out).all() and out[:, 3].abs().max() < 1e-6
    assert norm.divisor()[3] == pytest.approx(0.1 * float(x[:, :3].std(0).sum() / 4) * 2, rel=1e-4)
