"""S3D / S3D-G trunk and checkpoint loader (pipeline/s3d.py; methods.md section 8)."""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pipeline.s3d import (
    S3D,
    S3D_VARIANTS,
    MaxPool3dS3D,
    S3DCheckpointError,
    load_s3d,
    s3d_state_dict_to_layout,
    space_to_depth,
)
from pipeline.s3d_extract import (
    FusedS3D,
    S3DFeatureExtractor,
    SeparableMaxPool3d,
    cpu_bf16_supported,
    resolve_precision,
    space_to_depth_channels_last,
)

# Exact public key names and shapes (methods.md 8.2 HowTo100M s3dg.py, 8.3 torchvision).
HOWTO_KEYS = {
    "conv1.conv1.weight": (64, 24, 2, 4, 4),
    "conv1.bn1.running_var": (64,),
    "conv_2b.conv1.weight": (64, 64, 1, 1, 1),
    "conv_2c.conv1.weight": (192, 64, 1, 3, 3),
    "conv_2c.conv2.weight": (192, 192, 3, 1, 1),
    "gating.fc.weight": (192, 192),
    "mixed_3b.conv_b1_b.conv2.weight": (128, 128, 3, 1, 1),
    "mixed_3b.gating_b0.fc.weight": (64, 64),
    "mixed_5c.conv_b3_b.conv1.weight": (128, 832, 1, 1, 1),
    "fc.weight": (512, 1024),
}
TORCHVISION_KEYS = {
    "features.0.0.0.weight": (64, 3, 1, 7, 7),
    "features.0.1.0.weight": (64, 64, 7, 1, 1),
    "features.2.0.weight": (64, 64, 1, 1, 1),
    "features.3.0.0.weight": (192, 64, 1, 3, 3),
    "features.3.1.0.weight": (192, 192, 3, 1, 1),
    "features.5.branch1.1.0.0.weight": (128, 96, 1, 3, 3),
    "features.5.branch3.1.0.weight": (32, 192, 1, 1, 1),
    "features.15.branch0.1.running_mean": (384,),
    "classifier.1.weight": (400, 1024, 1, 1, 1),
}


def random_clips(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """uint8 [B, T, H, W, 3] noise clips."""
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def seeded_model(variant: str, seed: int) -> S3D:
    model, _ = load_s3d(None, variant, seed=seed)
    # Non-trivial BN statistics so a wrongly mapped BN buffer changes the output.
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
    return model


def save_checkpoint(state: dict[str, torch.Tensor], path) -> str:
    if str(path).endswith(".safetensors"):
        save_file(state, str(path))
    else:
        torch.save(state, str(path))
    return str(path)


def test_space_to_depth_matches_s3dg_channel_order():
    x = torch.randn(2, 3, 4, 6, 8)
    y = space_to_depth(x)
    assert y.shape == (2, 24, 2, 3, 4)
    # s3dg.py permutes to (dt, dh, dw, c): channel = ((dt * 2 + dh) * 2 + dw) * 3 + c.
    for dt, dh, dw, c in [(0, 0, 0, 0), (1, 0, 1, 2), (0, 1, 1, 1), (1, 1, 1, 2)]:
        ch = ((dt * 2 + dh) * 2 + dw) * 3 + c
        assert torch.equal(y[:, ch], x[:, c, dt::2, dh::2, dw::2])


def test_tf_same_pool_pads_zeros_at_the_end_with_ceil_mode():
    # Negative input makes zero padding (s3dg.py ConstantPad3d(0)) visible in the output.
    x = -torch.rand(1, 1, 3, 7, 5) - 1.0
    out = MaxPool3dS3D((3, 3, 3), (2, 2, 2), (1, 1, 1), tf_same=True)(x)
    padded = np.pad(x[0, 0].numpy(), ((0, 1), (0, 1), (0, 1)))  # max(k - s, 0) = 1 at the end
    sizes = [-(-(n + 1 - 3) // 2) + 1 for n in (3, 7, 5)]  # ceil_mode output sizes
    assert out.shape[2:] == tuple(sizes) == (2, 4, 3)
    for t in range(sizes[0]):
        for h in range(sizes[1]):
            for w in range(sizes[2]):
                window = padded[2 * t : 2 * t + 3, 2 * h : 2 * h + 3, 2 * w : 2 * w + 3]
                assert out[0, 0, t, h, w].item() == pytest.approx(window.max())
    assert out[0, 0, -1, -1, -1].item() == 0.0  # window reaches the zero pad


def test_torchvision_trunk_has_published_parameter_count():
    # torchvision meta: 8,320,048 params incl. classifier Conv3d(1024, 400) = 410,000 (8.1/8.3).
    model = S3D(S3D_VARIANTS["torchvision"])
    assert sum(p.numel() for p in model.parameters()) == 8_320_048 - 410_000


@pytest.mark.parametrize(
    ("variant", "layout", "expected"),
    [("s3dg_howto100m", "howto100m", HOWTO_KEYS), ("torchvision", "torchvision", TORCHVISION_KEYS)],
)
def test_export_uses_public_key_names_and_shapes(variant, layout, expected):
    state = s3d_state_dict_to_layout(S3D(S3D_VARIANTS[variant]), layout)
    for key, shape in expected.items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key


def test_export_refuses_layout_without_mapping():
    with pytest.raises(ValueError, match="torchvision layout"):
        s3d_state_dict_to_layout(S3D(S3D_VARIANTS["s3dg_howto100m"]), "torchvision")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize(
    ("variant", "layout"),
    [("s3dg_howto100m", "howto100m"), ("torchvision", "torchvision"), ("torchvision", "howto100m")],
)
def test_load_detects_layout_and_round_trips(tmp_path, suffix, variant, layout):
    source = seeded_model(variant, seed=1)
    state = s3d_state_dict_to_layout(source, layout)
    if layout == "howto100m":  # the text module of s3d_howto100m.pth is ignored too
        state["text_module.fc2.weight"] = torch.zeros(512, 2048)
    path = save_checkpoint(state, tmp_path / f"s3d{suffix}")

    model, info = load_s3d(path)  # variant="auto"

    assert info["variant"] == variant and info["layout"] == layout and info["path"] == path
    with open(path, "rb") as f:
        assert info["weights"] == hashlib.sha256(f.read()).hexdigest()
    assert not model.training
    loaded = model.state_dict()
    for key, value in source.state_dict().items():
        assert torch.equal(loaded[key], value), key


def test_same_weights_through_both_layouts_give_identical_features(tmp_path):
    source = seeded_model("torchvision", seed=3)
    tv_path = save_checkpoint(s3d_state_dict_to_layout(source, "torchvision"), tmp_path / "a.pth")
    canon_path = save_checkpoint(
        s3d_state_dict_to_layout(source, "howto100m"), tmp_path / "b.safetensors"
    )
    model_a, info_a = load_s3d(tv_path)
    model_b, info_b = load_s3d(canon_path)
    assert info_a["layout"] == "torchvision" and info_b["layout"] == "howto100m"
    assert info_a["variant"] == info_b["variant"] == "torchvision"
    clips = random_clips((1, 8, 64, 64, 3))
    cfg = S3D_VARIANTS["torchvision"]
    feat_a, _ = S3DFeatureExtractor(model_a, cfg)(clips)
    feat_b, _ = S3DFeatureExtractor(model_b, cfg)(clips)
    np.testing.assert_allclose(feat_a, feat_b, rtol=0, atol=1e-6)
    assert np.abs(feat_a).max() > 1e-3  # not a degenerate all-zero output


def test_missing_unexpected_and_misshapen_keys_are_listed(tmp_path):
    state = s3d_state_dict_to_layout(S3D(S3D_VARIANTS["torchvision"]), "torchvision")
    del state["features.5.branch1.1.0.0.weight"]
    state["features.9.branch2.0.0.weight"] = torch.zeros(24, 512, 1, 1, 3)
    state["features.5.extra.weight"] = torch.zeros(3)
    path = save_checkpoint(state, tmp_path / "bad_tv.pth")
    with pytest.raises(S3DCheckpointError) as err:
        load_s3d(path)
    message = str(err.value)
    assert path in message
    assert "missing keys (1): [features.5.branch1.1.0.0.weight]" in message
    assert "unexpected keys (1): [features.5.extra.weight]" in message
    assert "features.9.branch2.0.0.weight: file [24, 512, 1, 1, 3] vs model [24, 512, 1, 1, 1]" in (
        message
    )

    howto = s3d_state_dict_to_layout(S3D(S3D_VARIANTS["s3dg_howto100m"]), "howto100m")
    del howto["mixed_4c.gating_b2.fc.bias"]
    howto_path = save_checkpoint(howto, tmp_path / "bad_howto.safetensors")
    with pytest.raises(
        S3DCheckpointError, match=r"missing keys \(1\): \[mixed_4c.gating_b2.fc.bias"
    ):
        load_s3d(howto_path)


def test_wrong_variant_and_unreadable_files_raise(tmp_path):
    howto = s3d_state_dict_to_layout(S3D(S3D_VARIANTS["s3dg_howto100m"]), "howto100m")
    path = save_checkpoint(howto, tmp_path / "howto.pth")
    with pytest.raises(S3DCheckpointError, match="conv1.conv1.weight: file"):
        load_s3d(path, variant="torchvision")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(S3DCheckpointError, match="junk.pth: cannot read"):
        load_s3d(str(junk))
    foreign = save_checkpoint({"encoder.weight": torch.zeros(2)}, tmp_path / "foreign.pth")
    with pytest.raises(S3DCheckpointError, match="cannot detect the S3D layout"):
        load_s3d(foreign)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_s3d(str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match="unknown S3D variant"):
        load_s3d(None, variant="i3d")


def test_random_init_is_deterministic_and_warns(caplog):
    rng_before = torch.random.get_rng_state()
    with caplog.at_level(logging.WARNING, logger="pipeline.s3d"):
        model_a, info_a = load_s3d(None, seed=7)
        model_b, info_b = load_s3d(None, seed=7)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # global RNG untouched
    assert (
        info_a
        == info_b
        == {
            "variant": "s3dg_howto100m",
            "layout": None,
            "weights": "random-init",
            "path": None,
            "seed": 7,
        }
    )
    for (key, a), b in zip(
        model_a.state_dict().items(), model_b.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), key
    other, _ = load_s3d(None, seed=8)
    assert not torch.equal(other.conv1.conv1.weight, model_a.conv1.conv1.weight)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3  # one per random-init load
    assert "RANDOMLY INITIALISED" in warnings[0].getMessage()
    assert "MEANINGLESS" in warnings[0].getMessage()
    assert warnings[0].getMessage().count("\n") >= 4


def test_howto_224x32_gives_4x7x7_mixed_5c_and_consistent_fmap():
    model, _ = load_s3d(None, "s3dg_howto100m")
    captured = {}
    extractor = S3DFeatureExtractor(model, S3D_VARIANTS["s3dg_howto100m"])
    hook = lambda _m, _inp, out: captured.update(mixed_5c=out.shape)  # noqa: E731
    extractor.model.register_forward_hook(hook)
    feat, fmap = extractor(random_clips((1, 32, 224, 224, 3)), spatial=True)
    assert captured["mixed_5c"] == (1, 1024, 4, 7, 7)
    assert feat.shape == (1, 1024) and feat.dtype == np.float32
    assert fmap.shape == (1, 7, 7, 1024) and fmap.dtype == np.float16
    # feat averages over (T', H', W'); fmap over T' only, so its spatial mean is feat.
    scale = np.abs(feat).max()
    assert scale > 0
    np.testing.assert_allclose(fmap.astype(np.float32).mean(axis=(1, 2)), feat, atol=2e-3 * scale)


@pytest.mark.parametrize("variant", list(S3D_VARIANTS))
def test_same_input_twice_gives_identical_features(variant):
    model, _ = load_s3d(None, variant, seed=2)
    extractor = S3DFeatureExtractor(model, S3D_VARIANTS[variant])
    clips = random_clips((2, 8, 64, 64, 3), seed=5)
    feat_1, fmap_1 = extractor(clips, spatial=True)
    feat_2, fmap_2 = extractor(torch.from_numpy(clips), spatial=True)
    assert np.array_equal(feat_1, feat_2) and np.array_equal(fmap_1, fmap_2)
    assert fmap_1.shape == (2, 2, 2, 1024)
    # A different batch composition may pick another CPU kernel: equal up to float rounding.
    feat_single, _ = extractor(clips[1:])
    np.testing.assert_allclose(feat_single[0], feat_1[1], rtol=1e-4, atol=1e-6)


# Published input statistics, written out here (never read back from pipeline.s3d): torchvision's
# Kinetics-400 `VideoClassification` preset (transforms/_presets.py, methods.md 8.3); HowTo100M
# S3D-G takes RGB / 255 in [0, 1] with no mean/std (s3dg.py, main_distributed.py; methods.md 8.2).
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
# Two hand-made pixels, normalised by hand: ((p / 255) - mean) / std per channel, e.g.
# R 255: (1 - 0.43216) / 0.22803 = 2.4901987; G 128: (128/255 - 0.394666) / 0.22145 = 0.4845102;
# B 0: -0.37645 / 0.216989 = -1.7348806. (ImageNet's std 0.229/0.224/0.225 gives 2.4797, 0.4790,
# -1.6731; ImageNet's mean 0.485/0.456/0.406 gives 2.2585, 0.2075, -1.8711.)
PIXEL_A, TV_A, HOWTO_A = (255, 128, 0), (2.4901987, 0.4845102, -1.7348806), (1.0, 0.5019608, 0.0)
PIXEL_B, TV_B, HOWTO_B = (0, 64, 255), (-1.8951892, -0.6488400, 2.8736480), (0.0, 0.2509804, 1.0)
TV_ZERO = (-1.8951892, -1.7821901, -1.7348806)  # a black pixel: -mean / std


def two_pixel_clip() -> np.ndarray:
    """uint8 [1, T=2, H=2, W=4, 3]: PIXEL_A at (t0, h0, w0), PIXEL_B at (t1, h1, w3), else black
    (distinct, asymmetric positions: a swapped axis moves them)."""
    clip = np.zeros((1, 2, 2, 4, 3), dtype=np.uint8)
    clip[0, 0, 0, 0] = PIXEL_A
    clip[0, 1, 1, 3] = PIXEL_B
    return clip


def test_variants_pin_the_published_normalisation():
    tv, howto = S3D_VARIANTS["torchvision"], S3D_VARIANTS["s3dg_howto100m"]
    assert tv.input_mean == KINETICS_MEAN and tv.input_std == KINETICS_STD
    assert howto.input_mean is None and howto.input_std is None


@pytest.mark.parametrize("engine", ["reference", "fused"])
def test_preprocessing_matches_hand_normalised_pixels(engine):
    """The path prep takes (S3DFeatureExtractor.preprocess), against hand-computed literals."""
    clip = two_pixel_clip()
    for variant, at_a, at_b, black in (
        ("torchvision", TV_A, TV_B, TV_ZERO),
        ("s3dg_howto100m", HOWTO_A, HOWTO_B, (0.0, 0.0, 0.0)),
    ):
        cfg = S3D_VARIANTS[variant]
        x = S3DFeatureExtractor(S3D(cfg), cfg, engine=engine).preprocess(clip)
        assert x.shape == (1, 3, 2, 2, 4) and x.dtype == torch.float32  # [B, 3, T, H, W]
        want = torch.tensor(black).view(3, 1, 1, 1).expand(3, 2, 2, 4).clone()
        want[:, 0, 0, 0] = torch.tensor(at_a)
        want[:, 1, 1, 3] = torch.tensor(at_b)
        torch.testing.assert_close(x[0], want, rtol=0, atol=2e-6, msg=variant)


def test_preprocessing_rejects_other_dtypes_and_odd_sizes():
    clips = np.full((1, 2, 4, 4, 3), 255, dtype=np.uint8)
    model = S3D(S3D_VARIANTS["s3dg_howto100m"])
    with pytest.raises(ValueError, match="uint8"):
        S3DFeatureExtractor(model, S3D_VARIANTS["s3dg_howto100m"]).preprocess(clips.astype(float))
    with pytest.raises(ValueError, match=r"RGB, got torch.uint8 \(1, 2, 4, 4, 4\)"):
        S3DFeatureExtractor(model, S3D_VARIANTS["s3dg_howto100m"]).preprocess(
            np.zeros((1, 2, 4, 4, 4), dtype=np.uint8)  # 4 channels
        )
    with pytest.raises(ValueError, match="even T, H, W"):
        model(torch.zeros(1, 3, 3, 64, 64))


def test_s3d_encoder_normalises_like_prep():
    """The `s3d` visual encoder (fine-tuning from frames.npy) normalises with the same published
    statistics: its preprocess of the hand-made pixels gives the same literals."""
    from pipeline.encoders import build_encoder

    frames = two_pixel_clip()[None]  # [B=1, T=1 clip, F=2, H=2, W=4, 3]
    for variant, at_a, at_b, black in (
        ("torchvision", TV_A, TV_B, TV_ZERO),
        ("s3dg_howto100m", HOWTO_A, HOWTO_B, (0.0, 0.0, 0.0)),
    ):
        encoder = build_encoder("s3d", {"variant": variant})
        x = encoder.preprocess(frames)[0]  # [3, F, H, W]
        torch.testing.assert_close(x[:, 0, 0, 0], torch.tensor(at_a), rtol=0, atol=2e-6)
        torch.testing.assert_close(x[:, 1, 1, 3], torch.tensor(at_b), rtol=0, atol=2e-6)
        torch.testing.assert_close(x[:, 0, 1, 2], torch.tensor(black), rtol=0, atol=2e-6)


def test_extractor_feeds_the_trunk_the_published_normalisation():
    """End to end through `__call__`: features equal the reference trunk on input normalised here
    with the literal Kinetics statistics (numpy, float64, no pipeline helper)."""
    model = seeded_model("torchvision", seed=6)
    clips = random_clips((1, 8, 64, 64, 3), seed=3)
    x = (clips.astype(np.float64) / 255.0 - KINETICS_MEAN) / KINETICS_STD  # [B, T, H, W, 3]
    x = torch.from_numpy(x.transpose(0, 4, 1, 2, 3).astype(np.float32).copy())
    with torch.no_grad():
        want = model.eval()(x).mean(dim=(2, 3, 4)).numpy()  # Mixed_5c pooled [B, 1024]
    feat, _ = S3DFeatureExtractor(model, S3D_VARIANTS["torchvision"], engine="reference")(clips)
    scale = np.abs(want).max()
    assert scale > 1e-3
    assert np.abs(feat - want).max() <= 1e-5 * scale


def test_gating_scales_each_branch_and_every_parameter_gets_gradient():
    model = S3D(S3D_VARIANTS["s3dg_howto100m"]).eval()
    x = torch.rand(1, 3, 8, 64, 64)
    with torch.no_grad():
        model.mixed_5c.gating_b0.fc.bias.fill_(-1e4)  # sigmoid -> 0 on branch 0 (384 channels)
        out = model(x)
    assert torch.all(out[:, :384] == 0) and out[:, 384:].abs().sum() > 0

    model = S3D(S3D_VARIANTS["s3dg_howto100m"]).train()
    model(torch.rand(2, 3, 8, 32, 32)).mean().backward()  # Mixed_5c [2, 1024, 1, 1, 1]
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not no_grad


# --- the fused inference engine (issue 12): same function as the reference modules ------------


@pytest.mark.parametrize("variant", list(S3D_VARIANTS))
def test_fused_engine_equals_reference_within_rounding(variant):
    model = seeded_model(variant, seed=3)  # non-trivial BN statistics: folding must use them
    cfg = S3D_VARIANTS[variant]
    clips = random_clips((2, 16, 64, 64, 3), seed=1)
    ref = S3DFeatureExtractor(model, cfg, engine="reference")
    feat_r, fmap_r = ref(clips, spatial=True)
    fused = S3DFeatureExtractor(model, cfg, engine="fused")
    assert ref.precision == fused.precision == "fp32"  # auto on a CPU
    feat_f, fmap_f = fused(clips, spatial=True)
    scale = np.abs(feat_r).max()
    assert scale > 0
    assert np.abs(feat_f - feat_r).max() <= 1e-5 * scale  # measured ~3e-7 at 30 x 224^2
    np.testing.assert_allclose(fmap_f, fmap_r, rtol=2e-3, atol=1e-3 * scale)
    # The source model is untouched (the fused copy folds BN into its own buffers).
    feat_again, _ = ref(clips)
    assert np.array_equal(feat_again, feat_r)
    assert fused.describe()["s3d_engine"] == "fused"


def test_fused_output_is_channels_last_and_fallback_conv_path_agrees():
    model = seeded_model("s3dg_howto100m", seed=4)
    fused = FusedS3D(model)
    x = torch.rand(1, 3, 8, 64, 64)
    with torch.inference_mode():
        out = fused(x)
        assert out.is_contiguous(memory_format=torch.channels_last_3d)
        # The non-oneDNN path (plain conv3d + bias + ReLU) is what CUDA runs: same numbers.
        for module in fused.modules():
            if hasattr(module, "onednn"):
                module.onednn = False
        plain = fused(x)
        expected = model(x)
    scale = expected.abs().max()
    assert (out - expected).abs().max() <= 1e-5 * scale
    assert (plain - expected).abs().max() <= 1e-5 * scale


def test_space_to_depth_channels_last_matches_reference_order():
    x = torch.randn(2, 3, 4, 6, 8)
    y = space_to_depth_channels_last(x)
    assert y.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.equal(y, space_to_depth(x))


def test_reduced_precision_options():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto", "cuda") == "bf16"
    with pytest.raises(ValueError, match="fp16 S3D needs a CUDA device"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="unknown S3D precision"):
        resolve_precision("int8", "cpu")
    if not cpu_bf16_supported():  # an AVX2-only CPU: refused before any work, clearly
        with pytest.raises(ValueError, match="no bf16 convolution kernels"):
            resolve_precision("bf16", "cpu")
        return
    model = seeded_model("s3dg_howto100m", seed=5)
    cfg = S3D_VARIANTS["s3dg_howto100m"]
    clips = random_clips((1, 8, 64, 64, 3), seed=2)
    feat_32, _ = S3DFeatureExtractor(model, cfg)(clips)
    bf16 = S3DFeatureExtractor(model, cfg, precision="bf16")
    feat_16, _ = bf16(clips)
    assert feat_16.dtype == np.float32 and bf16.describe()["s3d_precision"] == "bf16"
    rel = np.abs(feat_16 - feat_32).max() / np.abs(feat_32).max()
    assert 0 < rel < 3e-2  # bf16 has 8 mantissa bits; measured ~4e-3 at 30 x 224^2


@pytest.mark.parametrize("tf_same", [True, False])
def test_separable_max_pool_is_bit_identical_to_the_reference_pools(tf_same):
    """Max is exact: three 1-D pools equal the 3-D pool, shape and values, for every S3D pool."""
    pools = [
        MaxPool3dS3D((1, 3, 3), (1, 2, 2), (0, 1, 1), tf_same),  # maxpool_2a / 3a
        MaxPool3dS3D((3, 3, 3), (2, 2, 2), (1, 1, 1), tf_same),  # maxpool_4a
        MaxPool3dS3D((2, 2, 2), (2, 2, 2), (0, 0, 0), tf_same),  # maxpool_5a
        torch.nn.MaxPool3d((3, 3, 3), stride=1, padding=1),  # Inception branch 3
    ]
    gen = torch.Generator().manual_seed(0)
    for pool in pools:
        separable = SeparableMaxPool3d(pool)
        for t, h, w in [(2, 3, 4), (3, 5, 7), (4, 14, 15), (5, 28, 29), (8, 7, 7)]:
            # Inputs are post-ReLU in the trunk (TF-SAME's zero pad relies on it).
            x = torch.randn(2, 6, t, h, w, generator=gen).relu()
            x = x.contiguous(memory_format=torch.channels_last_3d)
            out = separable(x)
            assert torch.equal(out, pool(x)), (pool, (t, h, w))
            assert out.is_contiguous(memory_format=torch.channels_last_3d)


def test_extractor_engines():
    """engine="reference" runs the S3D modules as given, "fused" the fused copy; others refused."""
    model, _ = load_s3d(None, "s3dg_howto100m")
    cfg = S3D_VARIANTS["s3dg_howto100m"]
    assert S3DFeatureExtractor(model, cfg, engine="reference").model is model
    assert isinstance(S3DFeatureExtractor(model, cfg, engine="fused").model, FusedS3D)
    with pytest.raises(ValueError, match=r"^unknown S3D engine 'turbo'; expected one of"):
        S3DFeatureExtractor(model, cfg, engine="turbo")
