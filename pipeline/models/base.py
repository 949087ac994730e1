"""The contract every pretraining model and objective in vlpipe follows.

One loader, one loop, one checkpoint format for every model (VideoBERT, CBT, two-stream):

* The loader (`pipeline.segments`) yields a *segment batch*: sentences paired with the clips that
  fall inside their time span (methods.md 1.2), padded. Keys and shapes:

    text_ids      Long  [B, L]      WordPiece ids of the sentence, no [CLS]/[SEP], 0-padded
    text_mask     Bool  [B, L]      True on real tokens (all False for segments without speech)
    video_feats   Float [B, T, F]   S3D clip features (F = 1024)
    video_tokens  Long  [B, T]      visual-word id in [0, V) per clip; -1 where unknown/padded
                                    (-2 marks a masked clip inside VideoBERT)
    video_mask    Bool  [B, T]      True on real clips
    video_ids     Long  [B]         one id per source video: negatives must come from *other* videos
    video_fmap    Float [B, T, h, w, F]  optional per-clip spatial maps (shards with fmap.npy)

  Legend used across `pipeline.models`: B batch, T clips, L text tokens, D width, V visual words.

* A model is a `VLPreTrainedModel` (a HuggingFace `PreTrainedModel`): `save_pretrained` writes
  safetensors + config.json, and `pipeline.models.load_pretrained(dir)` restores any of them
  without the caller knowing which one it is (the config's `model_type` picks the class).

* An objective is a callable `objective(model, batch) -> dict[str, Tensor]` whose "loss" entry is
  the weighted total that the loop back-propagates; other entries are logged. Masking and negative
  sampling happen inside the objective with the torch RNG, which Accelerate checkpoints restore, so
  a resumed run draws the same masks.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers import initialization as init

from pipeline.config import load_config_dict, to_dict
from pipeline.models.layers import RunningFeatureNorm
from pipeline.models.settings import ModelSettings
from pipeline.models.text import TiedMaskedLMHead

Batch = dict[str, Tensor]


class VLConfig(PretrainedConfig):
    """HF config of every vlpipe model: shared fields + the fields of the model's settings class.

    The architecture knobs are declared once, in the model's settings dataclass
    (`pipeline.models.settings`); this config stores their values (nested settings as plain
    dicts, so config.json stays JSON) and `settings()` returns them typed and validated.
    `text_config` is the full BERT config dict of the text tower, so `from_pretrained` can
    rebuild it without the original checkpoint directory.
    """

    model_type = "vlpipe"
    settings_class: ClassVar[type[ModelSettings]] = ModelSettings

    def __init__(
        self,
        text_config: dict | None = None,  # BertConfig.to_dict() of the text tower
        feat_dim: int = 1024,  # width F of one clip feature (S3D Mixed_5c: 1024, methods.md 8)
        num_visual_words: int = 0,  # size of the faiss visual vocabulary (0: none)
        cls_token_id: int = 101,  # bert-base-uncased special ids, overwritten from the tokenizer
        sep_token_id: int = 102,
        mask_token_id: int = 103,
        pad_token_id: int = 0,
        **kwargs,
    ) -> None:
        self.text_config = text_config or {}
        self.feat_dim = feat_dim
        self.num_visual_words = num_visual_words
        self.cls_token_id = cls_token_id
        self.sep_token_id = sep_token_id
        self.mask_token_id = mask_token_id
        names = [f.name for f in dataclasses.fields(self.settings_class)]
        given = {name: kwargs.pop(name) for name in names if name in kwargs}
        # Validated like a config file: a bad value names its key.
        settings = load_config_dict(self.settings_class, given)
        for name, value in to_dict(settings).items():
            setattr(self, name, value)
        super().__init__(pad_token_id=pad_token_id, **kwargs)

    def settings(self) -> ModelSettings:
        """The architecture knobs as the typed settings dataclass."""
        names = [f.name for f in dataclasses.fields(self.settings_class)]
        return load_config_dict(self.settings_class, {n: getattr(self, n) for n in names})


class VLPreTrainedModel(PreTrainedModel):
    """Base class: what every downstream stage may ask of a pretrained model.

    Capabilities are declared, so callers choose by what a model can do, never by its name:
    `masked_lm_sees_video` is True when `masked_text_logits` conditions on the clips (the
    masked-template zero-shot protocol of methods.md 1.6 then applies).
    """

    config_class = VLConfig
    base_model_prefix = "vl"
    masked_lm_sees_video: ClassVar[bool] = True

    def freeze_parameters(self) -> None:
        """requires_grad=False on what the model's settings keep frozen (none by default).
        Subclasses call it at the end of `__init__`; `from_pretrained` calls it again."""

    @classmethod
    def from_pretrained(cls, *args, **kwargs) -> VLPreTrainedModel:
        """`PreTrainedModel.from_pretrained`, then `freeze_parameters`: loading swaps in new
        Parameters with requires_grad=True (transformers 5), which would let an optimizer built
        from the `requires_grad` parameters train what the settings keep frozen."""
        model = super().from_pretrained(*args, **kwargs)
        model.freeze_parameters()
        return model

    def _init_weights(self, module: nn.Module) -> None:
        """HF's generic init (Linear / Embedding / LayerNorm), then the shared blocks: the tied
        MLM head's bias at 0, feature statistics empty (the norm is the identity until it has
        seen clips). transformers' `init` functions leave weights loaded from a checkpoint."""
        super()._init_weights(module)
        if isinstance(module, TiedMaskedLMHead):
            init.zeros_(module.bias)
        elif isinstance(module, RunningFeatureNorm):
            for stat in (module.count, module.mean, module.m2):
                init.zeros_(stat)

    @classmethod
    def from_text_checkpoint(
        cls,
        text_model_path: str | Path,
        centroids: np.ndarray | None = None,
        feat_dim: int | None = None,
        **settings: Any,
    ) -> VLPreTrainedModel:
        """A new model whose text side is the local HF BERT directory `text_model_path`.

        centroids [V, F]: the faiss visual vocabulary, when there is one (V visual words);
        feat_dim: clip feature width F of the data (default: the centroids' width, else 1024);
        settings: fields of the model's settings class. Special ids come from the checkpoint's
        tokenizer. Raises FileNotFoundError / ValueError naming the path or the mismatch.
        """
        from pipeline.models.text import read_bert_directory

        if "num_visual_words" in settings:
            raise ValueError("num_visual_words comes from the centroids of the visual vocabulary")
        path, bert_config, special_ids = read_bert_directory(text_model_path)
        extra: dict[str, Any] = {}
        if centroids is not None:
            centroids = np.asarray(centroids, dtype=np.float32)
            if centroids.ndim != 2 or not len(centroids):
                raise ValueError(f"centroids must be a [V, F] array, got {centroids.shape}")
            if feat_dim is not None and feat_dim != centroids.shape[1]:
                raise ValueError(f"centroids of width {centroids.shape[1]} != feat_dim {feat_dim}")
            extra["num_visual_words"] = len(centroids)
            feat_dim = centroids.shape[1]
        config = cls.config_class(
            text_config=bert_config.to_dict(),
            feat_dim=feat_dim or 1024,
            **extra,
            **special_ids,
            **settings,
        )
        model = cls(config)
        model.init_from_text_checkpoint(path, centroids)
        return model

    def init_from_text_checkpoint(self, path: Path, centroids: np.ndarray | None) -> None:
        """Copy the BERT weights at `path` (and the vocabulary) into a freshly built model."""
        raise NotImplementedError

    def encode(self, batch: Batch) -> dict[str, Tensor]:
        """Contextual features for fine-tuning heads.

        Returns text [B, L, D_text], video [B, T, D_video], pooled [B, D_pooled].
        """
        raise NotImplementedError

    @property
    def encode_dims(self) -> dict[str, int]:
        """{"text": D_text, "video": D_video, "pooled": D_pooled} of `encode` (heads size
        themselves from it)."""
        raise NotImplementedError

    def alignment_logits(self, batch: Batch) -> Tensor:
        """[B] score that text i and video i are aligned (higher = aligned)."""
        raise NotImplementedError

    def masked_text_logits(self, batch: Batch) -> Tensor:
        """[B, L, vocab] logits over WordPiece for every text position given the video.

        `text_ids` may contain [MASK]; used by masked-LM and zero-shot classification.
        """
        raise NotImplementedError

    def masked_slot_logits(self, batch: Batch, slots: Tensor) -> Tensor:
        """[B, vocab] `masked_text_logits` at one text position per row (`slots` Long [B]).

        Models override it to apply their MLM head to that position only (a QA step then skips
        the [B, L, vocab] decoder product); the result is the same.
        """
        logits = self.masked_text_logits(batch)  # [B, L, vocab]
        return logits[torch.arange(logits.shape[0], device=logits.device), slots]

    def masked_slot_and_alignment(self, batch: Batch, slots: Tensor) -> tuple[Tensor, Tensor]:
        """(`masked_slot_logits` [B, vocab], `alignment_logits` [B]) of the same rows.

        Models whose one forward pass gives both override it (a windowed QA reader needs both
        for every window); the result is the same as the two calls.
        """
        return self.masked_slot_logits(batch, slots), self.alignment_logits(batch)


class Objective(Protocol):
    def __call__(self, model: VLPreTrainedModel, batch: Batch) -> dict[str, Tensor]: ...


def mask_tokens(
    ids: Tensor,
    candidates: Tensor,
    mask_id: int,
    vocab_size: int,
    prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT masking (methods.md 1.4 / 3.5): choose `prob` of the candidate positions; of those 80%
    become `mask_id`, 10% a random id in [0, vocab_size), 10% stay.

    ids [B, N] (any id space), candidates Bool [B, N]. Returns (masked ids [B, N], labels [B, N]
    with -100 where not chosen). At least one position per row with a candidate is chosen, so
    short sentences still produce a loss.
    """
    device = ids.device
    rand = torch.rand(ids.shape, generator=generator, device=device)
    chosen = (rand < prob) & candidates
    # Force one choice in rows that have candidates but drew none (short sentences, few clips).
    empty = candidates.any(1) & ~chosen.any(1)
    if empty.any():
        scores = torch.where(candidates, rand, torch.full_like(rand, 2.0))
        chosen[empty, scores[empty].argmin(1)] = True
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    action = torch.rand(ids.shape, generator=generator, device=device)
    masked = ids.clone()
    masked[chosen & (action < 0.8)] = mask_id
    rand_pos = chosen & (action >= 0.8) & (action < 0.9)
    random_ids = torch.randint(vocab_size, ids.shape, generator=generator, device=device)
    masked[rand_pos] = random_ids[rand_pos]
    return masked, labels
