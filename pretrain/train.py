"""`vlpipe pretrain`: every registered model's objective as a task on the library's engine.

    vlpipe pretrain --config configs/pretrain/videobert.yaml [key=value ...] [--resume]
    torchrun --nproc_per_node 2 -m vlpipe pretrain --config ...      # several processes
    accelerate launch -m vlpipe pretrain --config ...                # GPUs / machines / FSDP

The run directory holds `config.yaml` (resolved config + git revision), `metrics.jsonl` (one line
per optimizer step and per evaluation), TensorBoard logs, `checkpoints/step-N` (Accelerate
`save_state`: model, optimizer, scheduler, RNG states, data position) and, at the end, `model/`:
safetensors + config.json + tokenizer + visual vocabulary, everything fine-tuning needs. The loop
itself is `pipeline.engine.train`; this module says what is specific to pretraining.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import shutil
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.config import ConfigError, require_path, to_dict
from pipeline.engine import Task, TrainResult
from pipeline.engine import train as run_engine
from pipeline.io import atomic_write_json
from pipeline.models import MODELS, build_model, build_objective, default_text_model
from pipeline.segments import SegmentStream, loader
from pipeline.shards import shard_urls
from pipeline.train_config import PretrainConfig

log = logging.getLogger("vlpipe.pretrain")


def load_centroids(vocab_dir: str | None) -> np.ndarray | None:
    """float32 [V, F] leaf centroids of a `vlpipe cluster` output, or None without one."""
    if not vocab_dir:
        return None
    path = require_path("data.vocab", vocab_dir, "a `vlpipe cluster` output directory")
    if not (path / "centroids.npy").is_file():
        raise ConfigError(f"data.vocab: {path} has no centroids.npy (run `vlpipe cluster` first)")
    return np.load(path / "centroids.npy", allow_pickle=False).astype(np.float32)


def feature_width(shards: str) -> int:
    """F of the clip features in the first sample of the shards (the data decides, not 1024)."""
    for url in shard_urls(shards):
        with tarfile.open(url) as tar:
            for member in tar:
                if member.name.endswith(".feat.npy"):
                    data = io.BytesIO(tar.extractfile(member).read())
                    return int(np.load(data, allow_pickle=False).shape[-1])
    raise ConfigError(f"data.shards: no sample with feat.npy in {shards}")


class PretrainTask(Task):
    """The registered model `cfg.model.name` trained with its objective on segment batches.

    Paths are checked here, before the engine builds anything: a missing one is a one-line
    ConfigError naming the key and the path.
    """

    def __init__(self, cfg: PretrainConfig) -> None:
        self.cfg = cfg
        self.name = f"pretrain-{cfg.model.name}"
        self.entry = MODELS.get(cfg.model.name)
        require_path("data.shards", cfg.data.shards, "a `vlpipe prep` output directory")
        if not shard_urls(cfg.data.shards):
            raise ConfigError(f"data.shards: no shard-*.tar in {cfg.data.shards}")
        if cfg.data.heldout:
            require_path("data.heldout", cfg.data.heldout, "a `vlpipe prep` output directory")
        self.text_model = cfg.model.text_model or default_text_model()
        require_path("model.text_model", self.text_model, "a local HuggingFace BERT directory")
        self.centroids = (
            load_centroids(cfg.data.vocab) if self.entry.vocabulary != "unused" else None
        )
        self.feat_dim = feature_width(cfg.data.shards)
        if self.centroids is not None and self.centroids.shape[1] != self.feat_dim:
            raise ConfigError(
                f"data.vocab: centroids of width {self.centroids.shape[1]} do not match the "
                f"{self.feat_dim}-wide features in {cfg.data.shards}"
            )
        self.objective = build_objective(cfg.model.name, cfg.objective)
        self._heldout: list[dict[str, torch.Tensor]] | None = None  # read at the first evaluate

    def build_model(self) -> nn.Module:
        return build_model(
            self.cfg.model.name,
            self.text_model,
            self.centroids,
            self.cfg.model.config,
            self.feat_dim,
        )

    def train_batches(self, rank: int, world: int, skip_batches: int) -> Iterable[dict]:
        stream = SegmentStream(
            self.cfg.data, self.text_model, self.cfg.seed, rank, world, skip_batches
        )
        return loader(stream, self.cfg.data.num_workers, self.cfg.seed)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.objective(model, batch)

    def batch_tokens(self, batch: dict[str, Any]) -> int:
        return int(batch["text_mask"].sum() + batch["video_mask"].sum())

    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        """On the held-out shards (data.heldout): the objective's terms (`heldout_*`) and the
        evidence of video use (pretrain/evidence.py: `matching_accuracy`, `video_dependence`,
        ...). Masks and negatives are the same at every evaluation (a fixed seed inside the
        engine's forked RNG; the evidence has its own generator), so the curve shows the model,
        not the draw. The held-out batches are read once and kept (a few MB for a val split)."""
        if not self.cfg.data.heldout:
            return {}
        from pretrain.evidence import evidence, heldout_batches

        if self._heldout is None:
            # Held-out shards have no token sidecars: their visual words are the nearest centroids.
            data = dataclasses.replace(self.cfg.data, shards=self.cfg.data.heldout)
            try:
                self._heldout = heldout_batches(
                    data, self.text_model, self.centroids, self.cfg.seed
                )
            except ValueError as e:  # no segment there: train on, say why nothing is logged
                log.warning("data.heldout: nothing to evaluate: %s", e)
                self._heldout = []
        if not self._heldout:
            return {}
        torch.manual_seed(self.cfg.seed)
        sums: dict[str, float] = {}
        for batch in self._heldout:
            for k, v in self.objective(model, batch).items():
                value = float(v)
                if value == value:  # NaN: a term with no eligible row in this batch
                    sums[k] = sums.get(k, 0.0) + value
        out = {f"heldout_{k}": v / len(self._heldout) for k, v in sums.items()}
        try:
            out.update(evidence(model, self._heldout, seed=self.cfg.seed))
        except ValueError as e:  # e.g. a held-out split of one video: no negatives to draw
            log.warning("no evidence of video use on %s: %s", self.cfg.data.heldout, e)
        return out

    def export(self, model: nn.Module, out: Path) -> None:
        """Weights + config.json, the tokenizer, the visual vocabulary, the pretraining config."""
        from transformers import AutoTokenizer

        model.save_pretrained(str(out), safe_serialization=True)
        AutoTokenizer.from_pretrained(self.text_model).save_pretrained(str(out))
        if self.cfg.data.vocab:
            (out / "vocab").mkdir()
            for name in ("centroids.npy", "vocab.json"):
                src = Path(self.cfg.data.vocab) / name
                if src.exists():
                    shutil.copy2(src, out / "vocab" / name)
        atomic_write_json(out / "vlpipe_pretrain.json", {"config": to_dict(self.cfg)})


def train(cfg: PretrainConfig, resume: bool = False) -> TrainResult:
    """Check the paths, then run (or resume) pretraining on the engine."""
    return run_engine(PretrainTask(cfg), cfg, resume=resume)
