"""Settings of `vlpipe finetune` (configs/finetune/*.yaml) and the fine-tuning task registry.

A fine-tuning run is a task on the engine (`pipeline.engine`): the engine's settings
(`EngineConfig`: optim, seed, checkpoints, evaluation every N steps ...) plus

    model: PATH          a pretrained run (or its model/) whose model is the backbone
    init:  pretrained | text | random   what the backbone starts from (the baselines of issue 10)
    blind: false         hide the video (a baseline: what the text alone gets)
    data:  annotations joined to prep shards (finetune.readers formats); `data.frames: true`
           computes the clip features from the stored frames with the extractor that made them,
           trained end to end at `encoder_lr_mult` x optim.lr
    task:  qa | mc | caption | classify
    head:  the task's settings (typed by `task`)

Every task is named once, in TASKS; the `finetune` stage holds the implementations (the face
looks them up by the entry's module name), the settings here are light to import so a bad value
fails before anything is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.config import ConfigError, PathStr, check_range
from pipeline.registry import Registry
from pipeline.train_config import EngineConfig


@dataclass
class FinetuneDataConfig:
    shards: list[PathStr] = field(default_factory=list)  # prep output dir(s) with the videos
    format: str = "msrvtt-qa"  # annotation format: a reader of finetune.readers (README table)
    train: list[PathStr] = field(default_factory=list)  # training annotation file(s)
    val: list[PathStr] = field(default_factory=list)  # validation file(s); [] = the train files
    train_split: str | None = "train"  # keep records of this split where the format has splits
    val_split: str | None = "val"  # ...and these for validation
    fraction: float = 1.0  # share of the training annotations used (a seeded subset)
    batch_size: int = 16  # examples per process per step
    max_text_tokens: int = 32  # WordPiece tokens of a question / option / caption
    max_clips: int = 32  # clips per example (longer videos are subsampled evenly)
    frames: bool = False  # train the shards' extractor end to end from frames.npy (issue 11)

    def validate(self) -> None:
        if not self.shards:
            raise ConfigError("shards: a prep output directory is required (data.shards=DIR)")
        if not self.train:
            raise ConfigError("train: at least one annotation file (data.train=[FILE])")
        check_range("fraction", self.fraction, 0, 1)
        check_range("batch_size", self.batch_size, 0)
        check_range("max_text_tokens", self.max_text_tokens, 0, 512)
        check_range("max_clips", self.max_clips, 0)


@dataclass
class QASettings:
    """Open-ended QA over the most frequent training answers: a classifier on the pooled output
    (methods.md 3.6) or the backbone's masked-LM head at a [MASK] after the question (FrozenBiLM,
    Yang et al. 2022); finetune/qa.py."""

    answers: int = 1000  # K most frequent training answers; others count as wrong at test time
    reader: str = "classifier"  # classifier (pooled -> MLP) | masked_lm (MLM head at [MASK])
    template: str = "question: {question} answer: [MASK]."  # masked_lm: text beside the video
    hidden_mult: int = 2  # classifier: MLP width = this x pooled width (SimpleClassifier)
    dropout: float = 0.1  # classifier: before the MLP
    soft_targets: bool = True  # VQA soft scores when a question has several annotator answers
    # Windowed reading (0: the whole video in one row). The question is read beside every window
    # of this many consecutive clips; the model's alignment score weighs the windows (finetune/qa.py)
    window_clips: int = 0
    window_stride: int = 1  # clips between window starts

    def validate(self) -> None:
        check_range("answers", self.answers, 1)
        check_range("window_clips", self.window_clips, -1, 64)
        check_range("window_stride", self.window_stride, 0, 64)
        if self.reader not in ("classifier", "masked_lm"):
            raise ConfigError(f"reader: classifier or masked_lm, got {self.reader!r}")
        if self.template.count("[MASK]") != 1 or "{question}" not in self.template:
            raise ConfigError(f"template: needs {{question}} and one [MASK], got {self.template!r}")
        check_range("hidden_mult", self.hidden_mult, 0, 16)
        check_range("dropout", self.dropout, -1e-9, 0.999)


@dataclass
class MCSettings:
    """Multiple choice: each option scored with the video, cross entropy over the options."""

    template: str = "{question} {option}"  # text scored with the video, per option
    zero_shot: bool = False  # score by the pretrained alignment only, no training

    def validate(self) -> None:
        if "{option}" not in self.template:
            raise ConfigError(f"template: needs {{option}}, got {self.template!r}")


@dataclass
class CaptionSettings:
    """A transformer decoder with cross-attention to the model's video outputs, or the backbone's
    own masked-LM head writing left to right; decoded with HuggingFace `generate` (greedy or beam
    search); finetune/caption.py."""

    # cross_attention: a BERT decoder (from the text tower) cross-attending to the video outputs;
    # masked_lm: the backbone writes the caption itself, word k+1 being its masked-LM guess at
    # "w1 .. wk [MASK]" beside the video (no new parameters; needs masked_lm_sees_video)
    decoder: Literal["cross_attention", "masked_lm"] = "cross_attention"
    decoder_layers: int = 0  # cross_attention: 0 = as many as the text tower (initialised from it)
    max_length: int = 20  # generated tokens at most
    num_beams: int = 1  # 1 = greedy; 5 is common for reported numbers
    no_repeat_ngram_size: int = 0  # 0 = off; 3 blocks repeated trigrams
    use_transcript: bool = False  # also attend to the ASR transcript of the segment
    # Text beside the video instead of a transcript, the decoder attending to its outputs too:
    # VideoBERT's fill-in template (methods.md 1.7), "now let's [MASK] the [MASK] to the
    # [MASK], and then [MASK] the [MASK].", whose [MASK] slots the backbone fills from the video.
    prompt: str = ""  # "" = none
    label_smoothing: float = 0.0  # teacher-forcing cross entropy
    java_metrics: bool = True  # PTB tokenizer + METEOR (Java, ~15 s per evaluation) if on PATH

    def validate(self) -> None:
        check_range("decoder_layers", self.decoder_layers, -1, 48)
        check_range("max_length", self.max_length, 0, 510)  # + [CLS]: BERT positions
        check_range("num_beams", self.num_beams, 0, 64)
        check_range("no_repeat_ngram_size", self.no_repeat_ngram_size, -1, 10)
        check_range("label_smoothing", self.label_smoothing, -1e-9, 0.5)
        if self.prompt and self.use_transcript:
            raise ConfigError("prompt: the transcript is the text beside the video; use one")
        if self.decoder == "masked_lm" and (self.prompt or self.use_transcript):
            raise ConfigError(
                "decoder: masked_lm writes the caption as the backbone's text; "
                "prompt / use_transcript need decoder=cross_attention"
            )


@dataclass
class ClassifySettings:
    """Action classification trained on labelled clips: a linear probe or full fine-tuning."""

    mode: Literal["probe", "full"] = "probe"  # probe: the backbone is frozen
    template: str = ""  # text given with the video ("" = none); e.g. "a video of"

    def validate(self) -> None:
        pass


@dataclass(frozen=True)
class TaskEntry:
    module: str  # the finetune module holding the Task class (resolved by the face)
    task_class: str
    settings: type
    best_metric: str  # validation metric that picks the exported step (higher is better)
    summary: str


TASKS: Registry[TaskEntry] = Registry("fine-tuning task")
TASKS.register(
    "qa", TaskEntry("finetune.qa", "QATask", QASettings, "accuracy", "open-ended video QA")
)
TASKS.register(
    "mc", TaskEntry("finetune.qa", "MCTask", MCSettings, "accuracy", "multiple-choice video QA")
)
TASKS.register(
    "caption",
    TaskEntry("finetune.caption", "CaptionTask", CaptionSettings, "CIDEr", "video captioning"),
)
TASKS.register(
    "classify",
    TaskEntry(
        "finetune.classify", "ClassifyTask", ClassifySettings, "top1", "action classification"
    ),
)


@dataclass
class FinetuneConfig(EngineConfig):
    output_dir: PathStr = "runs/finetune"  # run directory: config, logs, eval/, model/
    model: PathStr = ""  # pretrained run directory (or its model/): the backbone
    init: Literal["pretrained", "text", "random"] = "pretrained"  # the backbone's starting point
    blind: bool = False  # hide the video at training and test time (a baseline)
    backbone_lr_mult: float = 1.0  # learning rate of the backbone relative to optim.lr
    encoder_lr_mult: float = 1.0  # the visual encoder's (data.frames=true); 0 = frozen, eval mode
    task: str = "qa"  # a registered task: qa, mc, caption, classify
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    head: Any = None  # the task's settings (QASettings, ...), by `task`

    @classmethod
    def section_types(cls, data: dict[str, Any], prefix: str) -> dict[str, type]:
        name = data.get("task", cls.task)
        if not isinstance(name, str) or name not in TASKS:
            raise ConfigError(f"{prefix}task: unknown task {name!r}; choose one of {TASKS.names()}")
        return {"head": TASKS.get(name).settings}

    def validate(self) -> None:
        super().validate()
        if not self.model:
            raise ConfigError("model: a pretrained run directory is required (model=runs/NAME)")
        check_range("backbone_lr_mult", self.backbone_lr_mult, -1e-12)
        check_range("encoder_lr_mult", self.encoder_lr_mult, -1e-12)
        if isinstance(self.head, ClassifySettings) and self.head.mode == "probe":
            if self.data.batch_size < 2:  # the probe's BatchNorm needs 2 rows per batch
                raise ConfigError("data.batch_size: a linear probe (head.mode=probe) needs >= 2")
