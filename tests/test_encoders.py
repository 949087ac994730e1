"""The visual-encoder registry and interface: every registered encoder and option combination gives
the promised shapes, gradients reach every trainable parameter, save/load is identical, eval is
deterministic; settings are validated (combinations that do not apply are rejected naming the key);
ViViT equals transformers' VivitModel with copied weights; the S3D adapter equals today's extractor."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from transformers import VivitConfig, VivitModel

from pipeline.config import ConfigError, load_config
from pipeline.encoders import (
    ENCODERS,
    build_encoder,
    encoder_settings,
    load_encoder,
)
from pipeline.encoders.base import sample_frame_indices
from pipeline.encoders.settings import VideoSwinMiniSettings
from pipeline.s3d import S3D_VARIANTS, load_s3d
from pipeline.s3d_extract import S3DFeatureExtractor

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


SMALL_VIVIT = ["frames=4", "size=32", "tubelet=[2,8,8]", "hidden_dim=32", "mlp_dim=64"]
TL = ["tokenlearner.enabled=true", "tokenlearner.num_tokens=3"]

COMBINATIONS = [
    ("s3d", []),
    ("s3d", [*TL, "tokenlearner.placement=1.0"]),
    ("s3d", [*TL, "tokenlearner.placement=1.0", "tokenlearner.version=v1"]),
    ("video_swin_mini", []),
    ("video_swin_mini", ["v2=true"]),
    ("video_swin_mini", ["spt=true", "lsa=true"]),
    ("video_swin_mini", ["v2=true", "spt=true"]),
    ("video_swin_mini", [*TL, "tokenlearner.placement=1.0"]),
    ("video_swin_mini", [*TL, "tokenlearner.placement=1.0", "tokenlearner.version=v1"]),
    ("vivit_mini", SMALL_VIVIT),
    ("vivit_mini", [*SMALL_VIVIT, "pool=cls"]),
    ("vivit_mini", [*SMALL_VIVIT, *TL]),
    ("vivit_mini", [*SMALL_VIVIT, *TL, "tokenlearner.version=v1"]),
    ("vivit_mini", [*SMALL_VIVIT, *TL, "tokenlearner.fuser=true"]),
    ("vivit_mini", [*SMALL_VIVIT, *TL, "tokenlearner.placement=1.0"]),
    ("vivit_mini", [*SMALL_VIVIT, "tome.enabled=true", "tome.r=4", "pool=cls"]),
    ("vivit_mini", [*SMALL_VIVIT, "tome.enabled=true", "tome.r=2", "tome.scope=frame"]),
    ("vivit_mini", [*SMALL_VIVIT, "spt=true", "lsa=true"]),
    ("vivit_mini", [*SMALL_VIVIT, "spt=true", "lsa=true", "tome.enabled=true", "tome.r=3"]),
    ("vivit_factorised_mini", SMALL_VIVIT),
    ("vivit_factorised_mini", [*SMALL_VIVIT, "pool=cls"]),
    ("vivit_factorised_mini", [*SMALL_VIVIT, *TL, "tokenlearner.fuser=true"]),
    ("vivit_factorised_mini", [*SMALL_VIVIT, *TL, "tokenlearner.version=v1"]),
    ("vivit_factorised_mini", [*SMALL_VIVIT, "tome.enabled=true", "tome.scope=frame", "tome.r=3"]),
    # 3 temporal tokens: with 2, LSA's diagonal mask leaves each query one key, a softmax over
    # one element, and the temporal temperature truly gets no gradient (AVX-512 rounding once
    # hid this with a ~1e-9 one).
    ("vivit_factorised_mini", [*SMALL_VIVIT, "frames=6", "spt=true", "lsa=true"]),
]


def _frames(batch=2, clips=3, frames=4, size=32, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, clips, frames, size, size, 3)
    return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)


def _input_size(name: str) -> int:
    """64 px for the convolutional / hierarchical encoders so their last map is 2 x 2 (a 1 x 1
    map would give TokenLearner's softmax a single position, hence no gradient); 32 px for ViViT."""
    return 32 if name.startswith("vivit") else 64


def _expected_tokens(encoder, overrides) -> int | None:
    """Tokens per clip the settings promise for 4-frame clips (None: checked elsewhere)."""
    name = encoder.name
    tl = encoder.settings.tokenlearner
    if name == "s3d":
        return tl.num_tokens if tl.enabled else 4  # Mixed_5c of 64 px is 2 x 2
    if name == "video_swin_mini":  # 2 x 16 x 16 patches -> 2 x 2 x 2 after three merges
        return 2 * (tl.num_tokens if tl.enabled else 4)
    t, h, w = encoder.grid
    if name == "vivit_factorised_mini":
        return t
    if tl.enabled and not tl.fuser:
        return t * tl.num_tokens
    if encoder.settings.tome.enabled:
        return None
    return t * h * w


@pytest.mark.parametrize("name, overrides", COMBINATIONS, ids=lambda v: str(v))
def test_every_encoder_and_option(name, overrides, tmp_path) -> None:
    encoder = build_encoder(name, overrides)
    assert encoder.feature_dim == ENCODERS.get(name).feature_dim(encoder.settings)
    frames = _frames(size=_input_size(name))
    # --- shapes (eval) and determinism
    with torch.no_grad():
        out = encoder(frames, return_tokens=True)
        again = encoder(frames, return_tokens=True)
    d = encoder.feature_dim
    assert out.pooled.shape == (2, 3, d) and torch.isfinite(out.pooled).all()
    expected = _expected_tokens(encoder, overrides)
    assert out.tokens.shape[:2] == (2, 3) and out.tokens.shape[3] == d
    if expected is not None:
        assert out.tokens.shape[2] == expected
    assert torch.equal(out.pooled, again.pooled) and torch.equal(out.tokens, again.tokens)
    assert (out.sizes is not None) == (encoder.settings.tome.enabled and "factorised" not in name)
    assert encoder.reduces_tokens == (
        encoder.settings.tokenlearner.enabled or encoder.settings.tome.enabled
    )
    # --- save / load identical
    encoder.save(tmp_path / "enc")
    loaded = load_encoder(tmp_path / "enc")
    with torch.no_grad():
        reloaded = loaded(frames, return_tokens=True)
    assert torch.equal(reloaded.pooled, out.pooled) and torch.equal(reloaded.tokens, out.tokens)
    # --- gradients reach every trainable parameter (train mode). Zero-initialised weights
    # (TokenFuser's mixing kernel, class tokens) are perturbed first so that no path is cut.
    encoder.train()
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(torch.randn_like(p) * 1e-2)
    result = encoder(frames, return_tokens=True)
    loss = result.pooled.square().mean() + result.tokens.square().mean()
    loss.backward()
    trainable = [(n, p) for n, p in encoder.named_parameters() if p.requires_grad]
    no_grad = [n for n, p in trainable if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"no gradient for {no_grad}"
    assert all(torch.isfinite(p.grad).all() for _, p in trainable)


def test_registry_names_and_widths() -> None:
    assert ENCODERS.names() == [
        "s3d",
        "video_swin_base",
        "video_swin_mini",
        "video_swin_small",
        "video_swin_tiny",
        "vivit_base",
        "vivit_factorised_base",
        "vivit_factorised_mini",
        "vivit_mini",
    ]
    widths = {name: ENCODERS.get(name).feature_dim() for name in ENCODERS}
    assert widths["s3d"] == 1024 and widths["video_swin_tiny"] == 768
    assert widths["video_swin_base"] == 1024 and widths["vivit_base"] == 768
    assert widths["video_swin_mini"] == 256 and widths["vivit_mini"] == 128
    with pytest.raises(ConfigError, match="unknown visual encoder 'swin'.*video_swin_tiny"):
        build_encoder("swin")


@pytest.mark.parametrize(
    "name, overrides, message",
    [
        ("video_swin_mini", ["tome.enabled=true"], r"^tome\.enabled: token merging does not apply"),
        ("video_swin_mini", ["tokenlearner.enabled=true"], r"^tokenlearner\.placement: Video Swin"),
        ("video_swin_mini", ["v2=true", "lsa=true"], r"^lsa: Swin V2"),
        ("video_swin_mini", ["window_size=[4,4]"], r"^window_size: need 3"),
        ("video_swin_mini", ["num_heads=[1,2,4]"], r"^num_heads: need one entry per stage"),
        ("vivit_mini", ["pool=cls", "tokenlearner.enabled=true"], r"^pool: TokenLearner"),
        (
            "vivit_mini",
            ["tokenlearner.enabled=true", "tome.enabled=true"],
            r"^tome\.enabled: choose one",
        ),
        (
            "vivit_mini",
            ["tokenlearner.fuser=true", "tokenlearner.placement=1.0"],
            r"^tokenlearner\.fuser:",
        ),
        ("vivit_mini", ["tokenlearner.placement=1.5"], r"^tokenlearner\.placement: must be <= 1"),
        ("vivit_mini", ["tubelet=[3,8,8]"], r"^tubelet: \[3, 8, 8\]|^tubelet: \(3, 8, 8\)"),
        ("vivit_mini", ["size=0"], r"^frames: ViViT learns position embeddings"),
        ("vivit_mini", ["tome.scope=space"], r"^tome\.scope: 'space' is not one of"),
        ("vivit_factorised_mini", ["tome.enabled=true"], r"^tome\.scope: the factorised encoder"),
        ("s3d", ["spt=true"], r"^spt: S3D has no attention"),
        ("s3d", ["tome.enabled=true"], r"^tome\.enabled: S3D"),
        ("s3d", ["tokenlearner.enabled=true"], r"^tokenlearner\.placement: S3D"),
        ("s3d", ["colour=1"], r"^unknown key colour"),
    ],
)
def test_settings_reject_what_does_not_apply(name, overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        encoder_settings(name, overrides)


def test_lsa_with_two_temporal_tokens_warns(caplog) -> None:
    """Two temporal tokens leave each LSA query one key: the temperature is inert (a warning)."""
    lsa = [*SMALL_VIVIT, "lsa=true"]  # frames 4 / tubelet 2 = 2 temporal tokens, pool gap
    with caplog.at_level("WARNING", logger="vlpipe.encoders"):
        encoder_settings("vivit_factorised_mini", lsa)
    assert "temperature gets no gradient" in caplog.text
    for fine in (["frames=6"], ["pool=cls"]):
        caplog.clear()
        with caplog.at_level("WARNING", logger="vlpipe.encoders"):
            encoder_settings("vivit_factorised_mini", [*lsa, *fine])
        assert "temperature" not in caplog.text, fine


@dataclass
class _BiggerConfig:
    encoder: VideoSwinMiniSettings = field(default_factory=VideoSwinMiniSettings)
    batch_size: int = 4  # unrelated field


def test_settings_validate_inside_a_bigger_config() -> None:
    cfg = load_config(_BiggerConfig, None, ["encoder.v2=true", "encoder.clip_batch=2"])
    assert cfg.encoder.v2 and cfg.encoder.clip_batch == 2 and cfg.encoder.embed_dim == 32
    with pytest.raises(ConfigError, match=r"^encoder\.tome\.enabled: token merging"):
        load_config(_BiggerConfig, None, ["encoder.tome.enabled=true"])
    with pytest.raises(ConfigError, match=r"^features\.encoder\.lsa: Swin V2"):
        encoder_settings("video_swin_mini", {"v2": True, "lsa": True}, prefix="features.encoder.")


def test_input_checks_and_resampling() -> None:
    encoder = build_encoder("vivit_mini", SMALL_VIVIT)
    with pytest.raises(ValueError, match=r"uint8 \[B, T, F, H, W, 3\]"):
        encoder(torch.zeros(1, 2, 4, 32, 32, 3))
    with pytest.raises(ValueError, match=r"uint8 \[B, T, F, H, W, 3\]"):
        encoder(torch.zeros(2, 4, 32, 32, 3, dtype=torch.uint8))
    assert sample_frame_indices(30, 8).tolist() == [1, 5, 9, 13, 16, 20, 24, 28]
    assert sample_frame_indices(4, 4).tolist() == [0, 1, 2, 3]
    # 30 frames at 48 px become 4 frames at 32 px; a frame at the mean pixel normalises to 0.
    x = encoder.preprocess(np.full((1, 2, 30, 48, 48, 3), 127, np.uint8))
    assert x.shape == (2, 3, 4, 32, 32)
    torch.testing.assert_close(x, torch.full_like(x, (127 - 127.5) / 127.5))
    with torch.no_grad():
        out = encoder(np.zeros((1, 2, 30, 48, 48, 3), np.uint8))
    assert out.pooled.shape == (1, 2, 32) and out.tokens is None


def test_clip_batch_chunks_give_the_same_features() -> None:
    whole = build_encoder("video_swin_mini")
    chunked = build_encoder("video_swin_mini", ["clip_batch=2"])
    frames = _frames(clips=5)
    with torch.no_grad():
        a, b = whole(frames, True), chunked(frames, True)
    torch.testing.assert_close(a.pooled, b.pooled)
    torch.testing.assert_close(a.tokens, b.tokens)


def test_build_is_seeded_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = build_encoder("vivit_mini", [*SMALL_VIVIT, "seed=1"])
    assert torch.equal(torch.random.get_rng_state(), state)
    b = build_encoder("vivit_mini", [*SMALL_VIVIT, "seed=1"])
    c = build_encoder("vivit_mini", [*SMALL_VIVIT, "seed=2"])
    assert torch.equal(a.pos, b.pos) and not torch.equal(a.pos, c.pos)
    prov = a.provenance()
    assert prov["encoder"] == "vivit_mini" and prov["weights_sha256"] == "random-init"
    assert prov["feature_dim"] == 32 and len(prov["settings_hash"]) == 16
    assert prov["settings_hash"] != c.provenance()["settings_hash"]


def test_vivit_equals_transformers_vivit_model() -> None:
    """Joint ViViT with a class token = HF VivitModel (tubelet, CLS, position embeddings,
    pre-LN blocks with gelu_fast = Flax's tanh GELU, final LayerNorm), copied weights, float64."""
    config = VivitConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        tubelet_size=[2, 8, 8],
        num_frames=4,
        image_size=16,
    )
    theirs = VivitModel(config, add_pooling_layer=False).double().eval()
    for p in theirs.parameters():
        torch.nn.init.normal_(p, std=0.3)
    ours = build_encoder(
        "vivit_mini",
        ["frames=4", "size=16", "tubelet=[2,8,8]", "hidden_dim=32", "num_layers=2", "num_heads=4"]
        + ["mlp_dim=64", "pool=cls"],
    ).double()
    t = theirs.state_dict()
    mapped = {
        "cls": t["embeddings.cls_token"],
        "pos": t["embeddings.position_embeddings"],
        "embed.weight": t["embeddings.patch_embeddings.projection.weight"],
        "embed.bias": t["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": t["layernorm.weight"],
        "norm.bias": t["layernorm.bias"],
    }
    for i in range(2):
        p, q = f"layers.{i}.", f"blocks.{i}."
        a = p + "attention."
        mapped[q + "attn.qkv.weight"] = torch.cat([t[a + f"{x}_proj.weight"] for x in "qkv"])
        mapped[q + "attn.qkv.bias"] = torch.cat([t[a + f"{x}_proj.bias"] for x in "qkv"])
        pairs = {
            "attn.proj": "attention.o_proj",
            "norm1": "layernorm_before",
            "norm2": "layernorm_after",
            "mlp.fc1": "mlp.fc1",
            "mlp.fc2": "mlp.fc2",
        }
        for mine, hf in pairs.items():
            for kind in ("weight", "bias"):
                mapped[f"{q}{mine}.{kind}"] = t[f"{p}{hf}.{kind}"]
    ours.load_state_dict(mapped, strict=True)
    pixels = torch.randn(2, 4, 3, 16, 16, dtype=torch.float64)  # HF: [B, T, C, H, W]
    expected = theirs(pixel_values=pixels).last_hidden_state  # [2, 1 + 2*2*2, 32]
    out = ours.encode(pixels.transpose(1, 2), return_tokens=True)  # ours: [N, C, F, H, W]
    torch.testing.assert_close(out.pooled, expected[:, 0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.tokens, expected[:, 1:], rtol=1e-10, atol=1e-10)


def test_s3d_adapter_equals_todays_extractor() -> None:
    """`s3d` gives what prep's reference S3D engine computes: feat.npy (pooled) and fmap.npy
    (tokens, 49 at 224). (Prep's default fused engine agrees with the reference to ~3e-7 of the
    features' norm: tests/test_s3d.py.)"""
    for variant in ("s3dg_howto100m", "torchvision"):
        encoder = build_encoder("s3d", [f"variant={variant}", "seed=3"])
        model, _ = load_s3d(None, variant, seed=3)
        extractor = S3DFeatureExtractor(model, S3D_VARIANTS[variant], engine="reference")
        frames = _frames(batch=1, clips=2, frames=8, size=64, seed=1)
        feat, fmap = extractor(frames[0].numpy(), spatial=True)
        with torch.no_grad():
            out = encoder(frames, return_tokens=True)
        np.testing.assert_allclose(out.pooled[0].numpy(), feat, rtol=1e-4, atol=1e-5)
        tokens = out.tokens[0].reshape(2, *fmap.shape[1:3], 1024).numpy()
        np.testing.assert_allclose(tokens, fmap.astype(np.float32), rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("name", ["vivit_base", "vivit_factorised_base"])
def test_published_vivit_configurations(name) -> None:
    """ViViT-B widths and depths as configured (hidden 768, 12 heads, MLP 3072; the factorised
    model adds a 4-block temporal encoder); run on 2 frames of 32 px to keep the test fast."""
    encoder = build_encoder(name, ["frames=2", "size=32"])
    s = encoder.settings
    assert (s.hidden_dim, s.num_heads, s.mlp_dim, s.num_layers, s.tubelet) == (
        768,
        12,
        3072,
        12,
        (2, 16, 16),
    )
    assert len(encoder.blocks) == 12
    if "factorised" in name:
        assert len(encoder.temporal_blocks) == 4
    with torch.no_grad():
        out = encoder(_frames(batch=1, clips=2, frames=2, size=32), return_tokens=True)
    assert out.pooled.shape == (1, 2, 768)
    assert out.tokens.shape == ((1, 2, 1, 768) if "factorised" in name else (1, 2, 4, 768))
