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

from typing import Protocol

import torch
from torch import Tensor
from transformers import PretrainedConfig, PreTrainedModel

Batch = dict[str, Tensor]


class VLConfig(PretrainedConfig):
    """Fields shared by every vlpipe model.

    `text_config` is the full BERT config dict of the text tower, so `from_pretrained` can rebuild
    it without the original checkpoint directory.
    """

    model_type = "vlpipe"

    def __init__(
        self,
        text_config: dict | None = None,  # BertConfig.to_dict() of the text tower
        feat_dim: int = 1024,  # width of one S3D clip feature (Mixed_5c, methods.md 8)
        num_visual_words: int = 0,  # size of the faiss visual vocabulary (0: none)
        max_clips: int = 64,  # longest video segment a model accepts
        cls_token_id: int = 101,  # bert-base-uncased special ids, overwritten from the tokenizer
        sep_token_id: int = 102,
        mask_token_id: int = 103,
        pad_token_id: int = 0,
        **kwargs,
    ) -> None:
        self.text_config = text_config or {}
        self.feat_dim = feat_dim
        self.num_visual_words = num_visual_words
        self.max_clips = max_clips
        self.cls_token_id = cls_token_id
        self.sep_token_id = sep_token_id
        self.mask_token_id = mask_token_id
        super().__init__(pad_token_id=pad_token_id, **kwargs)


class VLPreTrainedModel(PreTrainedModel):
    """Base class: the three capabilities every downstream stage relies on."""

    config_class = VLConfig
    base_model_prefix = "vl"

    def encode(self, batch: Batch) -> dict[str, Tensor]:
        """Contextual features for fine-tuning heads.

        Returns text [B, L, D_text], video [B, T, D_video], pooled [B, D_pooled].
        """
        raise NotImplementedError

    def alignment_logits(self, batch: Batch) -> Tensor:
        """[B] score that text i and video i are aligned (higher = aligned)."""
        raise NotImplementedError

    def masked_text_logits(self, batch: Batch) -> Tensor:
        """[B, L, vocab] logits over WordPiece for every text position given the video.

        `text_ids` may contain [MASK]; used by masked-LM and zero-shot classification.
        """
        raise NotImplementedError


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
