"""Action classification trained on labelled clips (Kinetics, UCF101, HMDB51 and the like).

The video (and an optional fixed `template` text) goes through the backbone; a linear layer on
its pooled output predicts the class. `mode: probe` freezes the backbone (a linear probe, the
frozen-feature protocol of CBT's Table, methods.md 2.3); `mode: full` fine-tunes everything
(`backbone_lr_mult` scales the backbone's learning rate). Metrics: top-1, top-5 and mean class
accuracy (the mean over classes of per-class top-1, as UCF101/HMDB51 papers report).

The probe standardises each pooled feature with a BatchNorm without affine parameters before the
linear layer, MAE's linear-probe head (`main_linprobe.py`: `BatchNorm1d(D, affine=False,
eps=1e-6)` before the head). A frozen backbone's pooled features can sit at very different
scales per dimension (VideoBERT's tanh pooler, trained for alignment), and a short probe with a
LayerNorm (which normalises across features, per row) under-fits them: on the demo's model, 60
steps, the pretrained start reached 57.8 % verb top-1 with a LayerNorm and 65.6 % with the
BatchNorm (a logistic regression fitted to convergence on the same features: 85.0 %). Its running
statistics are buffers, saved and loaded with the head. Under DDP each process normalises by its
own batch (not synchronised), and DDP broadcasts rank 0's buffers before every forward
(`broadcast_buffers`, on by default), so every process holds, and exports, rank 0's. Full
fine-tuning keeps a LayerNorm: the features move with the backbone. A probe exported before this
head (a LayerNorm) no longer loads: `load_state_dict` names the missing and unexpected keys.

Legend: B clips, C classes, D pooled width.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from finetune.task import Example, FinetuneTask
from pipeline.finetune_config import ClassifySettings
from pipeline.models.base import VLPreTrainedModel


class LinearHead(nn.Module):
    """pooled [B, D] -> class logits [B, C]; `probe`: BatchNorm, else LayerNorm (module doc)."""

    def __init__(self, dim: int, classes: int, probe: bool = False) -> None:
        super().__init__()
        # pooled scales differ across backbones and, frozen, across dimensions
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6) if probe else nn.LayerNorm(dim)
        self.linear = nn.Linear(dim, classes)

    def forward(self, backbone: VLPreTrainedModel, batch: dict[str, Any]) -> dict[str, Tensor]:
        pooled = backbone.encode(batch)["pooled"]  # [B, D]
        return {"logits": self.linear(self.norm(pooled))}


class ClassifyTask(FinetuneTask):
    """Linear probe or full fine-tuning (module doc)."""

    settings: ClassifySettings

    def prepare(self, examples: list[Example]) -> dict[str, Any]:
        return {"labels": sorted({e.item.label for e in examples})}

    @property
    def label_index(self) -> dict[str, int]:
        if not hasattr(self, "_label_index"):
            self._label_index = {label: i for i, label in enumerate(self.state["labels"])}
        return self._label_index

    def build_model(self) -> nn.Module:
        model = super().build_model()
        if self.settings.mode == "probe":
            model.backbone.requires_grad_(False)
        return model

    def build_head(self, backbone: VLPreTrainedModel) -> nn.Module:
        probe = self.settings.mode == "probe"
        return LinearHead(backbone.encode_dims["pooled"], len(self.state["labels"]), probe)

    def batch(self, examples: list[Example], train: bool) -> dict[str, Any]:
        text = self.tokens(self.settings.template) if self.settings.template else []
        batch = self.collate(examples, [text for _ in examples])
        if train:
            batch["label"] = torch.tensor([self.label_index[e.item.label] for e in examples])
        return batch

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        if self.settings.mode == "probe":
            model.backbone.eval()  # frozen features: no dropout in the backbone
        logits = model(batch)["logits"].float()
        loss = F.cross_entropy(logits, batch["label"])
        accuracy = (logits.argmax(1) == batch["label"]).float().mean()
        return {"loss": loss, "train_accuracy": accuracy.detach()}

    def predict_batch(self, model, examples, batch) -> list[dict[str, Any]]:
        logits = model(batch)["logits"].float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices.tolist()
        return [
            {
                "video_id": e.item.video_id,
                "start": e.item.start,
                "end": e.item.end,
                "label": e.item.label,
                "top5": [self.state["labels"][k] for k in ranked],
            }
            for e, ranked in zip(examples, top, strict=True)
        ]

    def score(self, examples, predictions) -> dict[str, float]:
        return classification_scores(predictions)


def classification_scores(predictions: list[dict[str, Any]]) -> dict[str, float]:
    """top1 / top5 / mean class accuracy in percent over records with "label" and "top5"
    (ranked predictions); a label never predicted-for counts in the mean like any other."""
    if not predictions:
        return {"top1": float("nan"), "top5": float("nan"), "mean_class_accuracy": float("nan")}
    top1 = np.array([p["top5"][0] == p["label"] for p in predictions], float)
    top5 = np.array([p["label"] in p["top5"] for p in predictions], float)
    labels = np.array([p["label"] for p in predictions])
    per_class = [top1[labels == c].mean() for c in np.unique(labels)]
    return {
        "top1": 100.0 * float(top1.mean()),
        "top5": 100.0 * float(top5.mean()),
        "mean_class_accuracy": 100.0 * float(np.mean(per_class)),
        "clips": float(len(predictions)),
    }
