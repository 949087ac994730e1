"""Every registered model, by the registry (timm-style): output shapes, its objective's terms,
gradients to every trainable parameter (none to frozen ones), save/load identical, the DDP
wrapper, bad inputs. A new entry in `pipeline.models.MODELS` is picked up here by itself;
`VARIANTS` adds option combinations worth covering. Model-specific behaviour (packing, padding,
negatives, overfitting, the real MiniLM) lives in test_<model>.py."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from pipeline.config import load_config_dict
from pipeline.models import MODELS, build_model, build_objective, load_pretrained

FEAT, WORDS, VOCAB = 32, 12, 30522
# Settings that keep the models small (fields absent from a model's settings are ignored).
SMALL = {
    "visual": {"hidden": 48, "layers": 3, "heads": 4, "intermediate": 96},
    "cross": {"hidden": 40, "layers": 1, "heads": 4, "intermediate": 80},
    "bi_hidden": 48,
    "bi_heads": 4,
    "num_learned_tokens": 3,
    "max_clips": 16,
}
VARIANTS = {
    "videobert": [{"freeze_visual_embeddings": False, "tie_visual_decoder": True}],
    "vilbert": [{"use_token_learner": True}],
}


def cases() -> list:
    out = []
    for name, entry in MODELS.items():
        vocabularies = {"required": [True], "optional": [True, False], "unused": [False]}
        for vocab in vocabularies[entry.vocabulary]:
            for i, extra in enumerate([{}, *VARIANTS.get(name, [])]):
                out.append(pytest.param(name, vocab, extra, id=f"{name}-vocab{int(vocab)}-{i}"))
    return out


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make(name: str, vocab: bool, extra: dict, tiny_bert):
    entry = MODELS.get(name)
    fields = entry.settings.__dataclass_fields__
    values = {k: v for k, v in {**SMALL, **extra}.items() if k in fields}
    settings = load_config_dict(entry.settings, values)
    centroids = np.random.default_rng(0).normal(size=(WORDS, FEAT)).astype(np.float32)
    model = build_model(name, tiny_bert, centroids if vocab else None, settings, feat_dim=FEAT)
    return model, settings


def batch(fmap: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    """8 rows: 2 without speech, 1 without clips, two videos with two rows each."""
    gen = torch.Generator().manual_seed(seed)
    text_lengths = torch.tensor([9, 6, 0, 4, 7, 0, 5, 8])
    clip_counts = torch.tensor([10, 7, 6, 12, 0, 9, 4, 8])
    text_mask = torch.arange(9)[None] < text_lengths[:, None]
    video_mask = torch.arange(12)[None] < clip_counts[:, None]
    out = {
        "text_ids": torch.randint(1000, 2000, (8, 9), generator=gen) * text_mask,
        "text_mask": text_mask,
        "video_feats": torch.randn(8, 12, FEAT, generator=gen) * video_mask[..., None],
        "video_tokens": torch.where(
            video_mask, torch.randint(0, WORDS, (8, 12), generator=gen), -1
        ),
        "video_mask": video_mask,
        "video_ids": torch.tensor([0, 0, 1, 2, 3, 4, 5, 5]),
    }
    if fmap:
        out["video_fmap"] = torch.randn(8, 12, 2, 2, FEAT, generator=gen)
    return out


def objective_for(name: str):
    entry = MODELS.get(name)
    # Every regime in every batch, so one step reaches every parameter.
    settings = entry.objective_settings()
    if hasattr(settings, "p_text_only"):
        settings = replace(settings, p_text_only=0.25, p_video_only=0.25)
    return build_objective(name, settings)


@pytest.mark.parametrize(("name", "vocab", "extra"), cases())
def test_shapes_and_objective_terms(name, vocab, extra, tiny_bert) -> None:
    model, _ = make(name, vocab, extra, tiny_bert)
    data = batch(fmap=bool(extra.get("use_token_learner")))
    with torch.no_grad():
        features = model.eval().encode(data)
        assert features["text"].shape[:2] == (8, 9)
        assert features["video"].shape[:2] == (8, 12)
        assert features["pooled"].shape[0] == 8 and features["pooled"].ndim == 2
        assert model.alignment_logits(data).shape == (8,)
        assert model.masked_text_logits(data).shape == (8, 9, VOCAB)
    terms = objective_for(name)(model.train(), data)
    assert {"loss", "text", "video", "align"} <= set(terms)
    assert all(t.shape == () for t in terms.values())
    assert all(torch.isfinite(terms[k]) for k in ("loss", "text", "video", "align"))


@pytest.mark.parametrize(("name", "vocab", "extra"), cases())
def test_gradients_reach_every_trainable_parameter(name, vocab, extra, tiny_bert) -> None:
    model, _ = make(name, vocab, extra, tiny_bert)
    data = batch(fmap=bool(extra.get("use_token_learner")))
    objective_for(name)(model.train(), data)["loss"].backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    missing = [n for n, p in trainable if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert all(dict(model.named_parameters())[n].grad is None for n in frozen)


@pytest.mark.parametrize(("name", "vocab", "extra"), cases())
def test_save_and_load_are_identical(name, vocab, extra, tiny_bert, tmp_path) -> None:
    model, settings = make(name, vocab, extra, tiny_bert)
    model.eval().save_pretrained(tmp_path / "model")
    loaded = load_pretrained(tmp_path).eval()  # a run directory holding model/ works too
    assert type(loaded) is type(model)
    assert loaded.config.settings() == settings
    saved, restored = model.state_dict(), loaded.state_dict()
    assert saved.keys() == restored.keys()
    for key, value in saved.items():
        assert torch.equal(value, restored[key]), key
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    assert flags == {n: p.requires_grad for n, p in loaded.named_parameters()}
    data = batch(fmap=bool(extra.get("use_token_learner")))
    with torch.no_grad():
        for method in ("alignment_logits", "masked_text_logits"):
            assert torch.equal(getattr(model, method)(data), getattr(loaded, method)(data))


@pytest.mark.parametrize("name", MODELS.names())
def test_objective_through_a_ddp_wrapper(name, tiny_bert, tmp_path) -> None:
    """Accelerate hands objectives a DistributedDataParallel; every parameter still learns."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rdzv", rank=0, world_size=1)
    try:
        model, _ = make(name, MODELS.get(name).vocabulary != "unused", {}, tiny_bert)
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
        objective_for(name)(wrapped, batch(fmap=False))["loss"].backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", MODELS.names())
def test_too_many_clips_and_missing_checkpoint_are_errors(name, tiny_bert, tmp_path) -> None:
    model, _ = make(name, MODELS.get(name).vocabulary != "unused", {"max_clips": 8}, tiny_bert)
    with pytest.raises(ValueError, match="max_clips"):
        model.encode(batch(fmap=False))  # 12 clips
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_model(name, tmp_path / "nothing", feat_dim=FEAT)
