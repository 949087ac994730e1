"""Config loading: YAML + dotted overrides, validation naming the key, saved resolved config."""

from pathlib import Path

import pytest
import yaml

from pipeline.config import (
    ConfigError,
    config_hash,
    flat_dict,
    load_config,
    parse_overrides,
    save_config,
)
from pipeline.prep_config import PrepConfig
from pipeline.train_config import PretrainConfig

REPO = Path(__file__).resolve().parent.parent


def test_defaults_and_overrides(tmp_path):
    cfg = load_config(
        PrepConfig,
        REPO / "configs/prep/default.yaml",
        ["video.fps=24", "asr.model_path=null", "features.spatial=true", "video.decoder=pyav"],
    )
    assert cfg.video.fps == 24.0 and isinstance(cfg.video.fps, float)
    assert load_config(PrepConfig, None, ["video.fps=2e1"]).video.fps == 20.0
    assert cfg.asr.model_path is None
    assert cfg.features.spatial is True
    assert cfg.video.decoder == "pyav"
    assert cfg.video.clip_seconds == 1.5 and cfg.video.size == 224


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("video.fpss=3", "unknown key video.fpss"),
        ("video.decoder=opencv", "video.decoder"),
        ("video.fps=-1", "video.fps"),
        ("video.fps=abc", "video.fps"),
        ("features.batch_size=0", "features.batch_size"),
        ("asr.source=maybe", "asr.source"),
        ("shards.max_samples=1.5", "shards.max_samples"),
        ("nosuchsection.x=1", "unknown key nosuchsection"),
        ("asr.vad_filter=3", "asr.vad_filter"),
        ("novalue", "key=value"),
    ],
)
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(PrepConfig, None, [override])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(PrepConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("video: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(PrepConfig, bad)


def test_model_and_objective_settings_are_typed():
    cfg = load_config(
        PretrainConfig,
        REPO / "configs/pretrain/cbt.yaml",
        ["data.shards=/x", "objective.w_text=2", "model.config.visual.layers=3"],
    )
    assert cfg.objective.w_text == 2.0 and cfg.objective.w_video == 1.0
    assert cfg.model.config.visual.layers == 3 and cfg.model.config.cross.layers == 1
    with pytest.raises(ConfigError, match=r"data\.shards"):
        load_config(PretrainConfig, REPO / "configs/pretrain/videobert.yaml")


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("objective.mask_prb=0.3", "unknown key objective.mask_prb"),
        ("objective.mask_prob=7", "objective.mask_prob"),
        ("model.config.no_such=1", "unknown key model.config.no_such"),
        ("model.name=resnet", "model.name"),
        ("model.config.visual.heads=5", "model.config.visual.heads"),
        ("data.max_clips=100", "data.max_clips"),
        ("optim.betas=[0.9]", "optim.betas"),
    ],
)
def test_bad_pretrain_settings_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(
            PretrainConfig, REPO / "configs/pretrain/cbt.yaml", ["data.shards=/x", override]
        )


def test_path_settings_expand_home_and_variables(monkeypatch):
    monkeypatch.setenv("HOME", "/home/someone")
    monkeypatch.setenv("SHARDS", "/data/shards")
    cfg = load_config(PretrainConfig, None, ["data.shards=~/shards", "data.vocab=$SHARDS/vocab"])
    assert cfg.data.shards == "/home/someone/shards"
    assert cfg.data.vocab == "/data/shards/vocab"


def test_warmup_longer_than_training_warns(caplog):
    load_config(
        PretrainConfig,
        None,
        ["data.shards=/x", "data.vocab=/v", "optim.warmup_steps=50", "optim.max_steps=20"],
    )
    assert "never reaches its peak" in caplog.text


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(PrepConfig, None, ["video.size=112"])
    save_config(cfg, tmp_path / "cfg.yaml")
    saved = yaml.safe_load((tmp_path / "cfg.yaml").read_text())
    assert saved["_meta"]["config_hash"] == config_hash(cfg)
    assert "git_revision" in saved["_meta"]
    again = load_config(PrepConfig, tmp_path / "cfg.yaml")
    assert again == cfg


def test_parse_overrides_types():
    d = parse_overrides(["a.b=1", "a.c=1.5", "a.d=true", "e=hello", "f=[1, 2]"])
    assert d == {"a": {"b": 1, "c": 1.5, "d": True}, "e": "hello", "f": [1, 2]}


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    from pipeline.cluster_config import ClusterConfig
    from pipeline.finetune_config import FinetuneConfig

    cls = {
        "prep": PrepConfig,
        "cluster": ClusterConfig,
        "pretrain": PretrainConfig,
        "finetune": FinetuneConfig,
    }[path.parent.name]
    overrides = {
        PretrainConfig: ["data.shards=/x", "data.vocab=/v"],
        FinetuneConfig: ["data.shards=/x", "data.train=[/a.json]", "model=/m"],
    }.get(cls, [])
    cfg = load_config(cls, path, overrides)
    if cls is PretrainConfig:
        assert cfg.model.name in path.name
    if cls is FinetuneConfig:
        assert cfg.task in path.stem


def test_flat_dict_joins_nested_keys_and_keeps_values():
    """One flattening for TensorBoard's hparams and prep's resume check: lists stay lists."""
    d = {"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}
    assert flat_dict(d) == {"a.b": 1, "a.c.d": [1, 2], "e": None}
    assert flat_dict({}) == {}
