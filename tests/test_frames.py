"""Visual encoders from pixels, phase 2 (issue 11): `vlpipe prep` with another extractor, frames
in the shards, and fine-tuning end to end from them, on real files made here.

The fixture preps four tiny videos (two of flat changing colours, two of fixed quadrants) with a
tiny Video Swin (`video_swin_mini`, C 16, depths 1-1, so D = 32) loaded from a checkpoint in the
official release layout, keeping every decoded frame (frames.npy = what the extractor saw).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import media
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import webdataset as wds

from data_prep.prep import Prep
from data_prep.video import iter_clips
from finetune.task import load_finetuned
from pipeline.config import ConfigError, load_config
from pipeline.encoders import build_encoder, encoder_settings
from pipeline.encoders.base import sample_frame_indices
from pipeline.encoders.extract import rebuild_encoder
from pipeline.encoders.frames import stored_frames
from pipeline.finetune_config import FinetuneConfig
from pipeline.io import file_sha256, read_jsonl
from pipeline.models import build_model
from pipeline.prep_config import PrepConfig
from pipeline.shards import decode_sample, shard_urls
from vlpipe.cli import main as cli_main

TINY_SWIN = [
    "features.extractor=video_swin_mini",
    "features.encoder.embed_dim=16",
    "features.encoder.depths=[1,1]",
    "features.encoder.num_heads=[1,2]",
    "features.encoder.window_size=[2,4,4]",
]
PREP = [
    "num_workers=0",
    "asr.source=none",
    "progress=false",
    "video.fps=8",  # 12 frames per 1.5 s clip
    "video.size=32",
    "features.batch_size=4",
    "features.thumbnail_size=0",
]
WIDTH = 32  # 16 x 2 ** (2 stages - 1)


def samples_of(out: Path) -> dict[str, dict]:
    ds = wds.WebDataset(shard_urls(out), shardshuffle=False, empty_check=False).map(decode_sample)
    return {s["__key__"]: s for s in ds}


def official_checkpoint(path: Path, overrides: list[str]) -> Path:
    """A Video Swin checkpoint in the release layout ({"meta", "state_dict": backbone.* and
    cls_head.*}, .pth) for the tiny settings, with weights no seed of ours would draw."""
    settings = encoder_settings(
        "video_swin_mini", [o.removeprefix("features.encoder.") for o in overrides]
    )
    settings.seed = 1234
    encoder = build_encoder("video_swin_mini", settings)
    state = {f"backbone.{k}": v for k, v in encoder.state_dict().items()}
    state["cls_head.fc_cls.weight"] = torch.zeros(400, WIDTH)
    state["cls_head.fc_cls.bias"] = torch.zeros(400)
    torch.save({"meta": {"epoch": 30}, "state_dict": state}, path)
    return path


@pytest.fixture(scope="module")
def prepped(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("frames")
    videos = root / "videos"
    videos.mkdir()
    for i in range(2):
        seconds = 6.0 + 0.2 * i  # 4 clips each; different lengths, so no duplicate content
        media.make_video(videos / f"flat{i}.mp4", seconds, 10, (40, 32), pattern="index")
        media.make_video(videos / f"quad{i}.mp4", seconds, 10, (40, 32), pattern="orientation")
    encoder_keys = [o for o in TINY_SWIN if o.startswith("features.encoder.")]
    ckpt = official_checkpoint(root / "swin_tiny_layout.pth", encoder_keys)
    out = root / "shards"
    args = ["prep", "--input", str(videos), "--output", str(out), *PREP, *TINY_SWIN]
    args += ["features.spatial=true", "features.frames=true", "features.frames_size=0"]
    args += ["features.frames_per_clip=0", f"features.weights={ckpt}"]
    assert cli_main(args) == 0
    return {"root": root, "videos": videos, "shards": out, "weights": ckpt}


# --- frames ----------------------------------------------------------------------------------


def test_stored_frames_sample_and_resize_by_the_encoders_rule():
    rng = np.random.default_rng(0)
    clips = rng.integers(0, 256, size=(2, 12, 16, 16, 3), dtype=np.uint8)
    assert np.array_equal(stored_frames(clips, 0, 0), clips)  # kept as decoded
    assert np.array_equal(stored_frames(clips, 12, 16), clips)
    kept = stored_frames(clips, 4, 0)
    assert np.array_equal(kept, clips[:, [1, 4, 7, 10]])  # segment centres of 4 x 3 frames
    assert sample_frame_indices(12, 4).tolist() == [1, 4, 7, 10]
    small = stored_frames(clips, 4, 8)
    assert small.shape == (2, 4, 8, 8, 3) and small.dtype == np.uint8
    x = torch.from_numpy(kept).reshape(8, 16, 16, 3).permute(0, 3, 1, 2).double()
    want = F.interpolate(x, size=(8, 8), mode="bilinear", antialias=True, align_corners=False)
    want = want.round().permute(0, 2, 3, 1).reshape(2, 4, 8, 8, 3).numpy()
    assert np.abs(small.astype(np.float64) - want).max() <= 1  # float32 vs float64 rounding
    assert np.array_equal(stored_frames(clips, 4, 8), small)  # deterministic
    with pytest.raises(ValueError, match="uint8"):
        stored_frames(clips.astype(np.float32), 4, 8)


def test_prep_with_video_swin_writes_its_width_frames_and_provenance(prepped):
    samples = samples_of(prepped["shards"])
    assert len(samples) == 4
    sha = file_sha256(prepped["weights"])
    for sample in samples.values():
        meta, feat = sample["meta.json"], sample["feat.npy"]
        clips = len(sample["clips.json"]["clips"])
        assert feat.shape == (clips, WIDTH) and feat.dtype == np.float16
        assert sample["tokens.npy"].shape[::2] == (clips, WIDTH)  # [T, N, D]
        assert "fmap.npy" not in sample and "sizes.npy" not in sample
        record = meta["encoder"]
        assert record["encoder"] == "video_swin_mini" and record["feature_dim"] == WIDTH
        assert record["weights_sha256"] == sha == meta["weights"]
        assert record["settings"]["depths"] == [1, 1]
        assert meta["extraction"]["extractor"] == "video_swin_mini"
        assert meta["frames"]["per_clip"] == 12 and meta["frames"]["size"] == 32
        # the frames prep decoded for the extractor, stored as they were
        source = prepped["videos"] / Path(meta["source"]).name
        decoded = np.stack([c.frames for c in iter_clips(source, fps=8, clip_seconds=1.5, size=32)])
        assert np.array_equal(sample["frames.npy"], decoded)
        # the record rebuilds the extractor: its output on the stored frames is feat.npy
        encoder = rebuild_encoder(record)
        with torch.no_grad():
            pooled = encoder(sample["frames.npy"][None]).pooled[0]
        assert np.array_equal(pooled.numpy().astype(np.float16), feat)


def test_the_record_refuses_changed_weights_and_the_output_refuses_another_extractor(
    prepped, tmp_path
):
    record = next(iter(samples_of(prepped["shards"]).values()))["meta.json"]["encoder"]
    moved = tmp_path / "other.pth"
    shutil.copy(prepped["weights"], moved)
    with open(moved, "ab") as f:
        f.write(b"\0")
    changed = {**record, "settings": {**record["settings"], "weights": str(moved)}}
    with pytest.raises(ConfigError, match="sha256"):
        rebuild_encoder(changed)
    gone = {**record, "settings": {**record["settings"], "weights": str(tmp_path / "no.pth")}}
    with pytest.raises(ConfigError, match="not there"):
        rebuild_encoder(gone)
    out = tmp_path / "out"
    shutil.copytree(prepped["shards"], out)
    with pytest.raises(ConfigError, match="features.extractor: 'video_swin_mini' -> 's3d'"):
        Prep(load_config(PrepConfig, None, PREP), str(prepped["videos"]), out).run()


def test_extractor_settings_are_validated_naming_the_key(tmp_path):
    for bad, key in (
        (["features.extractor=nope"], "features.extractor"),
        ([*TINY_SWIN, "features.encoder.num_heads=[3,2]"], "features.encoder.num_heads"),
        ([*TINY_SWIN, "features.encoder.weights=x.pth"], "features.encoder.weights"),
        ([*TINY_SWIN, "features.engine=reference"], "features.engine"),
        (["features.encoder.size=64"], "features.encoder.size"),
        (["features.weights=/no/such.pth"], "features.weights"),
        ([*TINY_SWIN, "features.encoder.tome.enabled=true"], "features.encoder.tome.enabled"),
    ):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(PrepConfig, None, bad)


# --- fine-tuning from frames -------------------------------------------------------------------


@pytest.fixture(scope="module")
def finetune_data(prepped, tiny_bert) -> dict[str, Path]:
    """Clip-level labels (the first three clips of each video train, the fourth validates) and
    backbones pretrained on D-wide features: CBT, and ViLBERT with its own TokenLearner."""
    from transformers import AutoTokenizer

    root = prepped["root"]
    rows = ["label,youtube_id,time_start,time_end,split"]
    for name in sorted(p.stem for p in prepped["videos"].glob("*.mp4")):
        label = "flat colours" if name.startswith("flat") else "four quadrants"
        rows += [
            f"{label},{name},{1.5 * c + 0.5},{1.5 * c + 1.0},{'train' if c < 3 else 'val'}"
            for c in range(4)
        ]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    out = {**prepped, "labels": root / "labels.csv"}
    for name, extra in (("cbt", {}), ("vilbert", {"use_token_learner": True})):
        from pipeline.models import MODELS

        settings = MODELS.get(name).settings()
        for key, value in extra.items():
            setattr(settings, key, value)
        if name == "vilbert":
            settings.t_biattention_id = [3, 4, 5]
        torch.manual_seed(0)
        model = build_model(name, tiny_bert, None, settings, feat_dim=WIDTH)
        run = root / f"run-{name}"
        model.save_pretrained(run / "model")
        AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(str(run / "model"))
        (run / "model" / "vlpipe_pretrain.json").write_text(
            json.dumps({"config": {"model": {"text_model": str(tiny_bert)}}})
        )
        out[name] = run
    return out


def classify(data: dict[str, Path], run: Path, *extra: str, model: str = "cbt"):
    from finetune.classify import ClassifyTask

    cfg = load_config(
        FinetuneConfig,
        None,
        [
            "task=classify",
            "head.mode=full",
            f"model={data[model]}",
            f"output_dir={run}",
            f"data.shards={data['shards']}",
            "data.format=kinetics",
            f"data.train=[{data['labels']}]",
            "data.frames=true",
            "data.batch_size=4",
            "optim.max_steps=8",
            "optim.warmup_steps=1",
            "optim.lr=1e-3",
            "eval_every=0",
            "checkpoint_every=0",
            "progress=false",
            *extra,
        ],
    )
    return ClassifyTask(cfg)


def test_encoder_is_the_extractor_gets_gradients_and_freezes(finetune_data, tmp_path):
    task = classify(finetune_data, tmp_path / "run")
    assert len(task.train_examples) == 12 and len(task.val_examples) == 4
    example = task.train_examples[0]
    assert example.frames.shape == (len(example.feats), 12, 32, 32, 3)
    model = task.build_model()
    batch = next(iter(task.train_batches(0, 1, 0)))
    batch.pop("epoch")
    assert batch["video_frames"].shape[:2] == batch["video_feats"].shape[:2]
    # The encoder rebuilt from meta.json is the one that wrote feat.npy (eval mode)
    model.eval()
    with torch.no_grad():
        feats = model.visual(batch)["video_feats"]
    stored = batch["video_feats"]
    assert "video_frames" not in model.visual(batch)
    assert torch.equal(feats.half().float(), stored)
    # Trained end to end: every encoder parameter gets a gradient, in its own group
    model.train()
    task.loss(model, batch)["loss"].backward()
    params = dict(model.encoder.named_parameters())
    assert params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in params.values())
    groups = task.parameter_groups(model, 1e-3)
    assert any(g["lr"] == 1e-3 and g["params"][0] is next(iter(params.values())) for g in groups)
    # encoder_lr_mult=0: frozen and in eval mode, no group, the stored features exactly
    frozen = classify(finetune_data, tmp_path / "frozen", "encoder_lr_mult=0")
    model = frozen.build_model().train()
    assert not model.encoder.training
    assert not any(p.requires_grad for p in model.encoder.parameters())
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    groups = frozen.parameter_groups(model, 1e-3)
    assert not any(id(p) in encoder_ids for g in groups for p in g["params"])
    assert torch.equal(model.visual(batch)["video_feats"].half().float(), stored)


def test_finetune_from_frames_lowers_its_loss_exports_and_reloads(finetune_data, tmp_path):
    from pipeline.engine import train

    run = tmp_path / "run"
    task = classify(finetune_data, run, "encoder_lr_mult=0.5")
    start = task.build_model().encoder.state_dict()
    train(task, task.cfg)
    losses = [r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert len(losses) == 8 and np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    assert (run / "model" / "encoder" / "encoder.safetensors").is_file()
    reloaded_task, model = load_finetuned(run)
    trained = model.encoder.state_dict()
    assert any(not torch.equal(start[k], trained[k]) for k in start)  # the encoder learnt
    saved = list(read_jsonl(run / "eval" / "step-8" / "predictions.jsonl"))
    assert reloaded_task.predict(model, reloaded_task.val_examples) == saved


def test_frames_refusals(finetune_data, tmp_path):
    # one reducer place: an encoder that reduces tokens under a backbone with its own TokenLearner
    reduced = tmp_path / "reduced"
    args = ["prep", "--input", str(finetune_data["videos"]), "--output", str(reduced), *PREP]
    args += [*TINY_SWIN, "features.frames=true", "features.frames_per_clip=4"]
    args += [
        "features.encoder.tokenlearner.enabled=true",
        "features.encoder.tokenlearner.placement=1.0",
    ]
    assert cli_main(args) == 0
    data = {**finetune_data, "shards": reduced}
    with pytest.raises(ConfigError, match="one reducer place"):
        classify(data, tmp_path / "r1", model="vilbert")
    assert classify(data, tmp_path / "r2").train_examples[0].frames.shape[1] == 4
    # shards without frames, and a backbone of another feature width
    plain = tmp_path / "plain"
    args = ["prep", "--input", str(finetune_data["videos"]), "--output", str(plain), *PREP]
    assert cli_main([*args, *TINY_SWIN]) == 0
    with pytest.raises(ConfigError, match="features.frames=true"):
        classify({**finetune_data, "shards": plain}, tmp_path / "r3")
    s3d = tmp_path / "s3d"
    assert (
        cli_main(["prep", "--input", str(finetune_data["videos"]), "--output", str(s3d), *PREP])
        == 0
    )
    with pytest.raises(ConfigError, match="1024-wide feat.npy"):
        classify({**finetune_data, "shards": s3d}, tmp_path / "r4", "data.frames=false")


def test_captions_from_frames_read_the_encoder_as_training_does(finetune_data, tmp_path):
    """Caption prediction calls generate outside FinetuneModel.forward: it must encode the
    frames too (it once decoded from the stored features whatever the encoder had learnt)."""
    from finetune.caption import CaptionTask

    database = {}
    names = sorted(p.stem for p in finetune_data["videos"].glob("*.mp4"))
    for name in names:
        words = "flat colours" if name.startswith("flat") else "four quadrants"
        anns = [{"segment": [1.5 * c, 1.5 * c + 1.5], "id": c, "sentence": words} for c in range(4)]
        subset = "validation" if name == names[0] else "training"
        database[name] = {"subset": subset, "annotations": anns}
    (tmp_path / "youcook2.json").write_text(json.dumps({"database": database}))
    cfg = load_config(
        FinetuneConfig,
        None,
        [
            "task=caption",
            f"model={finetune_data['cbt']}",
            f"output_dir={tmp_path / 'run'}",
            f"data.shards={finetune_data['shards']}",
            "data.format=youcook2",
            f"data.train=[{tmp_path / 'youcook2.json'}]",
            "data.frames=true",
            "head.max_length=4",
            "head.java_metrics=false",
            "progress=false",
        ],
    )
    task = CaptionTask(cfg)
    model = task.build_model().eval()
    with torch.no_grad():  # the encoder moves away from the extractor that wrote feat.npy
        for p in model.encoder.parameters():
            p.add_(torch.randn_like(p))
        for layer in model.head.decoder.bert.encoder.layer:  # make the video matter
            layer.crossattention.output.dense.weight.mul_(50)
    examples = task.val_examples[:4]
    batch = task.batch(examples, train=False)
    config = model.head.generation_config(task.settings)
    with torch.no_grad():
        encoded = model.head.generate(model.backbone, model.visual(batch), config)
        stored = model.head.generate(model.backbone, batch, config)
    assert not torch.equal(encoded, stored)  # else the test could not tell them apart
    texts = [p["prediction"] for p in task.predict(model, examples)]  # 4 segments, 4 captions
    assert texts == [
        t.strip() for t in task.tokenizer.batch_decode(encoded, skip_special_tokens=True)
    ]
