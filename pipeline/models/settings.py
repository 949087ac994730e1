"""Every knob of the pretraining models and their objectives, as typed settings.

Two kinds per model, both dataclasses with one comment per field, validated with the key named
when a config is loaded (before any model exists; this module imports no torch, so a bad value
fails in a second):

* model settings: the architecture, saved in the model's config.json (`VLConfig` reads its
  fields from these classes, so there is no second list of them);
* objective settings: how the model is trained (loss weights, masking, negatives), saved in the
  run's config.yaml.

One spelling per idea across models: `w_text` / `w_video` / `w_align` weigh the masked-word,
masked-clip and alignment terms (CBT's paper calls them w_bert / w_visual / w_cross, methods.md
2.1); `mask_prob` / `clip_mask_prob` are the masking rates of words and clips;
`negative_fraction` is the share of pairs turned into alignment negatives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.config import ConfigError, check_range


def _check_prob(key: str, value: float, zero_ok: bool = True) -> None:
    if not (0.0 <= value <= 1.0) or (not zero_ok and value == 0.0):
        bound = "[0, 1]" if zero_ok else "(0, 1]"
        raise ConfigError(f"{key}: must be in {bound}, got {value}")


def _check_align_loss(align_loss: str, paired_negatives: bool) -> None:
    if align_loss not in ("bce", "pairwise"):
        raise ConfigError(f"align_loss: expected 'bce' or 'pairwise', got {align_loss!r}")
    if align_loss == "pairwise" and not paired_negatives:
        raise ConfigError("align_loss: 'pairwise' needs paired_negatives=true")


# --------------------------------------------------------------------------------- models


@dataclass
class ModelSettings:
    """Knobs every model has."""

    max_clips: int = 64  # longest video segment (clips) the learned positions cover

    def validate(self) -> None:
        check_range("max_clips", self.max_clips, 0, 4096)


@dataclass
class VideoBERTSettings(ModelSettings):
    freeze_visual_embeddings: bool = True  # the paper freezes the visual rows (methods.md 1.3)
    tie_visual_decoder: bool = False  # True: the visual-word softmax reuses the visual rows


@dataclass
class TransformerSettings:
    """Width and depth of one of our own (non-BERT) transformer stacks."""

    hidden: int = 384  # width D (MiniLM's, so benchmarks compare equal widths)
    layers: int = 2  # depth
    heads: int = 6  # attention heads (hidden must be a multiple)
    intermediate: int = 1536  # feed-forward width

    def validate(self) -> None:
        check_range("hidden", self.hidden, 0)
        check_range("layers", self.layers, -1, 64)
        check_range("heads", self.heads, 0)
        check_range("intermediate", self.intermediate, 0)
        if self.hidden % self.heads:
            raise ConfigError(f"heads: hidden {self.hidden} is not a multiple of {self.heads}")


@dataclass
class CBTSettings(ModelSettings):
    """Layer counts and widths are not given by the paper (methods.md 2.2, unverified)."""

    visual: TransformerSettings = field(default_factory=TransformerSettings)  # "a few layers"
    cross: TransformerSettings = field(  # "shallow" cross-modal transformer over both towers
        default_factory=lambda: TransformerSettings(layers=1)
    )
    hidden_dropout: float = 0.1  # dropout in our own layers (BERT keeps its own)
    layer_norm_eps: float = 1e-12  # BERT's
    initializer_range: float = 0.02  # std of the normal init of our own layers (BERT's)
    normalize_features: bool = True  # standardise clip features (layers.RunningFeatureNorm)
    freeze_text: bool = True  # BERT frozen, as in the paper (methods.md 2.1); also when fine-tuning

    def validate(self) -> None:
        super().validate()
        _check_prob("hidden_dropout", self.hidden_dropout)


@dataclass
class ViLBERTSettings(ModelSettings):
    """Two-stream sizes and co-attention placement (methods.md 3.1-3.3)."""

    visual: TransformerSettings = field(  # one visual TRM after each Co-TRM (reference layout)
        default_factory=lambda: TransformerSettings(layers=3)
    )
    bi_hidden: int = 384  # co-attention width (reference: 1024 with 8 heads)
    bi_heads: int = 6  # co-attention heads
    t_biattention_id: list[int] = field(
        default_factory=lambda: [3, 4, 5]
    )  # Co-TRM before text layers
    v_biattention_id: list[int] = field(default_factory=lambda: [0, 1, 2])  # ...and visual layers
    use_token_learner: bool = False  # S tokens per clip from video_fmap (methods.md 4.2)
    num_learned_tokens: int = 8  # S; scenic's EncoderMod default
    token_learner_bottleneck: int = 64  # MLP width inside TokenLearner v1.1
    hidden_dropout: float = 0.1  # dropout in our own layers (BERT keeps its own)
    layer_norm_eps: float = 1e-12  # BERT's
    initializer_range: float = 0.02  # std of the normal init of our own layers (BERT's)
    normalize_features: bool = True  # standardise clip features (layers.RunningFeatureNorm)
    pooling: str = "cls"  # alignment input: "cls" ([CLS] / IMG token, reference) or "mean"
    add_zero_attn: bool = False  # co-attention may attend to a zero key/value (layers.py)

    def validate(self) -> None:
        super().validate()
        check_range("bi_hidden", self.bi_hidden, 0)
        if self.pooling not in ("cls", "mean"):
            raise ConfigError(f"pooling: expected 'cls' or 'mean', got {self.pooling!r}")
        check_range("num_learned_tokens", self.num_learned_tokens, 0, 1024)
        _check_prob("hidden_dropout", self.hidden_dropout)
        if self.bi_hidden % self.bi_heads:
            raise ConfigError(f"bi_heads: bi_hidden {self.bi_hidden} is not a multiple")
        if len(self.t_biattention_id) != len(self.v_biattention_id):
            raise ConfigError(
                f"v_biattention_id: {self.v_biattention_id} must pair up with "
                f"t_biattention_id {self.t_biattention_id}"
            )
        for key, ids in (("t", self.t_biattention_id), ("v", self.v_biattention_id)):
            if any(b <= a for a, b in zip(ids, ids[1:], strict=False)) or min(ids, default=0) < 0:
                raise ConfigError(f"{key}_biattention_id: need increasing ids >= 0, got {ids}")
        if max(self.v_biattention_id, default=0) > self.visual.layers:
            raise ConfigError(
                f"v_biattention_id: {self.v_biattention_id} beyond visual.layers "
                f"{self.visual.layers}"
            )


# ----------------------------------------------------------------------------- objectives


@dataclass
class ObjectiveSettings:
    """Knobs every pretraining objective has (one spelling per idea, see the module doc)."""

    w_text: float = 1.0  # weight of the masked-word (masked LM) loss
    w_video: float = 1.0  # weight of the masked-clip loss
    w_align: float = 1.0  # weight of the video-text alignment loss
    mask_prob: float = 0.15  # share of words masked, 80/10/10 (BERT, methods.md 1.4)
    clip_mask_prob: float = 0.15  # share of clips masked

    def validate(self) -> None:
        for key in ("w_text", "w_video", "w_align"):
            check_range(key, getattr(self, key), -1e-12)
        _check_prob("mask_prob", self.mask_prob, zero_ok=False)
        _check_prob("clip_mask_prob", self.clip_mask_prob, zero_ok=False)


@dataclass
class VideoBERTObjectiveSettings(ObjectiveSettings):
    """Regimes and tricks of methods.md 1.2 / 1.4; their proportions are not given by the paper."""

    max_subsample: int = 5  # clip subsampling rate drawn from 1..this (methods.md 1.2)
    p_text_only: float = 0.2  # share of rows in the text-only regime
    p_video_only: float = 0.2  # share of rows in the video-only regime
    negative_fraction: float = 1.0  # share of text-video rows given another video's clips
    min_subsampled_clips: int = 2  # subsampling never leaves a row fewer clips than this
    keep_visible_clip: bool = True  # text-video rows never have all their clips masked
    paired_negatives: bool = True  # a negative is an extra row beside its positive (same text)
    align_loss: str = "pairwise"  # "pairwise": positive ranked over its negative; "bce": per row

    def validate(self) -> None:
        super().validate()
        check_range("max_subsample", self.max_subsample, 0, 64)
        check_range("min_subsampled_clips", self.min_subsampled_clips, 0, 64)
        _check_align_loss(self.align_loss, self.paired_negatives)
        _check_prob("p_text_only", self.p_text_only)
        _check_prob("p_video_only", self.p_video_only)
        _check_prob("negative_fraction", self.negative_fraction)
        if self.p_text_only + self.p_video_only > 1:
            raise ConfigError("p_video_only: p_text_only + p_video_only must be <= 1")


@dataclass
class CBTObjectiveSettings(ObjectiveSettings):
    """NCE settings of methods.md 2.1 (the negative sets are unverified there)."""

    w_text: float = 0.0  # BERT frozen in the paper (CBTSettings.freeze_text): no L_bert
    nce_temperature: float = 0.1  # cosine scores / τ for the masked-clip NCE
    nce_max_negatives: int = 1024  # cap on the sampled clip negatives; 0 = every clip
    cross_max_negatives: int = 0  # other-video sentences scored per video; 0 = all of them

    def validate(self) -> None:
        super().validate()
        check_range("nce_temperature", self.nce_temperature, 0)
        check_range("nce_max_negatives", self.nce_max_negatives, -1)
        check_range("cross_max_negatives", self.cross_max_negatives, -1)


@dataclass
class ViLBERTObjectiveSettings(ObjectiveSettings):
    """methods.md 3.5: random_region masking, KL to a soft visual word (NCE without one)."""

    clip_zero_prob: float = 0.9  # of the masked clips, zeroed; the rest kept (random_region)
    negative_fraction: float = 0.5  # share of pairs given another video's sentence (random_cap)
    visual_target_temperature: float = 0.1  # τ of softmax(-d² / (τ median d²)), unit-free
    nce_temperature: float = 0.1  # masked-clip NCE when there is no visual vocabulary
    nce_max_negatives: int = 1024  # cap on the sampled clip negatives; 0 = every clip
    paired_negatives: bool = True  # a negative is an extra row beside its positive
    negative_swaps: str = "text"  # paired: "text" (reference random_cap) or "video" (its clips)
    align_loss: str = (
        "bce"  # "bce": per row (reference); "pairwise": positive ranked over its negative
    )

    def validate(self) -> None:
        super().validate()
        _check_prob("clip_zero_prob", self.clip_zero_prob)
        if self.negative_swaps not in ("text", "video"):
            raise ConfigError(
                f"negative_swaps: expected 'text' or 'video', got {self.negative_swaps!r}"
            )
        _check_align_loss(self.align_loss, self.paired_negatives)
        _check_prob("negative_fraction", self.negative_fraction)
        check_range("visual_target_temperature", self.visual_target_temperature, 0)
        check_range("nce_temperature", self.nce_temperature, 0)
        check_range("nce_max_negatives", self.nce_max_negatives, -1)
