"""What every fine-tuning task shares: the backbone, the annotated examples, the batches, the
evaluation files and the exported model.

    task = QATask(cfg)              # reads + joins annotations, checks paths (before any work)
    pipeline.engine.train(task, cfg)

* Backbone (`cfg.init`): `pretrained` loads the pretrained run's model; `text` builds the same
  architecture from the text checkpoint the run started from (no video pretraining); `random`
  the same architecture with no pretrained weight at all. `blind` hides every clip.
* Examples: the annotation records of `data.format` (finetune.readers) joined to the prep shards
  (finetune.annotations: by video id; a [start, end] segment takes the clips that overlap it),
  with their clip features [T, F] (and visual words for models with a vocabulary) in memory.
  Records that cannot be used are listed with file and line in `failures.jsonl`.
* Batches follow the segment-batch schema of `pipeline.models.base` plus the task's own fields;
  the training stream is endless and deterministic (epoch e is a permutation seeded by (seed, e),
  rank r of W takes every W-th example, batches span epochs) so a resumed run replays it.
* Every evaluation writes `eval/step-N/predictions.jsonl` and `metrics.json`; `model/` holds the
  backbone (HF directory), the head (safetensors), the tokenizer and `finetune.json`.
* From frames (`data.frames: true`, issue 11): the examples also hold each clip's stored frames
  (`frames.npy`, uint8 [T, F', S, S, 3]) and the batch `video_frames` [B, T, F', S, S, 3]. The
  model holds the visual encoder that made the shards' `feat.npy`, rebuilt from their meta.json
  record (name, settings, weights checked by sha256, or the same random-init seed), and replaces
  `video_feats` by `encoder(frames).pooled` [B, T, D] before the head reads the backbone
  (`FinetuneModel.visual`); it trains at `encoder_lr_mult` x lr (0: frozen, kept in eval mode)
  and is exported to `model/encoder/` (safetensors + encoder.json). The backbone's feature width
  must be the encoder's (a backbone pretrained on these shards' feat.npy fits). One reducer place:
  an encoder that reduces its tokens (TokenLearner, ToMe) under a backbone with its own
  TokenLearner is refused.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from abc import abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from finetune.annotations import ShardIndex, join, segment_features, write_failures
from finetune.readers import Failure, read_annotations
from pipeline.config import ConfigError, UserInputError, load_config_dict, require_path, to_dict
from pipeline.encoders import VisualEncoder, encoder_settings, load_encoder
from pipeline.encoders.extract import rebuild_encoder, same_encoder
from pipeline.engine import Task
from pipeline.finetune_config import TASKS, FinetuneConfig
from pipeline.io import atomic_write_json, atomic_write_text
from pipeline.models import (
    MODELS,
    build_model,
    default_text_model,
    load_pretrained,
    model_class,
    model_name_of,
    resolve_model_dir,
)
from pipeline.models.base import VLPreTrainedModel
from pipeline.models.text import load_tokenizer
from pipeline.shards import read_members
from pipeline.visual_words import nearest_words

log = logging.getLogger("vlpipe.finetune")


@dataclass
class Example:
    """One annotation record with its clips: what a batch row is made from."""

    item: Any  # the reader's record (QAItem, MCItem, CaptionItem, LabelItem)
    key: str  # prep sample key
    feats: np.ndarray  # float16 [T, F] clip features (T <= data.max_clips)
    words: np.ndarray  # int64 [T] visual word per clip (-1 without a vocabulary)
    extra: dict[str, Any] = field(default_factory=dict)  # the task's prepared fields
    frames: np.ndarray | None = None  # uint8 [T, F', S, S, 3] with data.frames, else None


class FinetuneModel(nn.Module):
    """The backbone (any registered pretrained model), a task head that reads it and, from
    frames, the visual encoder that computes the clip features (module doc)."""

    def __init__(
        self,
        backbone: VLPreTrainedModel,
        head: nn.Module,
        encoder: VisualEncoder | None = None,
        freeze_encoder: bool = False,
    ) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.encoder = encoder
        self.freeze_encoder = freeze_encoder
        if encoder is not None and freeze_encoder:
            encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> FinetuneModel:
        super().train(mode)
        if self.encoder is not None and self.freeze_encoder:
            self.encoder.eval()  # frozen: the features prep computed, no dropout / drop path
        return self

    def visual(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch with `video_feats` [B, T, D] = encoder(`video_frames`).pooled on the real
        clips (zero on padding and hidden clips, as collate leaves them) and no `video_frames`.
        A batch without frames (or a model without encoder) is returned as it is."""
        frames = batch.get("video_frames")
        if self.encoder is None or frames is None:
            return batch
        out = {k: v for k, v in batch.items() if k != "video_frames"}
        device = self.encoder.pixel_mean.device
        mask = batch["video_mask"].to(device)  # [B, T]
        feats = torch.zeros(*mask.shape, self.encoder.feature_dim, device=device)
        if mask.any():  # only the real clips go through the encoder
            real = frames.to(device)[mask]  # [N, F', S, S, 3]
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
                pooled = self.encoder(real[None]).pooled[0]  # [N, D]
            feats = feats.index_put((mask,), pooled.to(feats.dtype))
        out["video_feats"] = feats
        return out

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.head(self.backbone, self.visual(batch))


class FinetuneTask(Task):
    """Base of the fine-tuning tasks; subclasses say how to prepare, score and predict."""

    def __init__(self, cfg: FinetuneConfig, state: dict[str, Any] | None = None) -> None:
        self.cfg, self.settings = cfg, cfg.head
        self.name = f"finetune-{cfg.task}"
        self.best_metric = TASKS.get(cfg.task).best_metric
        self.model_dir = resolve_model_dir(cfg.model)
        self.backbone_name = model_name_of(self.model_dir)
        for path in cfg.data.shards:
            require_path("data.shards", path, "a `vlpipe prep` output directory")
        for i, path in enumerate([*cfg.data.train, *cfg.data.val]):
            require_path("data.train" if i < len(cfg.data.train) else "data.val", path, "a file")
        self.tokenizer = load_tokenizer(self.model_dir)
        vocab = self.model_dir / "vocab" / "centroids.npy"
        self.centroids = np.load(vocab, allow_pickle=False) if vocab.exists() else None
        self.index = ShardIndex.build(cfg.data.shards)
        self.failures: list[Failure] = []
        self.state = state  # what export saved (answer list, labels), when evaluating a run
        # From frames: the extractor that made the shards' features (rebuilt in build_model).
        self.encoder_record = self.shards_encoder() if cfg.data.frames else None
        self.check_backbone()
        self.train_examples: list[Example] = []
        if state is None:
            self.train_examples = self.examples(cfg.data.train, cfg.data.train_split)
            if cfg.data.fraction < 1:
                rng = np.random.default_rng(cfg.seed)
                keep = max(1, round(cfg.data.fraction * len(self.train_examples)))
                chosen = sorted(rng.choice(len(self.train_examples), keep, replace=False))
                self.train_examples = [self.train_examples[i] for i in chosen]
            width = self.train_examples[0].feats.shape[1] if self.train_examples else None
            if width is not None and width != self.backbone_feat_dim:
                raise ConfigError(
                    f"model: {self.backbone_name} takes {self.backbone_feat_dim}-wide clip "
                    f"features, data.shards hold {width}-wide feat.npy; use a backbone pretrained "
                    "on features of this width"
                )
            self.state = self.prepare(self.train_examples)
            self.train_examples = [e for e in self.train_examples if self.usable(e)]
            if not self.train_examples:
                raise ConfigError(f"data.train: no usable training example in {cfg.data.train}")
        # Validation: the val files, or the val split of the train files (never records without
        # a split there: those are training data).
        if cfg.data.val:
            self.val_examples = self.examples(cfg.data.val, cfg.data.val_split)
        else:
            self.val_examples = self.examples(cfg.data.train, cfg.data.val_split, strict=True)
        if state is None:  # a training run: the failures go next to its outputs
            run_dir = Path(cfg.output_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            write_failures(run_dir / "failures.jsonl", self.failures)
            if self.failures:
                log.warning(
                    "%d annotations could not be used (listed in %s)",
                    len(self.failures),
                    run_dir / "failures.jsonl",
                )

    # --- data -------------------------------------------------------------------------------

    def shards_encoder(self) -> dict[str, Any]:
        """The extractor record (meta.json "encoder") shared by every sample of data.shards.

        ConfigError when a sample has no frames.npy (prepped without features.frames), no
        record (prepped before issue 11), or another extractor than the first sample's.
        """
        first: tuple[str, dict[str, Any]] | None = None
        for key, parts in read_members(
            self.cfg.data.shards, set(self.index.videos), ("meta.json",)
        ):
            meta = parts.get("meta.json", {})
            where = f"data.shards: sample {key} ({self.index.videos[key].url})"
            if not meta.get("frames"):
                raise ConfigError(
                    f"{where} has no frames.npy: prep with features.frames=true for data.frames"
                )
            record = meta.get("encoder")
            if not record:
                raise ConfigError(f"{where} names no extractor (prepped before issue 11)")
            if first is None:
                first = (key, record)
            elif not same_encoder(first[1], record):
                raise ConfigError(
                    f"{where} was made by {record.get('encoder')} {record.get('settings_hash')}, "
                    f"sample {first[0]} by {first[1].get('encoder')} "
                    f"{first[1].get('settings_hash')}: one extractor per fine-tuning run"
                )
        if first is None:
            raise ConfigError(f"data.shards: no sample in {self.cfg.data.shards}")
        saved = (self.state or {}).get("encoder")
        if saved is not None and not same_encoder(saved, first[1]):
            raise ConfigError(
                f"data.shards: made by {first[1].get('encoder')} {first[1].get('settings_hash')}, "
                f"but the model's encoder was fine-tuned from {saved.get('encoder')} "
                f"{saved.get('settings_hash')}"
            )
        return first[1]

    def refuse_masked_lm_without_video(self, setting: str, alternative: str) -> None:
        """ConfigError, before any work, when `setting` (e.g. head.reader=masked_lm) would read
        the masked-LM head of a backbone whose masked LM never sees the video (CBT): it could
        only learn the language prior."""
        if not model_class(self.backbone_name).masked_lm_sees_video:
            raise ConfigError(
                f"{setting}=masked_lm: {self.backbone_name}'s masked-LM head never sees the "
                f"video; use {alternative}"
            )

    def check_backbone(self) -> None:
        """Refuse, before any work, a backbone that cannot take these clip features."""
        config = model_class(self.backbone_name).config_class.from_pretrained(str(self.model_dir))
        self.backbone_feat_dim = config.feat_dim
        record = self.encoder_record
        if record is None:
            return
        name = self.backbone_name
        if config.feat_dim != record["feature_dim"]:
            raise ConfigError(
                f"model: {name} takes {config.feat_dim}-wide clip features, the shards' extractor "
                f"{record['encoder']} gives {record['feature_dim']}; use a backbone pretrained on "
                "these shards' feat.npy"
            )
        if MODELS.get(name).vocabulary == "required":
            raise ConfigError(
                f"data.frames: {name} reads visual words (nearest centroids) only, so no gradient "
                "reaches an encoder; fine-tune from frames with a backbone that reads features"
            )
        settings = encoder_settings(record["encoder"], record["settings"])
        if settings.reduces_tokens and getattr(config.settings(), "use_token_learner", False):
            raise ConfigError(
                f"data.frames: the shards' extractor {record['encoder']} already reduces its "
                f"tokens (tokenlearner / tome) and {name} adds its own TokenLearner "
                "(use_token_learner): one reducer place; use a backbone without it"
            )

    def examples(self, files: list[str], split: str | None, strict: bool = False) -> list[Example]:
        """Read, filter by split, join to the shards and load the clips of `files`.

        Records whose format gives them a split keep `split`; records without one are kept
        unless `strict`."""
        fmt = self.cfg.data.format
        try:
            result = read_annotations(fmt, *files)
        except ConfigError:
            raise ConfigError(f"data.format: {fmt!r} is not a known format") from None
        self.failures += result.failures
        allowed = {split} if strict else {None, split}
        items = [i for i in result.items if split is None or getattr(i, "split", None) in allowed]
        joined = join(items, self.index)
        self.failures += joined.failures
        segments = list(segment_features(self.cfg.data.shards, joined.items))
        frames = self.stored_frames({j.key for j, _ in segments}) if self.cfg.data.frames else {}
        out = []
        for j, feats in segments:
            clip_frames = None
            if self.cfg.data.frames:
                clip_frames = even_subsample(
                    frames[j.key][j.first : j.stop], self.cfg.data.max_clips
                )
            feats = even_subsample(feats, self.cfg.data.max_clips)
            words = nearest_words(feats, self.centroids)
            out.append(Example(j.item, j.key, feats.astype(np.float16), words, frames=clip_frames))
        order = {id(j.item): i for i, j in enumerate(joined.items)}
        return sorted(out, key=lambda e: order[id(e.item)])  # annotation order

    def stored_frames(self, keys: set[str]) -> dict[str, np.ndarray]:
        """key -> uint8 [T, F', S, S, 3] frames.npy of those samples (one pass over the tars)."""
        found = {
            key: parts["frames.npy"]
            for key, parts in read_members(self.cfg.data.shards, keys, ("frames.npy",))
            if "frames.npy" in parts
        }
        missing = sorted(keys - set(found))
        if missing:
            raise ConfigError(f"data.shards: no frames.npy in sample(s) {', '.join(missing[:3])}")
        return found

    def tokens(self, text: str, truncate: bool = True) -> list[int]:
        """WordPiece ids without [CLS]/[SEP], cut to `data.max_text_tokens` unless `truncate`
        is False (a caller that must keep every token checks or cuts the length itself)."""
        return self.tokenizer(
            text,
            add_special_tokens=False,
            truncation=truncate,
            max_length=self.cfg.data.max_text_tokens if truncate else None,
        )["input_ids"]

    def collate(self, examples: list[Example], texts: list[list[int]]) -> dict[str, Any]:
        """Segment batch (pipeline.models.base) of `examples`, row i with text `texts[i]`."""
        B, L = len(examples), max(1, max(len(t) for t in texts))
        T = max(len(e.feats) for e in examples)
        F = examples[0].feats.shape[1]
        batch = {
            "text_ids": torch.full((B, L), self.tokenizer.pad_token_id, dtype=torch.long),
            "text_mask": torch.zeros(B, L, dtype=torch.bool),
            "video_feats": torch.zeros(B, T, F),
            "video_tokens": torch.full((B, T), -1, dtype=torch.long),
            "video_mask": torch.zeros(B, T, dtype=torch.bool),
            "video_ids": torch.tensor([hash(e.key) & (2**62 - 1) for e in examples]),
        }
        for i, (e, ids) in enumerate(zip(examples, texts, strict=True)):
            batch["text_ids"][i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            batch["text_mask"][i, : len(ids)] = True
            n = len(e.feats)
            batch["video_feats"][i, :n] = torch.from_numpy(e.feats.astype(np.float32))
            batch["video_tokens"][i, :n] = torch.from_numpy(e.words)
            batch["video_mask"][i, :n] = not self.cfg.blind
        if self.cfg.data.frames:  # uint8 [B, T, F', S, S, 3]; FinetuneModel.visual encodes them
            shape = examples[0].frames.shape[1:]
            batch["video_frames"] = torch.zeros(B, T, *shape, dtype=torch.uint8)
            for i, e in enumerate(examples):
                if not self.cfg.blind:
                    batch["video_frames"][i, : len(e.frames)] = torch.from_numpy(e.frames)
        if self.cfg.blind:  # nothing of the video reaches the model
            batch["video_feats"].zero_()
            batch["video_tokens"].fill_(-1)
        return batch

    def train_batches(self, rank: int, world: int, skip_batches: int) -> Iterable[dict]:
        return itertools.islice(self._stream(rank, world), skip_batches, None)

    def _stream(self, rank: int, world: int) -> Iterator[dict]:
        bs, pending = self.cfg.data.batch_size, []
        for epoch in itertools.count():
            order = np.random.default_rng([self.cfg.seed, epoch]).permutation(
                len(self.train_examples)
            )
            for i in order[rank::world]:
                pending.append(self.train_examples[i])
                if len(pending) == bs:
                    yield {**self.batch(pending, train=True), "epoch": epoch}
                    pending = []

    # --- model ------------------------------------------------------------------------------

    def backbone(self) -> VLPreTrainedModel:
        """The backbone as `cfg.init` says (module doc)."""
        if self.cfg.init == "pretrained":
            return load_pretrained(self.model_dir)
        pretrained_config = model_class(self.backbone_name).config_class.from_pretrained(
            str(self.model_dir)
        )
        if self.cfg.init == "random":
            return model_class(self.backbone_name)(pretrained_config)
        run_config = self.model_dir / "vlpipe_pretrain.json"
        text_model = None
        if run_config.exists():
            text_model = json.loads(run_config.read_text())["config"]["model"].get("text_model")
        return build_model(
            self.backbone_name,
            text_model or default_text_model(),
            self.centroids,
            pretrained_config.settings(),
            feat_dim=pretrained_config.feat_dim,
        )

    def build_model(self) -> nn.Module:
        backbone = self.backbone()
        encoder = None
        if self.encoder_record is not None:  # the extractor that made feat.npy, same weights
            encoder = rebuild_encoder(self.encoder_record, "data.shards meta.json")
        frozen = self.cfg.encoder_lr_mult == 0
        return FinetuneModel(backbone, self.build_head(backbone), encoder, frozen)

    def parameter_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        backbone = [p for p in model.backbone.parameters() if p.requires_grad]
        head = [p for p in model.head.parameters() if p.requires_grad]
        groups = [{"params": head, "lr": lr}]
        if backbone:
            groups.append({"params": backbone, "lr": lr * self.cfg.backbone_lr_mult})
        encoder = getattr(model, "encoder", None)
        trainable = [p for p in encoder.parameters() if p.requires_grad] if encoder else []
        if trainable:
            groups.append({"params": trainable, "lr": lr * self.cfg.encoder_lr_mult})
        return groups

    def batch_size(self, batch: dict[str, Any]) -> int:
        return int(batch["text_ids"].shape[0])

    # --- evaluation -------------------------------------------------------------------------

    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        if not self.val_examples:
            return {}
        predictions = self.predict(model, self.val_examples)
        metrics = self.score(self.val_examples, predictions)
        out = Path(self.cfg.output_dir) / "eval" / f"step-{step}"
        write_predictions(out, predictions, metrics)
        return metrics

    @torch.no_grad()
    def predict(self, model: nn.Module, examples: list[Example]) -> list[dict[str, Any]]:
        """One prediction record per example (JSON-able), in order."""
        model.eval()
        device = next(model.parameters()).device
        out: list[dict[str, Any]] = []
        bs = 2 * self.cfg.data.batch_size
        for start in range(0, len(examples), bs):
            chunk = examples[start : start + bs]
            batch = {
                k: v.to(device) if torch.is_tensor(v) else v
                for k, v in self.batch(chunk, train=False).items()
            }
            # Features from frames first, so that a head called outside forward (caption's
            # generate) reads them too.
            batch = model.visual(batch)
            out += self.predict_batch(model, chunk, batch)
        return out

    # --- export -----------------------------------------------------------------------------

    def export(self, model: nn.Module, out: Path) -> None:
        model.backbone.save_pretrained(str(out / "backbone"), safe_serialization=True)
        self.tokenizer.save_pretrained(str(out / "backbone"))
        if self.centroids is not None:
            (out / "backbone" / "vocab").mkdir()
            np.save(out / "backbone" / "vocab" / "centroids.npy", self.centroids)
        head = {k: v.contiguous() for k, v in model.head.state_dict().items()}
        save_file(head, str(out / "head.safetensors"))
        if model.encoder is not None:  # the fine-tuned encoder (safetensors + encoder.json)
            model.encoder.save(out / "encoder")
        state = self.state
        if self.encoder_record is not None:  # the extractor it started from (evaluation checks)
            state = {**state, "encoder": self.encoder_record}
        atomic_write_json(out / "finetune.json", {"config": to_dict(self.cfg), "state": state})

    # --- what a task says -------------------------------------------------------------------

    @abstractmethod
    def prepare(self, examples: list[Example]) -> dict[str, Any]:
        """Fit what the head needs from the training examples (answer list, labels); JSON-able."""

    def usable(self, example: Example) -> bool:
        """Whether a training example can be learnt from (e.g. its answer is in the top K)."""
        return True

    @abstractmethod
    def build_head(self, backbone: VLPreTrainedModel) -> nn.Module:
        """The head for `backbone` (sized by its `encode_dims`): head(backbone, batch) -> outputs."""

    @abstractmethod
    def batch(self, examples: list[Example], train: bool) -> dict[str, Any]:
        """The model batch of `examples` (collate + the task's fields, targets when training)."""

    @abstractmethod
    def predict_batch(
        self, model: nn.Module, examples: list[Example], batch: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Prediction records of one batch."""

    @abstractmethod
    def score(self, examples: list[Example], predictions: list[dict[str, Any]]) -> dict[str, float]:
        """Metrics of the predictions (the task's standard ones)."""


def even_subsample(feats: np.ndarray, max_clips: int) -> np.ndarray:
    """[T, F] -> at most max_clips rows, evenly spaced (deterministic, keeps first and last)."""
    if len(feats) <= max_clips:
        return feats
    index = np.linspace(0, len(feats) - 1, max_clips).round().astype(int)
    return feats[index]


def write_predictions(out: Path, predictions: list[dict], metrics: dict[str, Any]) -> None:
    """predictions.jsonl + metrics.json in `out` (atomic writes)."""
    lines = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions)
    atomic_write_text(out / "predictions.jsonl", lines)
    atomic_write_json(out / "metrics.json", metrics)


def load_finetuned(run: str | Path, **data_overrides: Any) -> tuple[FinetuneTask, FinetuneModel]:
    """A fine-tuned run (or its model/) -> (its task, with `data` settings replaced by
    `data_overrides` for evaluation on other annotations, and the model in eval mode)."""
    import importlib

    path = Path(run).expanduser()
    model_dir = path / "model" if (path / "model" / "finetune.json").exists() else path
    if not (model_dir / "finetune.json").exists():
        raise UserInputError(f"{path}: not a fine-tuned run (no model/finetune.json)")
    saved = json.loads((model_dir / "finetune.json").read_text())
    raw = saved["config"]
    raw["data"] = {**raw["data"], **data_overrides}
    raw["model"] = str(model_dir / "backbone")
    raw["init"] = "pretrained"
    raw["eval_every"] = 1  # build the evaluation examples
    cfg = load_config_dict(FinetuneConfig, raw)
    entry = TASKS.get(cfg.task)
    task_cls = getattr(importlib.import_module(entry.module), entry.task_class)
    task = task_cls(
        dataclasses.replace(cfg, output_dir=str(model_dir.parent)), state=saved["state"]
    )
    backbone = load_pretrained(model_dir / "backbone")
    encoder = load_encoder(model_dir / "encoder") if (model_dir / "encoder").is_dir() else None
    if cfg.data.frames and encoder is None:
        raise UserInputError(f"{model_dir}: trained from frames but has no encoder/ directory")
    frozen = cfg.encoder_lr_mult == 0
    model = FinetuneModel(backbone, task.build_head(backbone), encoder, frozen)
    model.head.load_state_dict(load_file(str(model_dir / "head.safetensors")))
    return task, model.eval()
