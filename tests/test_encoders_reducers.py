"""Token reducers and small-data options against their definitions, in float64: TokenLearner v1 / v1.1
/ TokenFuser equal a line-by-line re-expression of scenic's Flax modules with copied weights (and
what the existing two-stream block does); ToMe's proportional attention over merged duplicates
equals attention over the originals and sizes always add up; LSA never attends to itself; SPT's
shifts are where the paper puts them."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.encoders import build_encoder
from pipeline.encoders.attention import SelfAttention
from pipeline.encoders.spt import ShiftedPatchEmbed, patch_shift, patchify
from pipeline.encoders.tokenlearner import TokenFuser, TokenLearnerV1, TokenLearnerV11
from pipeline.encoders.tome import bipartite_soft_matching, merge_weighted

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# --- scenic re-expressed (projects/token_learner/model.py, model_lib/layers) ------------------
# Flax conventions: Dense kernel [in, out]; Conv kernel [kh, kw, in, out] (HWIO), NHWC inputs;
# nn.gelu = tanh approximation; nn.LayerNorm eps 1e-6.


def flax_gelu(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def flax_layer_norm(x, p):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) * torch.rsqrt(var + 1e-6) * p["scale"] + p["bias"]


def flax_dense(x, p):
    return x @ p["kernel"] + p["bias"]


def flax_conv_same_3x3(x, kernel):
    """NHWC input, HWIO kernel, stride 1, 'SAME' (pad 1), no bias."""
    out = F.conv2d(x.permute(0, 3, 1, 2), kernel.permute(3, 2, 0, 1), padding=1)
    return out.permute(0, 2, 3, 1)


def scenic_mlp_block(x, p, gelu=flax_gelu):  # MlpBlock, deterministic
    return flax_dense(gelu(flax_dense(x, p["Dense_0"])), p["Dense_1"])


def scenic_token_learner_v1(inputs, p, num_tokens):  # TokenLearnerModule, use_sum_pooling=True
    feature_shape = inputs.shape  # [bs, h, w, c]
    selected = flax_layer_norm(inputs, p["LayerNorm_0"])
    for i in range(3):
        selected = flax_gelu(flax_conv_same_3x3(selected, p[f"Conv_{i}"]["kernel"]))
    selected = flax_conv_same_3x3(selected, p["Conv_3"]["kernel"])
    selected = selected.reshape(feature_shape[0], feature_shape[1] * feature_shape[2], -1)
    selected = torch.sigmoid(selected.transpose(1, 2))[..., None]  # [bs, S, hw, 1]
    feat = inputs.reshape(feature_shape[0], feature_shape[1] * feature_shape[2], -1)[:, None]
    return (feat * selected).sum(dim=2)


def scenic_token_learner_v11(inputs, p, num_tokens, gelu=flax_gelu):  # TokenLearnerModuleV11
    n, h, w, c = inputs.shape
    inputs = inputs.reshape(n, h * w, c)
    selected = flax_layer_norm(inputs, p["LayerNorm_0"])
    selected = scenic_mlp_block(selected, p["token_masking"], gelu)
    selected = selected.reshape(n, -1, num_tokens).transpose(1, 2).softmax(dim=-1)
    return torch.einsum("...si,...id->...sd", selected, inputs)


def scenic_token_fuser(inputs, original, p):  # TokenFuser, use_normalization=True
    num_tokens = inputs.shape[-2]
    inputs = flax_layer_norm(inputs, p["fuser_mix_norm1"])
    inputs = flax_dense(inputs.transpose(1, 2), p["Dense_0"]).transpose(1, 2)
    inputs = flax_layer_norm(inputs, p["fuser_mix_norm2"])
    original = flax_layer_norm(original, p["LayerNorm_0"])
    mix = torch.sigmoid(scenic_mlp_block(original, p["token_masking"]))
    assert mix.shape[-1] == num_tokens
    return torch.einsum("...sc,...hs->...hc", inputs, mix)


def _rand(*shape):
    return torch.randn(*shape, dtype=torch.float64) * 0.5


def _ln(c):
    return {"scale": 1 + _rand(c), "bias": _rand(c)}


def _dense(i, o):
    return {"kernel": _rand(i, o), "bias": _rand(o)}


def _copy_ln(module, p):
    module.weight.data.copy_(p["scale"])
    module.bias.data.copy_(p["bias"])


def _copy_dense(module, p):
    module.weight.data.copy_(p["kernel"].T)
    module.bias.data.copy_(p["bias"])


def _v11_params(c, s, bottleneck):
    return {
        "LayerNorm_0": _ln(c),
        "token_masking": {"Dense_0": _dense(c, bottleneck), "Dense_1": _dense(bottleneck, s)},
    }


def test_token_learner_v1_equals_scenic() -> None:
    c, s, h, w = 12, 5, 6, 7  # non-square maps work here (scenic's v1 wants a square)
    p = {"LayerNorm_0": _ln(c), "Conv_0": {"kernel": _rand(3, 3, c, s)}}
    for i in (1, 2, 3):
        p[f"Conv_{i}"] = {"kernel": _rand(3, 3, s, s)}
    ours = TokenLearnerV1(c, s).double()
    _copy_ln(ours.norm, p["LayerNorm_0"])
    for i, conv in enumerate(ours.convs):
        conv.weight.data.copy_(p[f"Conv_{i}"]["kernel"].permute(3, 2, 0, 1))
    x = _rand(3, h, w, c)
    expected = scenic_token_learner_v1(x, p, s)
    torch.testing.assert_close(
        ours(x.reshape(3, h * w, c), (h, w)), expected, rtol=1e-12, atol=1e-12
    )


def test_token_learner_v11_equals_scenic() -> None:
    c, s = 16, 8
    p = _v11_params(c, s, 64)
    ours = TokenLearnerV11(c, s, 64, 0.0).double()
    _copy_ln(ours.norm, p["LayerNorm_0"])
    _copy_dense(ours.mlp.fc1, p["token_masking"]["Dense_0"])
    _copy_dense(ours.mlp.fc2, p["token_masking"]["Dense_1"])
    x = _rand(3, 7, 7, c)
    expected = scenic_token_learner_v11(x, p, s)
    torch.testing.assert_close(ours(x.reshape(3, 49, c)), expected, rtol=1e-12, atol=1e-12)


def test_two_stream_model_uses_the_scenic_token_learner(tiny_bert) -> None:
    """One TokenLearner in the house: the two-stream model's is the scenic-exact block above,
    with scenic's init surviving the model's generic one."""
    from pipeline.models import build_model
    from pipeline.models.settings import ViLBERTSettings

    model = build_model("vilbert", tiny_bert, settings=ViLBERTSettings(use_token_learner=True))
    assert type(model.token_learner) is TokenLearnerV11
    assert model.token_learner.mlp.fc1.bias.abs().max() < 1e-4  # normal(1e-6), not std 0.02


def test_token_fuser_equals_scenic() -> None:
    c, s, hw = 16, 6, 25
    p = {
        "fuser_mix_norm1": _ln(c),
        "Dense_0": _dense(s, s),  # random, not scenic's zero init, so the mixing is exercised
        "fuser_mix_norm2": _ln(c),
        "LayerNorm_0": _ln(c),
        "token_masking": {"Dense_0": _dense(c, 64), "Dense_1": _dense(64, s)},
    }
    ours = TokenFuser(c, s, 64, 0.0).double()
    _copy_ln(ours.norm_tokens, p["fuser_mix_norm1"])
    _copy_dense(ours.mix_tokens, p["Dense_0"])
    _copy_ln(ours.norm_mixed, p["fuser_mix_norm2"])
    _copy_ln(ours.norm_original, p["LayerNorm_0"])
    _copy_dense(ours.mlp.fc1, p["token_masking"]["Dense_0"])
    _copy_dense(ours.mlp.fc2, p["token_masking"]["Dense_1"])
    tokens, original = _rand(2, s, c), _rand(2, hw, c)
    expected = scenic_token_fuser(tokens, original, p)
    torch.testing.assert_close(ours(tokens, original), expected, rtol=1e-12, atol=1e-12)
    assert not TokenFuser(c, s, 64, 0.0).mix_tokens.weight.any()  # scenic: zero kernel init


# --- ToMe (methods.md 5) -----------------------------------------------------------------------


def test_proportional_attention_over_merged_duplicates_is_exact() -> None:
    """Keys repeated s times == one key with log(s) added to its logit (5.3), for every query."""
    attn = SelfAttention(24, 3, True, 0.0, lsa=False).double().eval()
    unique = _rand(2, 5, 24) * 3
    sizes = torch.tensor([[1, 3, 2, 1, 4], [2, 2, 1, 5, 1]], dtype=torch.float64)
    rows = []
    for b in range(2):
        rows.append(unique[b].repeat_interleave(sizes[b].long(), dim=0))
    expanded = torch.stack(rows)  # [2, 11, 24]
    full, _ = attn(expanded)
    merged, _ = attn(unique, sizes)
    for b in range(2):
        group = torch.arange(5).repeat_interleave(sizes[b].long())
        torch.testing.assert_close(full[b], merged[b, group], rtol=1e-12, atol=1e-12)


def test_bipartite_matching_merges_exact_duplicates_first() -> None:
    """Tokens 2i and 2i+1 identical for i < 3: those are the r = 3 merges; the merged tokens
    equal the originals, sizes are 2, and the next proportional attention equals attention over
    the unmerged sequence."""
    x = _rand(1, 10, 16)
    x[:, 1:6:2] = x[:, 0:6:2]  # duplicate A token 2i into B token 2i+1, i = 0, 1, 2
    matching = bipartite_soft_matching(x, r=3, protect_first=False)
    assert sorted(matching.merged[0].tolist()) == [0, 1, 2]
    assert matching.into[0].tolist() == matching.merged[0].tolist()  # A_i joins B_i
    merged, sizes = merge_weighted(matching, x, torch.ones(1, 10, dtype=torch.float64))
    assert merged.shape == (1, 7, 16) and sizes.sum().item() == 10
    assert sorted(sizes[0].tolist()) == [1, 1, 1, 1, 2, 2, 2]
    attn = SelfAttention(16, 2, True, 0.0, lsa=False).double().eval()
    full, _ = attn(x)
    after, _ = attn(merged, sizes)
    for i in range(10):  # every original token's output is its merged token's output
        j = int(((merged[0] - x[0, i]).abs().sum(-1) < 1e-12).nonzero()[0])
        torch.testing.assert_close(full[0, i], after[0, j], rtol=1e-12, atol=1e-12)


def test_matching_protects_the_class_token_and_caps_r() -> None:
    metric = _rand(4, 9, 8)
    metric[:, 0] = metric[:, 1]  # the class token's best match is perfect, yet it must not merge
    matching = bipartite_soft_matching(metric, r=100, protect_first=True)
    assert matching.r == 4  # at most half of the 8 unprotected tokens
    assert (matching.kept[:, 0] == 0).all() and not (matching.merged == 0).any()
    assert bipartite_soft_matching(metric[:, :1], r=3, protect_first=True) is None


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("vivit_mini", ["tome.r=5", "tome.scope=clip", "pool=cls"]),
        ("vivit_mini", ["tome.r=3", "tome.scope=frame", "pool=gap"]),
        ("vivit_mini", ["tome.r=40", "tome.scope=clip", "pool=gap"]),  # capped at half
        ("vivit_factorised_mini", ["tome.r=2", "tome.scope=frame", "pool=cls"]),
    ],
)
def test_tome_sizes_always_sum_to_the_patch_count(name, overrides) -> None:
    settings = ["frames=4", "size=32", "tubelet=[2,8,8]", "tome.enabled=true", *overrides]
    encoder = build_encoder(name, settings).double()
    frames = torch.randint(0, 256, (2, 3, 4, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        out = encoder(frames, return_tokens=True)
    t, h, w = encoder.grid
    if out.sizes is not None:  # joint: sizes per clip; frame scope keeps equal counts per frame
        torch.testing.assert_close(
            out.sizes.sum(-1), torch.full((2, 3), float(t * h * w), dtype=torch.float64)
        )
        assert out.sizes.shape == out.tokens.shape[:3] and out.tokens.shape[2] < t * h * w
        if "tome.scope=frame" in overrides:
            per_frame = out.sizes.reshape(2, 3, t, -1).sum(-1)
            assert (per_frame == h * w).all()
    else:  # factorised: merging happens inside the spatial encoder; tokens are per frame
        assert out.tokens.shape == (2, 3, t, encoder.feature_dim)


# --- LSA and SPT (methods.md 6) ------------------------------------------------------------------


def test_lsa_masks_the_diagonal_for_any_input() -> None:
    attn = SelfAttention(32, 4, True, 0.0, lsa=True).double()
    for scale in (0.0, 1e-6, 1.0, 1e4):
        for length in (1, 2, 17):
            x = _rand(3, length, 32) * scale
            weights = attn.weights(x)
            assert torch.isfinite(weights).all()
            if length > 1:
                assert (weights.diagonal(dim1=-2, dim2=-1) == 0).all()
            torch.testing.assert_close(
                weights.sum(-1), torch.ones(3, 4, length, dtype=torch.float64)
            )
    # the temperature is learned per head, initialised to 1/sqrt(d_k)
    assert attn.temperature.requires_grad and torch.allclose(
        attn.temperature, torch.full((4,), 8**-0.5, dtype=torch.float64)
    )
    out, _ = attn(_rand(2, 9, 32))
    weights = attn.weights(_rand(2, 9, 32))
    assert out.shape == (2, 9, 32) and weights.shape == (2, 4, 9, 9)


def test_spt_shifts_are_the_papers() -> None:
    """4x4 frame holding 1..16, shift 1: left-up copy at (i, j) = x[i-1, j-1], and so on."""
    x = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
    out = patch_shift(x, 1)[0]  # [5, 4, 4]
    padded = F.pad(x[0, 0], (1, 1, 1, 1))  # [6, 6]
    torch.testing.assert_close(out[0], x[0, 0])
    for c, (di, dj) in enumerate([(-1, -1), (-1, 1), (1, -1), (1, 1)], start=1):
        for i in range(4):
            for j in range(4):
                assert out[c, i, j] == padded[i + 1 + di, j + 1 + dj]
    assert out[1, 0, 0] == 0 and out[1, 1, 1] == 1  # left-up: content moves down-right
    assert out[4, 3, 3] == 0 and out[4, 0, 0] == 6  # right-bottom: content moves up-left


def test_spt_embedding_flattens_shifted_patches() -> None:
    """SPT embedding = LN(5*C*pt*ph*pw) then Linear over patches of the 5 stacked copies."""
    embed = ShiftedPatchEmbed(3, 8, (2, 4, 4)).double()
    x = _rand(2, 3, 4, 8, 8)
    stacked = torch.stack([patch_shift(x[:, :, f], 2) for f in range(4)], dim=2)  # [2, 15, 4, 8, 8]
    expected = embed.proj(embed.norm(patchify(stacked, (2, 4, 4))))
    torch.testing.assert_close(embed(x), expected)
    assert embed(x).shape == (2, 2, 2, 2, 8)
    assert embed.norm.normalized_shape == (5 * 3 * 2 * 4 * 4,)
