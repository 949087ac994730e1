"""Video Swin against its definitions and references: shifted windows as masked full attention
(float64), the 2D transformers Swin / Swin V2 layers with copied weights, the shrunk-window bias
indexing (methods.md 10), published output shapes, and the official checkpoint layout."""

from __future__ import annotations

import itertools

import pytest
import torch
from transformers import SwinConfig, Swinv2Config
from transformers.models.swin.modeling_swin import SwinLayer
from transformers.models.swinv2.modeling_swinv2 import Swinv2Layer

from pipeline.encoders import build_encoder, encoder_settings
from pipeline.encoders.swin import PatchEmbed3D, load_video_swin_weights
from pipeline.encoders.swin_layers import (
    SwinBlock3D,
    WindowAttention3D,
    effective_window,
    relative_position_index,
    shift_mask,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _block(dim, heads, window, shift, **kw) -> SwinBlock3D:
    args = dict(mlp_ratio=2.0, qkv_bias=True, dropout=0.0, attention_dropout=0.0, drop_path=0.0)
    args.update(v2=False, lsa=False, bias_indexing="reference")
    args.update(kw)
    return SwinBlock3D(dim, heads, window, shift, **args).double().eval()


def _full_attention_reference(block: SwinBlock3D, x: torch.Tensor) -> torch.Tensor:
    """Window attention re-derived as ONE attention over all tokens of the unrolled (padded) grid:
    a pair may attend iff both lie in the same window of the shifted partition (no wrap-around),
    with the bias of their true 3D offset. Independent of rolls, partitions and the -100 mask."""
    attn = block.attn
    b, d, h, w, c = x.shape
    window, shift = effective_window((d, h, w), block.window, block.shift)
    pads = [(-size) % win for size, win in zip((d, h, w), window, strict=True)]
    x = torch.nn.functional.pad(x, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
    dims = x.shape[1:4]
    coords = torch.tensor(list(itertools.product(*(range(s) for s in dims))))  # [L, 3]
    # Piece of the shifted partition on each axis: [0, s), [s, s + w), ... (s = 0: plain windows).
    piece = torch.div(
        coords - torch.tensor(shift) + torch.tensor(window),
        torch.tensor(window),
        rounding_mode="floor",
    )
    same = (piece[:, None, :] == piece[None, :, :]).all(-1)  # [L, L]
    offset = coords[:, None, :] - coords[None, :, :] + torch.tensor(block.window) - 1
    tw = block.window
    index = (
        offset[..., 0] * (2 * tw[1] - 1) * (2 * tw[2] - 1)
        + offset[..., 1] * (2 * tw[2] - 1)
        + offset[..., 2]
    )
    index = torch.where(same, index, 0)  # pairs in different windows are masked below anyway
    bias = attn.relative_position_bias_table[index].permute(2, 0, 1)  # [heads, L, L]
    tokens = x.reshape(b, -1, c)
    q, k, v = torch.nn.functional.linear(tokens, attn.qkv.weight, attn.qkv.bias).chunk(3, dim=-1)
    heads = attn.num_heads

    def split(t):
        return t.view(b, -1, heads, c // heads).transpose(1, 2)

    logits = split(q) @ split(k).transpose(-2, -1) * (c // heads) ** -0.5 + bias
    logits = logits.masked_fill(~same, -torch.inf)
    out = (logits.softmax(-1) @ split(v)).transpose(1, 2).reshape(b, -1, c)
    out = attn.proj(out).view(b, *dims, c)
    return out[:, :d, :h, :w]


def _mask_for(block: SwinBlock3D, size):
    window, shift = effective_window(size, block.window, block.shift)
    if not any(shift):
        return None
    padded = tuple(-(-s // w) * w for s, w in zip(size, window, strict=True))
    return shift_mask(padded, window, shift, "cpu")


@pytest.mark.parametrize(
    "size, window, shifted",
    [
        ((4, 8, 8), (2, 4, 4), True),  # whole windows
        ((4, 8, 8), (2, 4, 4), False),
        ((3, 6, 10), (2, 4, 4), True),  # padding on every axis
        ((2, 8, 8), (2, 4, 4), True),  # time equals the window: shrinks, unshifted in time
    ],
)
def test_shifted_window_attention_equals_masked_full_attention(size, window, shifted) -> None:
    shift = tuple(w // 2 for w in window) if shifted else (0, 0, 0)
    block = _block(16, 2, window, shift)
    x = torch.randn(2, *size, 16, dtype=torch.float64)
    got = block.attention(x, _mask_for(block, size))
    expected = _full_attention_reference(block, x)
    # The reference's -100 (not -inf) across regions contributes exp(-100) ~ 4e-44: invisible.
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_block_matches_transformers_swin_layer_2d() -> None:
    """T = 1 and window (1, 7, 7): the 3D block is the 2D Swin block (shifted, padded 13 -> 14)."""
    dim, heads = 32, 4
    config = SwinConfig(
        window_size=7, embed_dim=dim, mlp_ratio=4.0, hidden_act="gelu", qkv_bias=True
    )
    ours = SwinBlock3D(
        dim, heads, (1, 7, 7), (0, 3, 3), 4.0, True, 0.0, 0.0, 0.0, False, False, "reference"
    ).eval()
    theirs = SwinLayer(config, dim, (13, 13), heads, shift_size=3).eval()
    for p in theirs.parameters():
        torch.nn.init.normal_(p, std=0.2)
    a = theirs.attention
    with torch.no_grad():
        ours.norm1.load_state_dict(theirs.layernorm_before.state_dict())
        ours.norm2.load_state_dict(theirs.layernorm_after.state_dict())
        ours.attn.qkv.weight.copy_(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]))
        ours.attn.qkv.bias.copy_(torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]))
        ours.attn.proj.load_state_dict(a.o_proj.state_dict())
        ours.attn.relative_position_bias_table.copy_(
            a.relative_position_bias.relative_position_bias_table
        )
        ours.mlp.fc1.load_state_dict(theirs.mlp.fc1.state_dict())
        ours.mlp.fc2.load_state_dict(theirs.mlp.fc2.state_dict())
    x = torch.randn(2, 13, 13, dim)
    expected = theirs(x.view(2, 169, dim), (13, 13))[0].view(2, 1, 13, 13, dim)
    got = ours(x.unsqueeze(1), _mask_for(ours, (1, 13, 13)))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_v2_block_matches_transformers_swinv2_layer_2d() -> None:
    """Swin V2: cosine attention, clamped logit scale, log-spaced CPB, post-norm (T = 1)."""
    dim, heads = 32, 4
    config = Swinv2Config(
        window_size=7, embed_dim=dim, mlp_ratio=4.0, hidden_act="gelu", qkv_bias=True
    )
    ours = SwinBlock3D(
        dim, heads, (1, 7, 7), (0, 3, 3), 4.0, True, 0.0, 0.0, 0.0, True, False, "reference"
    ).eval()
    theirs = Swinv2Layer(config, dim, (14, 14), heads, shift_size=3).eval()
    for name, p in theirs.named_parameters():
        torch.nn.init.normal_(p, std=0.2 if "logit_scale" not in name else 1.0)
    with torch.no_grad():
        theirs.attention.self.logit_scale[0] = 6.0  # above log(100): exercises the clamp
        s = theirs.attention.self
        ours.norm1.load_state_dict(theirs.layernorm_before.state_dict())
        ours.norm2.load_state_dict(theirs.layernorm_after.state_dict())
        ours.attn.qkv.weight.copy_(torch.cat([s.query.weight, s.key.weight, s.value.weight]))
        ours.attn.q_bias.copy_(s.query.bias)
        ours.attn.v_bias.copy_(s.value.bias)
        ours.attn.logit_scale.copy_(s.logit_scale)
        ours.attn.cpb_mlp[0].weight.zero_()
        ours.attn.cpb_mlp[0].weight[:, 1:].copy_(s.continuous_position_bias_mlp[0].weight)  # (h, w)
        ours.attn.cpb_mlp[0].bias.copy_(s.continuous_position_bias_mlp[0].bias)
        ours.attn.cpb_mlp[2].weight.copy_(s.continuous_position_bias_mlp[2].weight)
        ours.attn.proj.load_state_dict(theirs.attention.output.dense.state_dict())
        ours.mlp.fc1.load_state_dict(theirs.intermediate.dense.state_dict())
        ours.mlp.fc2.load_state_dict(theirs.output.dense.state_dict())
    x = torch.randn(2, 14, 14, dim)
    expected = theirs(x.view(2, 196, dim), (14, 14))[0].view(2, 1, 14, 14, dim)
    got = ours(x.unsqueeze(1), _mask_for(ours, (1, 14, 14)))
    # transformers adds the shift mask twice (-200 instead of -100): both vanish in the softmax.
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_v2_coordinates_guard_windows_of_one() -> None:
    attn = WindowAttention3D(8, (1, 4, 4), 2, True, 0.0, 0.0, True, False, "exact")
    assert torch.isfinite(attn.relative_coords_table).all()
    assert (attn.relative_coords_table[:, 0] == 0).all()
    assert torch.isfinite(attn.position_bias((1, 4, 4))).all()


def test_shrunk_window_bias_reference_vs_exact() -> None:
    """methods.md 10: the reference slices the full-window index; right when only time shrinks."""
    full = relative_position_index((8, 7, 7))
    n = 2 * 7 * 7
    assert torch.equal(full[:n, :n], relative_position_index((2, 7, 7), (8, 7, 7)))
    n = 2 * 2 * 2
    assert not torch.equal(full[:n, :n], relative_position_index((2, 2, 2), (8, 7, 7)))
    ref = WindowAttention3D(8, (8, 7, 7), 2, True, 0.0, 0.0, False, False, "reference")
    exact = WindowAttention3D(8, (8, 7, 7), 2, True, 0.0, 0.0, False, False, "exact")
    exact.load_state_dict(ref.state_dict())
    torch.testing.assert_close(ref.position_bias((2, 7, 7)), exact.position_bias((2, 7, 7)))
    assert not torch.allclose(ref.position_bias((2, 2, 2)), exact.position_bias((2, 2, 2)))
    # exact: the bias of a pair is the table row of its true offset, e.g. token 0 -> token (1,1,1)
    table = exact.relative_position_bias_table
    row = (7 - 1) * 13 * 13 + (6 - 1) * 13 + (6 - 1)  # offset (-1, -1, -1) shifted by window - 1
    torch.testing.assert_close(exact.position_bias((2, 2, 2))[:, 0, 7], table[row])


def test_lsa_window_attention_masks_the_diagonal() -> None:
    attn = WindowAttention3D(16, (2, 4, 4), 4, True, 0.0, 0.0, False, True, "exact").double()
    for scale in (1e-3, 1.0, 1e3):
        x = torch.randn(6, 32, 16, dtype=torch.float64) * scale
        weights = attn.weights(x, (2, 4, 4))
        assert (weights.diagonal(dim1=-2, dim2=-1) == 0).all()
        torch.testing.assert_close(weights.sum(-1), torch.ones(6, 4, 32, dtype=torch.float64))


def test_patch_embed_pads_to_whole_patches() -> None:
    embed = PatchEmbed3D((2, 4, 4), 8, norm=True, spt=False)
    assert embed(torch.randn(1, 3, 5, 13, 9)).shape == (1, 3, 4, 3, 8)
    spt = PatchEmbed3D((2, 4, 4), 8, norm=True, spt=True)
    assert spt(torch.randn(1, 3, 5, 13, 9)).shape == (1, 3, 4, 3, 8)


@pytest.mark.parametrize(
    "name, width, params_m",
    [("video_swin_tiny", 768, 28), ("video_swin_small", 768, 50), ("video_swin_base", 1024, 88)],
)
def test_published_configurations_shapes(name, width, params_m) -> None:
    """Published widths and parameter counts (README: 28M / 50M / 88M); clips that need padding
    (9 frames, 45 x 38 px: not multiples of the patch or the windows) give [B, T, D]."""
    encoder = build_encoder(name)
    assert encoder.feature_dim == width
    assert round(sum(p.numel() for p in encoder.parameters()) / 1e6) == params_m
    frames = torch.randint(0, 256, (1, 2, 9, 45, 38, 3), dtype=torch.uint8)
    with torch.no_grad():
        out = encoder(frames, return_tokens=True)
    # 9 frames -> 5 patches in time; 45 x 38 -> 12 x 10 -> 6 x 5 -> 3 x 3 -> 2 x 2 after merges.
    assert out.pooled.shape == (1, 2, width)
    assert out.tokens.shape == (1, 2, 5 * 2 * 2, width)
    assert torch.isfinite(out.pooled).all()


def _official_keys(depths, heads, dim, window=(8, 7, 7), patch=(2, 4, 4)):
    """Key -> shape of a released Video Swin checkpoint, enumerated from the reference code
    (`SwinTransformer3D` under `backbone.`, `I3DHead` under `cls_head.`), not from our modules."""
    keys = {
        "backbone.patch_embed.proj.weight": (dim, 3, *patch),
        "backbone.patch_embed.proj.bias": (dim,),
        "backbone.patch_embed.norm.weight": (dim,),
        "backbone.patch_embed.norm.bias": (dim,),
    }
    table = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
    n = window[0] * window[1] * window[2]
    for i, (depth, h) in enumerate(zip(depths, heads, strict=True)):
        c = dim * 2**i
        for j in range(depth):
            p = f"backbone.layers.{i}.blocks.{j}."
            keys.update({
                p + "norm1.weight": (c,), p + "norm1.bias": (c,),
                p + "attn.relative_position_bias_table": (table, h),
                p + "attn.relative_position_index": (n, n),
                p + "attn.qkv.weight": (3 * c, c), p + "attn.qkv.bias": (3 * c,),
                p + "attn.proj.weight": (c, c), p + "attn.proj.bias": (c,),
                p + "norm2.weight": (c,), p + "norm2.bias": (c,),
                p + "mlp.fc1.weight": (4 * c, c), p + "mlp.fc1.bias": (4 * c,),
                p + "mlp.fc2.weight": (c, 4 * c), p + "mlp.fc2.bias": (c,),
            })  # fmt: skip
        if i < len(depths) - 1:
            p = f"backbone.layers.{i}.downsample."
            keys.update(
                {
                    p + "reduction.weight": (2 * c, 4 * c),
                    p + "norm.weight": (4 * c,),
                    p + "norm.bias": (4 * c,),
                }
            )
    c = dim * 2 ** (len(depths) - 1)
    keys.update({"backbone.norm.weight": (c,), "backbone.norm.bias": (c,)})
    keys.update({"cls_head.fc_cls.weight": (400, c), "cls_head.fc_cls.bias": (400,)})
    return keys


def test_official_checkpoint_layout_loads(tmp_path) -> None:
    """A Swin-T checkpoint in the release layout ({"meta", "state_dict"}, .pth) loads with no missing
    or unexpected keys, every value lands where it belongs, and the checksum is recorded."""
    keys = _official_keys([2, 2, 6, 2], [3, 6, 12, 24], 96)
    generator = torch.Generator().manual_seed(1)
    state = {}
    for key, shape in keys.items():
        if key.endswith("relative_position_index"):
            state[key] = relative_position_index((8, 7, 7))
        else:
            state[key] = torch.randn(shape, generator=generator) * 0.02
    path = tmp_path / "swin_tiny_patch244_window877_kinetics400_1k.pth"
    torch.save({"meta": {"mmaction_version": "0.x", "epoch": 30}, "state_dict": state}, path)
    encoder = build_encoder("video_swin_tiny", {"weights": str(path)})
    own = encoder.state_dict()
    backbone = {
        k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")
    }
    assert set(backbone) == set(own)  # nothing missing, nothing unexpected
    for key, value in backbone.items():
        assert torch.equal(own[key], value.to(own[key].dtype)), key
    assert len(encoder.weights_sha256) == 64


def test_official_layout_errors_name_the_keys(tmp_path) -> None:
    keys = _official_keys([2, 2, 2, 2], [1, 2, 4, 8], 32, window=(4, 4, 4))
    state = {k: torch.zeros(s) for k, s in keys.items()}
    for k in state:
        if k.endswith("relative_position_index"):
            state[k] = relative_position_index((4, 4, 4))
    del state["backbone.layers.1.blocks.0.attn.qkv.bias"]
    state["backbone.extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": state}, path)
    encoder = build_encoder("video_swin_mini")
    with pytest.raises(
        ValueError,
        match=r"missing 1 keys.*layers\.1\.blocks\.0\.attn\.qkv\.bias.*unexpected.*extra",
    ):
        load_video_swin_weights(encoder, path)
    # An option module (TokenLearner) missing from an official file keeps its init.
    del state["backbone.extra.weight"]
    state["backbone.layers.1.blocks.0.attn.qkv.bias"] = torch.zeros(3 * 64)
    torch.save({"state_dict": state}, path)
    settings = encoder_settings(
        "video_swin_mini", ["tokenlearner.enabled=true", "tokenlearner.placement=1.0"]
    )
    info = load_video_swin_weights(build_encoder("video_swin_mini", settings), path)
    assert info["missing_option_keys"] and all(
        k.startswith("token_learner.") for k in info["missing_option_keys"]
    )
