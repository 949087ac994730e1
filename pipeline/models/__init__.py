"""Model registry: build any pretraining model by name, load any saved one without knowing which.

model = build_model("videobert", text_model=path, centroids=c)   # new, from a text checkpoint
objective = build_objective("videobert", w_text=1.0, ...)
model = load_pretrained(run_dir / "model")                      # any saved vlpipe model
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.models.base import Batch, Objective, VLConfig, VLPreTrainedModel


@dataclass(frozen=True)
class ModelEntry:
    module: str  # python module holding the classes
    model_class: str  # VLPreTrainedModel subclass with a `from_text_checkpoint` classmethod
    objective_class: str  # Objective for pretraining
    model_type: str  # config.json `model_type`
    uses_vocabulary: bool  # needs the faiss visual vocabulary (VideoBERT tokens)


MODELS: dict[str, ModelEntry] = {
    "videobert": ModelEntry(
        "pipeline.models.videobert",
        "VideoBERTForPretraining",
        "VideoBERTObjective",
        "vlpipe-videobert",
        True,
    ),
    "cbt": ModelEntry(
        "pipeline.models.cbt", "CBTForPretraining", "CBTObjective", "vlpipe-cbt", False
    ),
    "vilbert": ModelEntry(
        "pipeline.models.vilbert",
        "ViLBERTForPretraining",
        "ViLBERTObjective",
        "vlpipe-vilbert",
        False,  # optional: a vocabulary gives the KL target, else NCE (methods.md 3.5)
    ),
}


def _entry(name: str) -> ModelEntry:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name]


def model_class(name: str) -> type[VLPreTrainedModel]:
    e = _entry(name)
    return getattr(importlib.import_module(e.module), e.model_class)


def build_model(
    name: str,
    text_model: str | Path,
    centroids: np.ndarray | None = None,
    **overrides: Any,
) -> VLPreTrainedModel:
    """A new model whose text tower is loaded from the local HF BERT directory `text_model`.

    centroids float32 [V, F]: the visual vocabulary (leaf centroids) when there is one.
    """
    cls = model_class(name)
    num_words = 0 if centroids is None else len(centroids)
    return cls.from_text_checkpoint(
        str(text_model), num_visual_words=num_words, centroids=centroids, **overrides
    )


def build_objective(name: str, **kwargs: Any) -> Objective:
    e = _entry(name)
    return getattr(importlib.import_module(e.module), e.objective_class)(**kwargs)


def model_name_of(model_dir: str | Path) -> str:
    """Registry name of a saved model, from its config.json `model_type`."""
    model_type = json.loads((Path(model_dir) / "config.json").read_text())["model_type"]
    for name, e in MODELS.items():
        if e.model_type == model_type:
            return name
    raise ValueError(f"{model_dir}: model_type {model_type!r} is not a vlpipe model")


def load_pretrained(model_dir: str | Path) -> VLPreTrainedModel:
    """Load any saved vlpipe model (safetensors + config.json) without knowing which it is."""
    return model_class(model_name_of(model_dir)).from_pretrained(str(model_dir))


__all__ = [
    "MODELS",
    "Batch",
    "Objective",
    "VLConfig",
    "VLPreTrainedModel",
    "build_model",
    "build_objective",
    "load_pretrained",
    "model_name_of",
]
