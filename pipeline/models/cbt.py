"""CBT: Contrastive Bidirectional Transformer (methods.md 2; no official code exists).

Three parts, trained with `w_text·L_bert + w_video·L_visual + w_align·L_cross` (methods.md 2.1, where
the weights are called w_bert, w_visual, w_cross):

* text tower (`pipeline.models.text.TextTower`, L_bert). It never sees the video, so
  `masked_text_logits` is text-only by design;
* visual transformer over continuous S3D clip features, trained by masked-clip NCE (L_visual):
  masked clips are replaced by a learned vector and each output ê_t must pick out the embedding
  e_t = f_enc(x_t) of its own clip among the other clips of the batch;
* a shallow cross-modal transformer over [text outputs ; visual outputs] whose first output
  token gives the scalar MI(x, y) (L_cross, contrastive over the batch's sentences).

Design choice, target embedding (methods.md 2.1): e_t is the model's own input projection
`clip_projection` (Linear F -> D_v) of the *unmasked* feature. The paper defines the context
model's inputs and the NCE targets as the same embedding e = f_enc(x); with a frozen S3D the only
trainable part of f_enc is this projection, so no separate target head is used. The contrastive
form rules out the collapse a shared projection would allow under a regression loss; the
prediction side has its own head (`context_head`, like CPC's W_k) and both sides are compared
by cosine / temperature.

Legend: B batch, L text tokens (L+2 with [CLS]/[SEP]), T clips, F feature width, D_t text width,
D_v visual width, D_c cross-modal width, C candidate sentences per video, V WordPiece vocab.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from transformers import BertConfig
from transformers import initialization as init

from pipeline.losses import cross_entropy_or_zero, nce_loss, nce_with_pool_negatives
from pipeline.models.base import Batch, VLConfig, VLPreTrainedModel, mask_tokens
from pipeline.models.layers import MLP, RunningFeatureNorm, TransformerBlock
from pipeline.models.settings import CBTObjectiveSettings, CBTSettings
from pipeline.models.text import TextTower


class CBTConfig(VLConfig):
    """VLConfig + the fields of `CBTSettings`."""

    model_type = "vlpipe-cbt"
    settings_class = CBTSettings

    def __init__(self, **kwargs) -> None:
        # transformers 5 turns config subclasses without their own __init__ into dataclasses
        # whose generated __init__ would bypass VLConfig's.
        super().__init__(**kwargs)


class CBTForPretraining(VLPreTrainedModel):
    """BERT text tower + visual transformer + shallow cross-modal transformer (methods.md 2)."""

    config_class = CBTConfig

    masked_lm_sees_video = False  # the text tower never sees the video (methods.md 2.1)

    def __init__(self, config: CBTConfig) -> None:
        super().__init__(config)
        settings: CBTSettings = config.settings()
        text_config = BertConfig(**config.text_config)
        vis, cross = settings.visual, settings.cross
        d_t, d_v, d_c = text_config.hidden_size, vis.hidden, cross.hidden
        eps, dropout = settings.layer_norm_eps, settings.hidden_dropout
        self.text = TextTower(
            text_config, config.cls_token_id, config.sep_token_id, config.pad_token_id
        )
        # Visual transformer g_context over e = f_enc(x) (methods.md 2.1).
        self.feature_norm = (
            RunningFeatureNorm(config.feat_dim) if settings.normalize_features else None
        )
        self.clip_projection = nn.Linear(config.feat_dim, d_v)  # f_enc: also the NCE target
        self.clip_mask_embedding = nn.Parameter(torch.zeros(d_v))
        self.clip_positions = nn.Embedding(settings.max_clips, d_v)
        self.visual_norm = nn.LayerNorm(d_v, eps=eps)
        self.visual_dropout = nn.Dropout(dropout)
        self.visual_layers = nn.ModuleList(
            TransformerBlock(d_v, vis.heads, vis.intermediate, dropout, eps)
            for _ in range(vis.layers)
        )
        self.context_head = nn.Linear(d_v, d_v)  # ê_t = W h_t, compared with e_t
        # Cross-modal transformer over h = {text outputs ; visual outputs} (methods.md 2.1).
        self.cross_text_projection = nn.Linear(d_t, d_c)
        self.cross_video_projection = nn.Linear(d_v, d_c)
        self.cross_modality = nn.Embedding(2, d_c)  # 0 text, 1 video
        self.cross_norm = nn.LayerNorm(d_c, eps=eps)
        self.cross_layers = nn.ModuleList(
            TransformerBlock(d_c, cross.heads, cross.intermediate, dropout, eps)
            for _ in range(cross.layers)
        )
        self.mi_head = MLP(d_c, d_c, 1)  # MI(x, y) from the first output token
        self.max_clips = settings.max_clips
        self.post_init()
        self.freeze_parameters()

    def freeze_parameters(self) -> None:
        """The text tower, when `freeze_text` (the paper's setting, methods.md 2.1)."""
        if self.config.settings().freeze_text:
            self.text.freeze()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)  # generic + shared blocks (VLPreTrainedModel)
        if isinstance(module, CBTForPretraining):
            init.normal_(module.clip_mask_embedding, std=self.config.initializer_range)

    def init_from_text_checkpoint(self, path: Path, centroids: np.ndarray | None) -> None:
        """BERT weights into the text tower; CBT needs no visual vocabulary (methods.md 2.1)."""
        del centroids
        self.text.load_checkpoint(path)

    # --- towers -----------------------------------------------------------------------------

    def normalize_features(self, video_feats: Tensor, video_mask: Tensor) -> Tensor:
        """feats [B, T, F] -> standardised [B, T, F] (identity when `normalize_features` is off);
        in training mode the real clips (mask [B, T]) first update the running statistics."""
        if self.feature_norm is None:
            return video_feats
        if self.training:
            self.feature_norm.update(video_feats, video_mask)
        return self.feature_norm(video_feats)

    def encode_video(
        self, video_feats: Tensor, video_mask: Tensor, masked_clips: Tensor | None = None
    ) -> Tensor:
        """feats [B, T, F] (after `normalize_features`), mask [B, T], masked_clips Bool [B, T]
        (replaced by the learned mask vector) -> visual transformer outputs [B, T, D_v]."""
        num_clips = video_feats.shape[1]
        if num_clips > self.max_clips:
            raise ValueError(f"{num_clips} clips exceed max_clips {self.max_clips}")
        x = self.clip_projection(video_feats)  # [B, T, D_v]
        if masked_clips is not None:
            x = torch.where(masked_clips[..., None], self.clip_mask_embedding.to(x.dtype), x)
        positions = torch.arange(num_clips, device=x.device)
        x = self.visual_dropout(self.visual_norm(x + self.clip_positions(positions)[None]))
        for layer in self.visual_layers:
            x = layer(x, video_mask)
        return x

    def cross_inputs(self, text_h: Tensor, video_h: Tensor) -> tuple[Tensor, Tensor]:
        """Both towers' outputs at the common width D_c, tagged by modality: text_h [B, L+2, D_t]
        -> [B, L+2, D_c], video_h [B, T, D_v] -> [B, T, D_c]. Done once per batch, before the
        rows are paired."""
        text_c = self.cross_text_projection(text_h) + self.cross_modality.weight[0]
        video_c = self.cross_video_projection(video_h) + self.cross_modality.weight[1]
        return text_c, video_c

    def cross_modal(
        self, text_c: Tensor, text_mask: Tensor, video_c: Tensor, video_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Pairs text_c [P, L+2, D_c] with video_c [P, T, D_c] (masks [P, ·]) -> (MI [P],
        first output token [P, D_c]). Text comes first, so the first token is BERT's [CLS]."""
        h = self.cross_norm(torch.cat([text_c, video_c], dim=1))  # [P, L+2+T, D_c]
        mask = torch.cat([text_mask, video_mask], dim=1)  # [P, L+2+T]
        for layer in self.cross_layers:
            h = layer(h, mask)
        first = h[:, 0]  # [P, D_c]
        return self.mi_head(first).squeeze(-1), first

    # --- one call for training and inference (objectives call the model, so DDP hooks run) ---

    def forward(
        self,
        text_ids: Tensor,
        text_mask: Tensor,
        video_feats: Tensor,
        video_mask: Tensor,
        masked_clips: Tensor | None = None,
        mlm_positions: Tensor | None = None,
        cross_pairs: Tensor | None = None,
        **unused: Tensor,
    ) -> dict[str, Tensor]:
        """Runs both towers once and the requested heads.

        Always: text_hidden [B, L+2, D_t], text_attention_mask [B, L+2], video_hidden [B, T, D_v].
        mlm_positions Bool [B, L] -> mlm_logits [M_t, V] at those sentence positions.
        masked_clips Bool [B, T] -> clip_predictions ê [M_v, D_v] at masked clips (row-major) and
          clip_targets e [N, D_v] for every valid clip (row-major), unmasked.
        cross_pairs Long [B, C] (text row paired with video row i; -1 = none) -> cross_scores
          [B, C] (0 where -1). Without cross_pairs: alignment [B] and pooled [B, D_c] for the
          diagonal pairs (each video with its own sentence).
        """
        text_h, text_attention = self.text(text_ids, text_mask)
        video_feats = self.normalize_features(video_feats, video_mask)
        video_h = self.encode_video(video_feats, video_mask, masked_clips)
        out = {
            "text_hidden": text_h,
            "text_attention_mask": text_attention,
            "video_hidden": video_h,
        }
        if mlm_positions is not None:
            chosen = text_h[:, 1:-1][mlm_positions]  # [M_t, D_t]; sentence position i is i+1
            out["mlm_logits"] = self.text.mlm_logits(chosen)
        if masked_clips is not None:
            out["clip_predictions"] = self.context_head(video_h[masked_clips])  # [M_v, D_v]
            out["clip_targets"] = self.clip_projection(video_feats[video_mask])  # [N, D_v]
        text_c, video_c = self.cross_inputs(text_h, video_h)
        if cross_pairs is None:
            scores, pooled = self.cross_modal(text_c, text_attention, video_c, video_mask)
            out["alignment"], out["pooled"] = scores, pooled
        else:
            valid = cross_pairs >= 0  # [B, C]
            video_rows = torch.arange(cross_pairs.shape[0], device=cross_pairs.device)
            video_rows = video_rows[:, None].expand_as(cross_pairs)[valid]  # [P]
            text_rows = cross_pairs[valid]  # [P]
            pair_scores, _ = self.cross_modal(
                text_c[text_rows],  # [P, L+2, D_c]
                text_attention[text_rows],
                video_c[video_rows],  # [P, T, D_c]
                video_mask[video_rows],
            )  # [P]
            scores = torch.zeros(
                cross_pairs.shape, dtype=pair_scores.dtype, device=pair_scores.device
            )
            out["cross_scores"] = scores.masked_scatter(valid, pair_scores)  # [B, C]
        return out

    # --- VLPreTrainedModel contract ---------------------------------------------------------

    def encode(self, batch: Batch) -> dict[str, Tensor]:
        """text [B, L, D_t] (BERT, text only), video [B, T, D_v], pooled [B, D_c] (cross-modal
        first token of each video with its own sentence)."""
        out = self(**batch)
        return {
            "text": out["text_hidden"][:, 1:-1],
            "video": out["video_hidden"],
            "pooled": out["pooled"],
        }

    @property
    def encode_dims(self) -> dict[str, int]:
        settings = self.config.settings()
        return {
            "text": self.text.bert.config.hidden_size,
            "video": settings.visual.hidden,
            "pooled": settings.cross.hidden,
        }

    def alignment_logits(self, batch: Batch) -> Tensor:
        """[B] MI(x_i, y_i) score of each video with its own sentence."""
        return self(**batch)["alignment"]

    def masked_text_logits(self, batch: Batch) -> Tensor:
        """[B, L, V] BERT MLM logits. CBT's text tower never sees the video (methods.md 2.1),
        so these depend on the text alone."""
        text_h, _ = self.text(batch["text_ids"], batch["text_mask"])
        return self.text.mlm_logits(text_h[:, 1:-1])


def sample_cross_pairs(video_ids: Tensor, eligible: Tensor, max_negatives: int = 0) -> Tensor:
    """Candidate sentences per video for L_cross: column 0 its own, then sentences of *other*
    videos (methods.md 2.1: negatives are ASR sentences from other videos in the minibatch).

    video_ids Long [B], eligible Bool [B] (rows with both text and clips). Returns Long [B, 1+K]
    of text rows, -1 where empty; K = B-1, or `max_negatives` sampled with the torch RNG when > 0.
    Ineligible rows get -1 everywhere.
    """
    batch = video_ids.shape[0]
    other_video = video_ids[:, None] != video_ids[None, :]  # [B, B]
    allowed = other_video & eligible[:, None] & eligible[None, :]  # [B, B]
    k = batch - 1 if max_negatives <= 0 else min(max_negatives, batch - 1)
    # Random scores, disallowed at -1, so top-k picks k random allowed columns when available.
    scores = torch.rand(batch, batch, device=video_ids.device).masked_fill(~allowed, -1.0)
    top_scores, top_rows = scores.topk(k, dim=1)  # [B, K]
    negatives = torch.where(top_scores >= 0, top_rows, -1)  # [B, K]
    own = torch.where(eligible, torch.arange(batch, device=video_ids.device), -1)  # [B]
    return torch.cat([own[:, None], negatives], dim=1)  # [B, 1+K]


class CBTObjective:
    """`w_text·L_bert + w_video·L_visual + w_align·L_cross` (methods.md 2.1; the paper's
    w_bert / w_visual / w_cross).

    Loss weights are not given by the paper (methods.md 9); the paper kept BERT frozen, which is
    the default here (`CBTSettings.freeze_text`, w_text = 0). Measured on the demo (issue 9):
    training the text tower with L_bert at the demo's lr (5e-4; MiniLM ships no MLM head, so the
    head starts random and its gradients into BERT were ~100x those of L_cross) left held-out
    matching at 66 % and zero-shot verbs at chance after 300 steps; with the tower frozen the
    same run reached 93 %. With w_text = 0 no word is masked, so L_cross sees whole sentences.
    Masks and negatives are drawn with the torch global RNG. One forward pass serves all three
    terms: L_cross scores the masked clips, as ViLBERT does.
    """

    def __init__(self, settings: CBTObjectiveSettings | None = None) -> None:
        self.settings = settings or CBTObjectiveSettings()
        self.settings.validate()  # also when built in code rather than from a config

    def __call__(self, model: VLPreTrainedModel, batch: Batch) -> dict[str, Tensor]:
        core = getattr(model, "module", model)  # config of a DDP-wrapped model
        cfg, s = core.config, self.settings
        text_ids, text_mask = batch["text_ids"], batch["text_mask"]
        video_mask = batch["video_mask"]
        masked_ids, text_labels = text_ids, torch.full_like(text_ids, -100)
        if s.w_text > 0:
            masked_ids, text_labels = mask_tokens(
                text_ids, text_mask, cfg.mask_token_id, core.text.vocab_size, s.mask_prob
            )
        # mask_tokens only chooses here (its 80/10/10 ids are discarded): every chosen clip is
        # replaced by the learned mask vector.
        _, clip_labels = mask_tokens(
            torch.zeros_like(video_mask, dtype=torch.long), video_mask, 0, 1, s.clip_mask_prob
        )
        masked_clips = clip_labels >= 0  # [B, T]
        eligible = text_mask.any(1) & video_mask.any(1)  # [B]
        pairs = sample_cross_pairs(batch["video_ids"], eligible, s.cross_max_negatives)
        out = model(
            text_ids=masked_ids,
            text_mask=text_mask,
            video_feats=batch["video_feats"],
            video_mask=video_mask,
            masked_clips=masked_clips,
            mlm_positions=text_labels >= 0,
            cross_pairs=pairs,
        )
        loss_bert = cross_entropy_or_zero(out["mlm_logits"], text_labels[text_labels >= 0])
        # Position of each masked clip in the row-major list of valid clips (its own target).
        valid_index = torch.cumsum(video_mask.flatten().long(), 0) - 1  # [B*T]
        positive_index = valid_index[masked_clips.flatten()]  # [M_v]
        loss_visual = nce_with_pool_negatives(
            out["clip_predictions"].float(),
            out["clip_targets"].float(),
            positive_index,
            s.nce_temperature,
            s.nce_max_negatives,
        )
        scores = out["cross_scores"].float()  # [B, 1+K]
        anchors = (pairs[:, 0] >= 0) & (pairs[:, 1:] >= 0).any(1)  # own sentence + a negative
        loss_cross = nce_loss(scores[anchors, 0], scores[anchors, 1:], pairs[anchors, 1:] >= 0)
        loss = s.w_text * loss_bert + s.w_video * loss_visual + s.w_align * loss_cross
        return {
            "loss": loss,
            "text": loss_bert.detach(),
            "video": loss_visual.detach(),
            "align": loss_cross.detach(),
        }
