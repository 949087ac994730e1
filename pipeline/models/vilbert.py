"""Two-stream co-attention model after ViLBERT (methods.md 3), with video clips as the regions.

* Text stream: the layers of a BERT checkpoint. Visual stream: its own width D_v over
  LN(Linear(F -> D_v)(feature) + temporal position), with a prepended IMG token whose feature is
  the mean of the (masked) clip features (methods.md 3.4; the reference computes it after
  masking). With `use_token_learner` and a `video_fmap` in the batch, each clip instead gives S
  TokenLearner v1.1 tokens (methods.md 4.2) from its h x w map: T*S + 1 visual tokens.
* Co-attention layers (methods.md 3.3) sit at `t_biattention_id` / `v_biattention_id`, with
  the layout of methods.md 3.2: for each pair (t_id, v_id), run text layers up to t_id and visual
  layers up to v_id (exclusive), then one Co-TRM; the remaining layers run after the last pair.
  The reference puts 6 Co-TRMs before text layers 6..11 of BERT-base, i.e. (L-k) plain TRM and
  then k x (Co-TRM -> TRM). The defaults keep that shape for a 6-layer text tower (MiniLM):
  text T0 T1 T2 -> Co0 -> T3 -> Co1 -> T4 -> Co2 -> T5, visual Co0 -> V0 -> Co1 -> V1 -> Co2 -> V2.
* Objectives (methods.md 3.5): masked LM; masked clips (15%; 90% zeroed, 10% kept) predict a
  soft visual-word distribution (KL), or, without a vocabulary, their own feature by NCE;
  alignment from pooled_t ⊙ pooled_v with a sentence of another video as negative (p = 0.5).

Legend: B batch, L text tokens (L+2 with [CLS]/[SEP]), T clips, S learned tokens per clip,
N_v = 1 + T*S visual tokens, F feature width, D_t / D_v stream widths, V visual words.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import BertConfig
from transformers.masking_utils import create_bidirectional_mask

from pipeline.encoders.tokenlearner import ScenicMlp, TokenLearnerV11
from pipeline.losses import (
    cross_entropy_or_zero,
    nce_with_pool_negatives,
    pairwise_ranking,
    soft_assignment,
    soft_target_kl,
)
from pipeline.models.base import Batch, VLConfig, VLPreTrainedModel, mask_tokens
from pipeline.models.layers import CoAttentionLayer, RunningFeatureNorm, TransformerBlock
from pipeline.models.settings import ViLBERTObjectiveSettings, ViLBERTSettings
from pipeline.models.text import TextTower


class ViLBERTConfig(VLConfig):
    """VLConfig + the fields of `ViLBERTSettings`."""

    model_type = "vlpipe-vilbert"
    settings_class = ViLBERTSettings

    def __init__(self, **kwargs) -> None:
        # transformers 5 turns config subclasses without their own __init__ into dataclasses
        # whose generated __init__ would bypass VLConfig's.
        super().__init__(**kwargs)


def _check_layout(t_ids: list[int], text_layers: int) -> None:
    """Co-TRMs sit before text layers 0..text_layers (the visual side is checked by the settings)."""
    if any(not 0 <= i <= text_layers for i in t_ids):
        raise ValueError(f"t_biattention_id {t_ids}: need ids in [0, {text_layers}]")


class ViLBERTForPretraining(VLPreTrainedModel):
    """Text stream (BERT layers) + visual stream + co-attention layers (methods.md 3)."""

    config_class = ViLBERTConfig

    def __init__(self, config: ViLBERTConfig) -> None:
        super().__init__(config)
        settings: ViLBERTSettings = config.settings()
        text_config = BertConfig(**config.text_config)
        _check_layout(settings.t_biattention_id, text_config.num_hidden_layers)
        vis = settings.visual
        d_t, d_v = text_config.hidden_size, vis.hidden
        eps, dropout = settings.layer_norm_eps, settings.hidden_dropout
        self.text = TextTower(
            text_config, config.cls_token_id, config.sep_token_id, config.pad_token_id
        )
        # Visual embeddings (methods.md 3.4): position 0 is the IMG token, clip t is t+1.
        self.feature_norm = (
            RunningFeatureNorm(config.feat_dim) if settings.normalize_features else None
        )
        self.clip_projection = nn.Linear(config.feat_dim, d_v)
        self.clip_positions = nn.Embedding(settings.max_clips + 1, d_v)
        self.visual_norm = nn.LayerNorm(d_v, eps=eps)
        self.visual_dropout = nn.Dropout(dropout)
        self.token_learner: TokenLearnerV11 | None = None
        self.token_slots: nn.Embedding | None = None
        if settings.use_token_learner:
            # scenic's v1.1 block (methods.md 4.2), the one the visual encoders use too.
            self.token_learner = TokenLearnerV11(
                config.feat_dim, settings.num_learned_tokens, settings.token_learner_bottleneck, 0.0
            )
            self.token_slots = nn.Embedding(settings.num_learned_tokens, d_v)  # which of S maps
        self.visual_layers = nn.ModuleList(
            TransformerBlock(d_v, vis.heads, vis.intermediate, dropout, eps)
            for _ in range(vis.layers)
        )
        self.co_layers = nn.ModuleList(
            CoAttentionLayer(
                d_t,
                d_v,
                settings.bi_hidden,
                settings.bi_heads,
                text_config.intermediate_size,
                vis.intermediate,
                dropout,
                eps,
                settings.add_zero_attn,
            )
            for _ in settings.t_biattention_id
        )
        # Heads (methods.md 3.5): MLM tied to the word embeddings (in the text tower);
        # BertImagePredictionHead to the V visual words (KL) or, without a vocabulary, back to
        # the F-dim feature (NCE).
        clip_out = config.num_visual_words if config.num_visual_words > 0 else config.feat_dim
        self.clip_head = nn.Sequential(
            nn.Linear(d_v, d_v), nn.GELU(), nn.LayerNorm(d_v, eps=eps), nn.Linear(d_v, clip_out)
        )
        self.text_pooler = nn.Linear(d_t, settings.bi_hidden)  # BertTextPooler (+ ReLU)
        self.visual_pooler = nn.Linear(d_v, settings.bi_hidden)  # BertImagePooler (+ ReLU)
        self.pooled_dropout = nn.Dropout(dropout)
        self.alignment_head = nn.Linear(settings.bi_hidden, 2)  # class 1 = aligned
        if config.num_visual_words > 0:
            # Faiss centroids [V, F] for the soft targets; saved with the weights.
            self.register_buffer("centroids", torch.zeros(config.num_visual_words, config.feat_dim))
        self.layout = (settings.t_biattention_id, settings.v_biattention_id)
        self.max_clips = settings.max_clips
        self.pooling = settings.pooling
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)  # generic + shared blocks (VLPreTrainedModel)
        if isinstance(module, ScenicMlp):
            module.reset_parameters()  # scenic's xavier init, after the generic Linear init

    def init_from_text_checkpoint(self, path: Path, centroids: np.ndarray | None) -> None:
        """BERT weights into the text stream; centroids [V, F] (the faiss visual vocabulary)
        enable the KL soft-target objective, without them the masked-clip objective is NCE."""
        self.text.load_checkpoint(path)
        if centroids is not None:
            self.centroids.copy_(torch.as_tensor(centroids, dtype=torch.float32))

    # --- streams ----------------------------------------------------------------------------

    def input_features(self, x: Tensor, zeroed_clips: Tensor | None = None) -> Tensor:
        """Clip features [B, T, F] or maps [B, T, h, w, F] as the stream takes them: standardised
        by `feature_norm` (when on), then zeroed at zeroed_clips Bool [B, T]. Zero after
        standardising is the mean clip, an input that says nothing (methods.md 3.5 zeroes raw
        region features, which are non-negative with unit-scale means; zeroing raw features of
        another scale would put the masked clips far outside the data)."""
        if self.feature_norm is not None:
            x = self.feature_norm(x)
        if zeroed_clips is not None:
            keep = ~zeroed_clips.reshape(*zeroed_clips.shape, *([1] * (x.dim() - 2)))
            x = x * keep.to(x.dtype)
        return x

    def embed_video(
        self,
        video_feats: Tensor,
        video_mask: Tensor,
        video_fmap: Tensor | None = None,
        zeroed_clips: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, int]:
        """feats [B, T, F], mask [B, T], optional fmap [B, T, h, w, F], zeroed_clips Bool [B, T]
        (masked-clip modelling: fed as zeros, see `input_features`) -> visual input [B, N_v, D_v],
        its mask [B, N_v] and S (tokens per clip; 1 without TokenLearner). In training mode the
        real, unzeroed clips first update the feature statistics."""
        batch, num_clips, feat_dim = video_feats.shape
        if num_clips > self.max_clips:
            raise ValueError(f"{num_clips} clips exceed max_clips {self.max_clips}")
        if self.feature_norm is not None and self.training:
            seen = video_mask if zeroed_clips is None else video_mask & ~zeroed_clips
            self.feature_norm.update(video_feats, seen)
        video_feats = self.input_features(video_feats, zeroed_clips)
        if video_fmap is not None:
            video_fmap = self.input_features(video_fmap, zeroed_clips)
        global_feat = masked_mean(video_feats, video_mask)  # [B, F], IMG token
        learned = self.token_learner is not None and video_fmap is not None
        if learned:
            if video_fmap.shape[:2] != video_feats.shape[:2] or video_fmap.shape[-1] != feat_dim:
                raise ValueError(
                    f"video_fmap {tuple(video_fmap.shape)} does not match video_feats "
                    f"{tuple(video_feats.shape)}"
                )
            height, width = video_fmap.shape[2:4]
            maps = video_fmap.reshape(batch * num_clips, height * width, feat_dim)  # [B*T, P, F]
            tokens = self.token_learner(maps)  # [B*T, S, F]
            per_clip = tokens.shape[1]
            clip_tokens = tokens.reshape(batch, num_clips * per_clip, feat_dim)  # [B, T*S, F]
        else:
            per_clip = 1
            clip_tokens = video_feats  # [B, T, F]
        x = self.clip_projection(torch.cat([global_feat[:, None], clip_tokens], 1))  # [B, N_v, D_v]
        clip_index = torch.arange(1, num_clips + 1, device=x.device).repeat_interleave(per_clip)
        positions = torch.cat([clip_index.new_zeros(1), clip_index])  # [N_v]
        x = x + self.clip_positions(positions)[None]
        if learned:
            slots = self.token_slots.weight.repeat(num_clips, 1)  # [T*S, D_v], slot s of clip t
            x = x + torch.cat([slots.new_zeros(1, slots.shape[1]), slots])[None]
        x = self.visual_dropout(self.visual_norm(x))
        real = torch.ones(batch, 1, dtype=torch.bool, device=x.device)
        mask = torch.cat([real, video_mask.repeat_interleave(per_clip, dim=1)], 1)  # [B, N_v]
        return x, mask, per_clip

    def run_streams(
        self,
        text_ids: Tensor,
        text_mask: Tensor,
        video_feats: Tensor,
        video_mask: Tensor,
        video_fmap: Tensor | None = None,
        zeroed_clips: Tensor | None = None,
    ) -> dict[str, Tensor | int]:
        """Both streams with the co-attention layout of methods.md 3.2 (zeroed_clips: see
        `embed_video`).

        Returns text_hidden [B, L+2, D_t], text_attention_mask [B, L+2], visual_hidden
        [B, N_v, D_v], visual_attention_mask [B, N_v], tokens_per_clip S.
        """
        ids, text_attention = self.text.frame(text_ids, text_mask)
        bert = self.text.bert
        text = bert.embeddings(input_ids=ids)  # [B, L+2, D_t]
        # The BERT layers take the mask in the form their attention implementation wants.
        bert_mask = create_bidirectional_mask(
            config=bert.config, inputs_embeds=text, attention_mask=text_attention
        )
        visual, visual_attention, per_clip = self.embed_video(
            video_feats, video_mask, video_fmap, zeroed_clips
        )
        text_layers, t_done, v_done = bert.encoder.layer, 0, 0

        def run_text(h: Tensor, start: int, stop: int) -> Tensor:
            for layer in text_layers[start:stop]:
                out = layer(h, bert_mask)
                h = out[0] if isinstance(out, tuple) else out  # transformers 4.x returns a tuple
            return h

        for co_layer, t_id, v_id in zip(self.co_layers, *self.layout, strict=True):
            text = run_text(text, t_done, t_id)
            for layer in self.visual_layers[v_done:v_id]:
                visual = layer(visual, visual_attention)
            t_done, v_done = t_id, v_id
            text, visual = co_layer(text, text_attention, visual, visual_attention)
        text = run_text(text, t_done, len(text_layers))
        for layer in self.visual_layers[v_done:]:
            visual = layer(visual, visual_attention)
        return {
            "text_hidden": text,
            "text_attention_mask": text_attention,
            "visual_hidden": visual,
            "visual_attention_mask": visual_attention,
            "tokens_per_clip": per_clip,
        }

    def forward(
        self,
        text_ids: Tensor,
        text_mask: Tensor,
        video_feats: Tensor,
        video_mask: Tensor,
        video_fmap: Tensor | None = None,
        mlm_positions: Tensor | None = None,
        masked_clips: Tensor | None = None,
        zeroed_clips: Tensor | None = None,
        **unused: Tensor,
    ) -> dict[str, Tensor]:
        """Streams + heads. Adds to `run_streams`: clip_hidden [B, T, D_v] (mean of each clip's
        S tokens), pooled [B, bi_hidden] (pooled_t ⊙ pooled_v), alignment_logits [B, 2];
        mlm_logits [M_t, vocab] at mlm_positions Bool [B, L]; clip_predictions [M, V or F] at
        masked_clips Bool [B, T] (row-major); zeroed_clips Bool [B, T] are fed as zeros."""
        fmap = video_fmap if self.token_learner is not None else None
        out = self.run_streams(text_ids, text_mask, video_feats, video_mask, fmap, zeroed_clips)
        text_h, visual_h = out["text_hidden"], out["visual_hidden"]
        batch, num_clips = video_mask.shape
        per_clip = out.pop("tokens_per_clip")
        clip_tokens = visual_h[:, 1:].reshape(batch, num_clips, per_clip, -1)  # [B, T, S, D_v]
        out["clip_hidden"] = clip_tokens.mean(2)  # [B, T, D_v]
        if self.pooling == "mean":  # over the real tokens of each stream
            text_in = masked_mean(text_h, out["text_attention_mask"])  # [B, D_t]
            visual_in = masked_mean(visual_h, out["visual_attention_mask"])  # [B, D_v]
        else:  # the reference: [CLS] and the IMG token
            text_in, visual_in = text_h[:, 0], visual_h[:, 0]
        pooled_t = F.relu(self.text_pooler(text_in))  # [B, bi]
        pooled_v = F.relu(self.visual_pooler(visual_in))  # [B, bi]
        out["pooled"] = pooled_t * pooled_v  # fusion "mul" (methods.md 3.5)
        out["alignment_logits"] = self.alignment_head(self.pooled_dropout(out["pooled"]))
        if mlm_positions is not None:
            chosen = text_h[:, 1:-1][mlm_positions]  # [M_t, D_t]; sentence position i is i+1
            out["mlm_logits"] = self.text.mlm_logits(chosen)
        if masked_clips is not None:
            out["clip_predictions"] = self.clip_head(out["clip_hidden"][masked_clips])
        return out

    # --- VLPreTrainedModel contract ---------------------------------------------------------

    def encode(self, batch: Batch) -> dict[str, Tensor]:
        """text [B, L, D_t], video [B, T, D_v] (per clip), pooled [B, bi_hidden]."""
        out = self(**batch)
        return {
            "text": out["text_hidden"][:, 1:-1],
            "video": out["clip_hidden"],
            "pooled": out["pooled"],
        }

    @property
    def encode_dims(self) -> dict[str, int]:
        settings = self.config.settings()
        return {
            "text": self.text.bert.config.hidden_size,
            "video": settings.visual.hidden,
            "pooled": settings.bi_hidden,
        }

    def alignment_logits(self, batch: Batch) -> Tensor:
        """[B] log-odds that text i and video i are aligned."""
        return log_odds(self(**batch)["alignment_logits"])

    def masked_text_logits(self, batch: Batch) -> Tensor:
        """[B, L, vocab] text-stream MLM logits given the video."""
        text_h = self(**batch)["text_hidden"][:, 1:-1]  # [B, L, D_t]
        return self.text.mlm_logits(text_h)

    def masked_slot_logits(self, batch: Batch, slots: Tensor) -> Tensor:
        """[B, vocab] `masked_text_logits` at text position `slots` [B] only."""
        return self._slot_logits(self(**batch)["text_hidden"], slots)

    def masked_slot_and_alignment(self, batch: Batch, slots: Tensor) -> tuple[Tensor, Tensor]:
        """([B, vocab] slot logits, [B] alignment log-odds) from one pass."""
        out = self(**batch)
        return self._slot_logits(out["text_hidden"], slots), log_odds(out["alignment_logits"])

    def _slot_logits(self, text_h: Tensor, slots: Tensor) -> Tensor:
        """text_h [B, L+2, D_t] (sentence position i is i+1) -> [B, vocab] MLM logits at `slots`."""
        rows = torch.arange(text_h.shape[0], device=text_h.device)
        return self.text.mlm_logits(text_h[rows, slots + 1])


def log_odds(alignment_logits: Tensor) -> Tensor:
    """[B, 2] (not aligned, aligned) logits -> [B] log-odds that the pair is aligned."""
    return alignment_logits[:, 1] - alignment_logits[:, 0]


def masked_mean(h: Tensor, mask: Tensor) -> Tensor:
    """h [B, N, D], mask Bool [B, N] -> mean of the real positions [B, D]."""
    weights = mask.to(h.dtype)[..., None]  # [B, N, 1]
    return (h * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def other_video_donors(video_ids: Tensor, eligible: Tensor, prob: float) -> tuple[Tensor, Tensor]:
    """Alignment negatives (methods.md 3.5, `random_cap`): with probability `prob` an eligible
    row gets the sentence of a random eligible row from another video (never its own video).

    video_ids [B], eligible Bool [B] -> (donor Long [B], the row whose sentence it would take;
    swapped Bool [B], the rows that get a negative). Rows with no possible donor get none.
    """
    batch = video_ids.shape[0]
    donors = (video_ids[:, None] != video_ids[None, :]) & eligible[None, :]  # [B, B]
    donor = torch.rand(batch, batch, device=video_ids.device).masked_fill(~donors, -1.0).argmax(1)
    swapped = (torch.rand(batch, device=video_ids.device) < prob) & eligible & donors.any(1)
    return donor, swapped


class ViLBERTObjective:
    """`w_text·L_mlm + w_video·L_visual + w_align·L_align` (methods.md 3.5; the reference sums
    them unweighted). As in the reference, the masked terms are computed on every row, the
    misaligned ones included, unless negatives are paired.

    `paired_negatives` (default; issue 9): a negative is an extra row beside its positive, the
    row again with another video's sentence (`negative_swaps=text`, the reference's random_cap)
    or clips (`video`), masked alike, so the pair differs only in what was swapped; the extra
    rows carry the alignment loss only (`paired_negatives=False`: the reference, the row's own
    sentence is replaced). `align_loss=pairwise` ranks each positive over its negative
    (-log softmax of the two log-odds) instead of labelling rows one by one. Clip features are
    standardised inside the model (`ViLBERTSettings.normalize_features`) and masked clips zeroed
    after that (`input_features`).

    Measured on the demo (issue 9, seed 0, held-out matching at step 150 of 150): the reference
    layout stayed at the share of positives (train loss 0.637 = the entropy of 2/3, i.e. "always
    aligned") and 44-48 % matching with pairs, reference negatives, mean pooling or lr 1e-4;
    pairwise + `add_zero_attn` moved (held-out loss 0.665, 56 % matching), swapping clips
    instead of sentences did not. The masked words do use the video (video dependence 0.4-0.7
    nats in all of them): the co-attention carries the clips, the alignment head is what learns
    slowly. A likely reason: a Co-TRM query attends to the other stream only, so when a
    segment's 2-3 clips all look alike the softmax spreads evenly whether or not they match the
    sentence, and the match score is normalised away; `add_zero_attn` lets it attend to nothing.

    Why pairwise then stopped short (issue 9, demo, 300 steps, held-out matching 80.6 ± 6.6 % over
    3 seeds): a sentence-swapped pair shares its video, so the ranking loss is blind to any
    per-video offset of the score, and evaluation compares videos for one sentence. With 30 %
    masking, on seed 0's 37 held-out segments x 37 videos, the video's mean score carried 65 % of
    the score variance (74.8 % matching; 90.1 % with the offset removed). Per-row `bce` pins each video's positive
    and negative around 0: the offset's share fell to 21 % (89.6 % matching on the same pairs).
    BCE with BERT's 15 % masking stayed near chance in 300 steps (60 %). With 30 % of words and
    clips masked it learned: 92.8 ± 1.4 % matching over 3 seeds (the demo's settings). Clip swaps
    (`negative_swaps=video`) did not learn to match in 300 steps (48.6 % at step 250).
    """

    def __init__(self, settings: ViLBERTObjectiveSettings | None = None) -> None:
        self.settings = settings or ViLBERTObjectiveSettings()
        self.settings.validate()  # also when built in code rather than from a config

    def __call__(self, model: VLPreTrainedModel, batch: Batch) -> dict[str, Tensor]:
        core = getattr(model, "module", model)  # config and buffers of a DDP-wrapped model
        cfg, s = core.config, self.settings
        video_mask = batch["video_mask"]
        rows = torch.arange(video_mask.shape[0], device=video_mask.device)
        eligible = batch["text_mask"].any(1) & video_mask.any(1)  # [B]
        donor, swapped = other_video_donors(batch["video_ids"], eligible, s.negative_fraction)
        # Row r shows the sentence of row text_src[r] with the video of row video_src[r].
        extra = swapped.nonzero(as_tuple=True)[0]  # [E] rows given a negative
        if s.paired_negatives and s.negative_swaps == "video":  # this sentence, other clips
            text_src, video_src = torch.cat([rows, extra]), torch.cat([rows, donor[extra]])
        elif s.paired_negatives:  # this video, another video's sentence
            text_src, video_src = torch.cat([rows, donor[extra]]), torch.cat([rows, extra])
        else:
            text_src, video_src = torch.where(swapped, donor, rows), rows
        negative = text_src != video_src  # [R]
        extra_row = torch.zeros(len(text_src), dtype=torch.bool, device=rows.device)
        extra_row[len(rows) :] = True  # paired negatives: alignment loss only
        # Masks are drawn per batch row, then copied: a pair shows one masked sentence and one
        # set of zeroed clips, so the two differ only in what was swapped.
        masked_ids, text_labels = mask_tokens(
            batch["text_ids"],
            batch["text_mask"],
            cfg.mask_token_id,
            core.text.vocab_size,
            s.mask_prob,
        )
        text_mask = batch["text_mask"][text_src]
        masked_ids, text_labels = masked_ids[text_src], text_labels[text_src]
        text_labels[extra_row] = -100
        # mask_tokens only chooses the clips here; the 90% / 10% split follows random_region.
        _, clip_labels = mask_tokens(
            torch.zeros_like(video_mask, dtype=torch.long), video_mask, 0, 1, s.clip_mask_prob
        )
        chosen = clip_labels >= 0  # [B, T]
        zeroed = chosen & (torch.rand(chosen.shape, device=chosen.device) < s.clip_zero_prob)
        # Only the positives predict the masked clips.
        video_feats, video_mask = batch["video_feats"][video_src], video_mask[video_src]
        chosen, zeroed = chosen[video_src] & ~extra_row[:, None], zeroed[video_src]
        fmap = batch.get("video_fmap")
        out = model(
            text_ids=masked_ids,
            text_mask=text_mask,
            video_feats=video_feats,
            video_mask=video_mask,
            video_fmap=None if fmap is None else fmap[video_src],
            mlm_positions=text_labels >= 0,
            masked_clips=chosen,
            zeroed_clips=zeroed,  # the model zeroes them after standardising (input_features)
        )
        loss_mlm = cross_entropy_or_zero(out["mlm_logits"], text_labels[text_labels >= 0])
        predictions = out["clip_predictions"].float()  # [M, V] or [M, F]
        if cfg.num_visual_words > 0:
            targets = soft_assignment(
                video_feats[chosen], core.centroids, s.visual_target_temperature, relative=True
            )  # [M, V], from the unmasked (raw: the centroids' space) features
            loss_visual = soft_target_kl(predictions, targets)
        else:
            pool = video_mask & ~extra_row[:, None]  # a paired copy is no negative of itself
            valid_index = torch.cumsum(pool.flatten().long(), 0) - 1  # [R*T]
            # Targets in the standardised space: raw random-init S3D features all share one
            # dominant direction, so their cosines are ~1 and tell clips apart by ~1e-3.
            loss_visual = nce_with_pool_negatives(
                predictions,
                core.input_features(video_feats)[pool].float(),  # [N, F], every clip's own
                valid_index[chosen.flatten()],
                s.nce_temperature,
                s.nce_max_negatives,
            )
        if s.align_loss == "pairwise":
            # Log-odds of each paired negative (rows B..R-1) against its positive (row `extra`).
            logits = out["alignment_logits"].float()
            score = logits[:, 1] - logits[:, 0]  # [R]
            loss_align, accuracy = pairwise_ranking(score[extra], score[len(rows) :])
        else:
            eligible = eligible[video_src]  # [R]
            logits = out["alignment_logits"][eligible].float()  # [R', 2]
            aligned = (~negative[eligible]).long()  # [R']
            loss_align = cross_entropy_or_zero(logits, aligned)
            if logits.shape[0]:
                accuracy = (logits.argmax(1) == aligned).float().mean()
            else:
                accuracy = torch.tensor(float("nan"), device=logits.device)
        loss = s.w_text * loss_mlm + s.w_video * loss_visual + s.w_align * loss_align
        return {
            "loss": loss,
            "text": loss_mlm.detach(),
            "video": loss_visual.detach(),
            "align": loss_align.detach(),
            "align_acc": accuracy,
        }
