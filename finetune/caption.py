"""Video captioning (YouCook2 segments, MSR-VTT videos): a BERT decoder over the backbone's video,
or the backbone itself writing (`head.decoder=masked_lm`, `MaskedLMCaptioner`).

The backbone encodes the clips (`encode(batch)["video"]`, [B, T, D_v]); a Linear + LayerNorm
projects them to the decoder width (LayerNorm because output scales differ across backbones, as
in the classification head). The decoder is HuggingFace's `BertLMHeadModel(is_decoder=True,
add_cross_attention=True)`: causal self-attention over the caption, cross-attention to the
projected video, BERT's MLM head tied to the word embeddings. Its embeddings, self-attention and
feed-forward layers (the first `decoder_layers`) and its MLM head start as copies of the
backbone's text tower (VideoBERT `model.bert`, CBT and the two-stream model `model.text.bert`;
a separate copy, as BERT2BERT initialises a decoder from BERT), so `init=text / random` change
the decoder's start too; cross-attention starts fresh.

Deliberate deviation from VideoBERT's captioning protocol (methods.md 1.7): there, frozen
VideoBERT features (video outputs and the masked slots of a fill-in template, averaged and
concatenated, + S3D) feed the transformer encoder-decoder of Zhou et al. 2018. Here, for any
backbone, the decoder attends to every clip's output and the backbone is fine-tuned with it
(`backbone_lr_mult` scales its learning rate), as issue 10 specifies. With `use_transcript` the
ASR sentences overlapping the segment are the backbone's text input and the decoder attends to
[video ; transcript] outputs, each with its own projection. With `prompt` (VideoBERT's fill-in
template of methods.md 1.7) the template is that text instead: its [MASK] slots are filled from
the video by the pretrained model, and the decoder attends to every template output (the paper
averages the slot outputs and the video outputs and concatenates the two means; here the
cross-attention pools them, as it pools the clips).

Training is teacher forcing: input `[CLS] w1 .. wn`, target `w1 .. wn [SEP]`; padding has label
-100 and never enters the loss (UniVL pads with 0 but ignores -1, so its padding is in its loss:
methods.md 10). Every reference sentence is a training example. Decoding is HF `generate`
(greedy or beam search, `max_length` new tokens, optional no-repeat n-gram). Evaluation decodes
each video / segment once and scores it against all its references with
`finetune.metrics.caption_scores` (BLEU-1..4, METEOR, ROUGE-L, CIDEr, x100).

transformers 5.23: `BertLMHeadModel.generate(encoder_hidden_states=...)` fails on the default
cache ("'DynamicCache' object has no attribute 'is_updated'"); an explicit
`EncoderDecoderCache(DynamicCache(), DynamicCache())` works, and generate expands the video
states across beams itself, so they are passed once per video (methods.md 10; pinned by
tests/test_caption.py).

Legend: B videos / segments, T clips, L transcript (or prompt) tokens, M = T (+ L) memory rows,
N caption tokens, D decoder width, V WordPiece vocabulary.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import tarfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import (
    BertConfig,
    BertLMHeadModel,
    BertModel,
    GenerationConfig,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import CausalLMOutput

from finetune.metrics import caption_scores
from finetune.task import Example, FinetuneTask
from pipeline.config import ConfigError
from pipeline.finetune_config import CaptionSettings, FinetuneConfig
from pipeline.models import resolve_model_dir
from pipeline.models.base import VLPreTrainedModel
from pipeline.shards import shard_urls

log = logging.getLogger("vlpipe.finetune")


def text_tower(backbone: VLPreTrainedModel) -> tuple[BertModel | None, dict[str, Tensor]]:
    """The backbone's BERT and its MLM head as `cls.predictions.*` weights (transform, bias).

    Two layouts exist: a `TextTower` at `backbone.text` (CBT, two-stream: `TiedMaskedLMHead`
    dense / norm / bias) and one BERT at `backbone.bert` (VideoBERT: `text_head_transform`,
    `text_head_bias`). (None, {}) for a model with neither."""
    tower = getattr(backbone, "text", None)
    if isinstance(getattr(tower, "bert", None), BertModel) and hasattr(tower, "mlm_head"):
        head = tower.mlm_head.state_dict()
        names = {"dense.": "transform.dense.", "norm.": "transform.LayerNorm.", "bias": "bias"}
        renamed = {}
        for key, value in head.items():
            old = next(k for k in names if key.startswith(k))
            renamed[names[old] + key[len(old) :]] = value
        return tower.bert, renamed
    bert = getattr(backbone, "bert", None)
    if isinstance(bert, BertModel) and hasattr(backbone, "text_head_transform"):
        head = {f"transform.{k}": v for k, v in backbone.text_head_transform.state_dict().items()}
        return bert, {**head, "bias": backbone.text_head_bias.detach()}
    return None, {}


def tied_keys(module: nn.Module) -> dict[str, str]:
    """{key: key it shares storage with} in `module.state_dict()` (BERT's tied decoder)."""
    first: dict[tuple[int, tuple[int, ...]], str] = {}
    tied = {}
    for key, value in module.state_dict(keep_vars=True).items():
        ident = (value.data_ptr(), tuple(value.shape))
        if ident in first:
            tied[key] = first[ident]
        else:
            first[ident] = key
    return tied


class Captioner(nn.Module):
    """What both caption heads share: the backbone's special ids and the `generate` settings."""

    def __init__(self, backbone: VLPreTrainedModel) -> None:
        super().__init__()
        self.bos_id = backbone.config.cls_token_id
        self.eos_id = backbone.config.sep_token_id
        self.pad_id = backbone.config.pad_token_id

    def generation_config(self, settings: CaptionSettings) -> GenerationConfig:
        return GenerationConfig(
            max_new_tokens=settings.max_length,
            num_beams=settings.num_beams,
            no_repeat_ngram_size=settings.no_repeat_ngram_size,
            do_sample=False,
            bos_token_id=self.bos_id,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
        )


class CaptionHead(Captioner):
    """Video projection (+ transcript projection) and a cross-attending BERT decoder.

    head(backbone, batch) -> {"logits": [B, N-1, V]} for `caption_ids` [B, N] (teacher forcing);
    head.generate(backbone, batch, config) -> generated ids [B, <= max_new_tokens].
    """

    def __init__(
        self,
        backbone: VLPreTrainedModel,
        decoder_layers: int = 0,
        use_transcript: bool = False,
    ) -> None:
        super().__init__(backbone)
        bert, mlm_head = text_tower(backbone)
        config = BertConfig.from_dict(
            bert.config.to_dict() if bert is not None else dict(backbone.config.text_config)
        )
        tower_layers = config.num_hidden_layers
        config.num_hidden_layers = decoder_layers or tower_layers
        config.is_decoder = True
        config.add_cross_attention = True
        config.tie_word_embeddings = True  # BERT's MLM decoder is the word-embedding matrix
        width, eps = config.hidden_size, config.layer_norm_eps
        dims = backbone.encode_dims
        self.video_proj = nn.Sequential(nn.Linear(dims["video"], width), nn.LayerNorm(width, eps))
        self.text_proj = (
            nn.Sequential(nn.Linear(dims["text"], width), nn.LayerNorm(width, eps))
            if use_transcript
            else None
        )
        self.decoder = BertLMHeadModel(config)
        # state_dict without the tied copies (safetensors refuses shared storage); loading puts
        # them back from their sources, so strict loads of saved heads and checkpoints work.
        tied = tied_keys(self.decoder)

        def drop_tied(module: nn.Module, state: dict, prefix: str, metadata: Any) -> None:
            for key in tied:
                state.pop(prefix + key, None)

        def restore_tied(module: nn.Module, state: dict, prefix: str, *args: Any) -> None:
            for key, source in tied.items():
                if prefix + key not in state and prefix + source in state:
                    state[prefix + key] = state[prefix + source]

        self.decoder.register_state_dict_post_hook(drop_tied)
        self.decoder.register_load_state_dict_pre_hook(restore_tied)
        if bert is None:
            log.warning("%s has no BERT text tower: the caption decoder starts random", backbone)
        else:
            self._copy_text_tower(bert, mlm_head)

    @torch.no_grad()
    def _copy_text_tower(self, bert: BertModel, mlm_head: dict[str, Tensor]) -> None:
        """Embeddings, the first layers' self-attention and feed-forward, the MLM head."""
        layers = self.decoder.config.num_hidden_layers
        state = {}
        for key, value in bert.state_dict().items():
            parts = key.split(".")
            if parts[0] == "pooler" or (
                parts[:2] == ["encoder", "layer"] and int(parts[2]) >= layers
            ):
                continue
            state[key] = value
        missing, unexpected = self.decoder.bert.load_state_dict(state, strict=False)
        tower_layers = bert.config.num_hidden_layers

        def new_here(key: str) -> bool:  # cross-attention, and layers the tower does not have
            parts = key.split(".")
            extra_layer = parts[:2] == ["encoder", "layer"] and int(parts[2]) >= tower_layers
            return ".crossattention." in key or extra_layer

        unfit = unexpected + [k for k in missing if not new_here(k)]
        if unfit:
            raise ValueError(f"the text tower does not fit the caption decoder: {unfit[:5]}")
        self.decoder.cls.predictions.load_state_dict(mlm_head, strict=False)

    def memory(self, backbone: VLPreTrainedModel, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """What the decoder attends to: states [B, M, D] and mask Long [B, M]."""
        encoded = backbone.encode(batch)
        states, masks = [self.video_proj(encoded["video"])], [batch["video_mask"]]
        if self.text_proj is not None:
            states.append(self.text_proj(encoded["text"]))
            masks.append(batch["text_mask"])
        mask = torch.cat(masks, 1).clone()
        # A row with nothing to attend to (blind, no transcript) attends to its first slot, an
        # input-independent state, rather than to an all-masked softmax (NaN in some kernels).
        mask[~mask.any(1), 0] = True
        return torch.cat(states, 1), mask.long()

    def forward(self, backbone: VLPreTrainedModel, batch: dict[str, Any]) -> dict[str, Tensor]:
        states, mask = self.memory(backbone, batch)
        out = self.decoder(
            input_ids=batch["caption_ids"][:, :-1],
            attention_mask=batch["caption_mask"][:, :-1].long(),
            encoder_hidden_states=states,
            encoder_attention_mask=mask,
            use_cache=False,
        )
        return {"logits": out.logits}  # [B, N-1, V]: position i predicts caption token i+1

    def generate(
        self,
        backbone: VLPreTrainedModel,
        batch: dict[str, Any],
        config: GenerationConfig,
        use_cache: bool = True,
    ) -> Tensor:
        """Caption ids [B, <= max_new_tokens] after [CLS] (ending in [SEP], then padding)."""
        states, mask = self.memory(backbone, batch)
        start = torch.full((states.shape[0], 1), self.bos_id, device=states.device)
        config = copy.deepcopy(config)
        config.use_cache = use_cache
        extra: dict[str, Any] = {}
        if use_cache:  # the transformers 5.23 workaround (module doc)
            from transformers.cache_utils import DynamicCache, EncoderDecoderCache

            extra["past_key_values"] = EncoderDecoderCache(DynamicCache(), DynamicCache())
        out = self.decoder.generate(
            input_ids=start,
            attention_mask=torch.ones_like(start),
            encoder_hidden_states=states,  # once per video: generate expands it for beams
            encoder_attention_mask=mask,
            generation_config=config,
            **extra,
        )
        return out[:, 1:]


VIDEO_KEYS = ("video_feats", "video_tokens", "video_mask", "video_ids")  # what a writer row sees


class MaskedLMCaptioner(Captioner):
    """`head.decoder=masked_lm`: the backbone writes the caption with its own masked-LM head.

    Word k+1 is the backbone's guess at the [MASK] of the text `w1 .. wk [MASK]` beside the
    segment's clips, exactly how its pretraining filled masked words from the video (and how the
    QA masked-LM reader answers): BERT used as a left-to-right generator (Wang & Cho 2019), with
    every prefix its own row, since the backbone's attention is bidirectional and a causal mask
    would be model-specific. No new parameter; the baselines (`init=text`, `blind`) differ only
    in the backbone, as with the other heads. Backbones whose masked-LM head never sees the video
    (CBT) are refused by the task.

    head(backbone, batch) -> {"logits": [R, V]} at `caption_slot` [R] (one row per prefix);
    head.generate(backbone, batch, config) -> ids [B, <= max_new_tokens] through `SlotWriter`.
    """

    def __init__(self, backbone: VLPreTrainedModel) -> None:
        super().__init__(backbone)
        self.mask_id = backbone.config.mask_token_id

    def forward(self, backbone: VLPreTrainedModel, batch: dict[str, Any]) -> dict[str, Tensor]:
        return {"logits": backbone.masked_slot_logits(batch, batch["caption_slot"])}

    def generate(
        self,
        backbone: VLPreTrainedModel,
        batch: dict[str, Any],
        config: GenerationConfig,
        use_cache: bool = True,
    ) -> Tensor:
        """Caption ids [B, <= max_new_tokens] after [CLS]; `use_cache` is moot (no cache: every
        step reads the whole prefix again, as the attention is bidirectional)."""
        writer = SlotWriter(backbone, self.mask_id)
        video = {k: batch[k] for k in VIDEO_KEYS}
        start = torch.full((batch["video_mask"].shape[0], 1), self.bos_id, device=writer.device)
        config = copy.deepcopy(config)
        config.use_cache = False
        out = writer.generate(
            input_ids=start,
            attention_mask=torch.ones_like(start),
            generation_config=config,
            **video,
        )
        return out[:, 1:]


class SlotWriterConfig(PretrainedConfig):
    model_type = "vlpipe-slot-writer"


class SlotWriter(PreTrainedModel, GenerationMixin):
    """What HF `generate` drives for `MaskedLMCaptioner`: ids [R, 1 + k] ([CLS] w1 .. wk) and the
    rows' clips -> next-word logits [R, 1, V] from text `w1 .. wk [MASK]`. Built per `generate`
    call around the fine-tuned backbone (it holds no weights of its own); generate expands the
    video fields across beams like any model input."""

    config_class = SlotWriterConfig

    def __init__(self, backbone: VLPreTrainedModel, mask_id: int) -> None:
        vocab = backbone.config.text_config["vocab_size"]
        super().__init__(SlotWriterConfig(vocab_size=vocab, is_encoder_decoder=False))
        self.backbone, self.mask_id = backbone, mask_id

    def prepare_inputs_for_generation(self, input_ids: Tensor, **kwargs: Any) -> dict[str, Any]:
        return {"input_ids": input_ids, **{k: kwargs[k] for k in VIDEO_KEYS}}

    def forward(
        self,
        input_ids: Tensor,
        video_feats: Tensor,
        video_tokens: Tensor,
        video_mask: Tensor,
        video_ids: Tensor,
        attention_mask: Tensor | None = None,  # all ones: prefixes grow together, then pad
        **unused: Any,  # return_dict and other generate bookkeeping
    ) -> CausalLMOutput:
        rows, n = input_ids.shape
        mask = torch.full((rows, 1), self.mask_id, device=input_ids.device)
        text = torch.cat([input_ids[:, 1:], mask], 1)  # [R, n]: w1 .. wk [MASK]
        batch = {
            "text_ids": text,
            "text_mask": torch.ones_like(text, dtype=torch.bool),
            "video_feats": video_feats,
            "video_tokens": video_tokens,
            "video_mask": video_mask,
            "video_ids": video_ids,
        }
        slot = torch.full((rows,), n - 1, device=input_ids.device)
        return CausalLMOutput(logits=self.backbone.masked_slot_logits(batch, slot)[:, None])


def segment_id(example: Example) -> str:
    """What a caption describes: the video, or "video@start-end" for a segment."""
    item = example.item
    return item.video_id if item.start is None else f"{item.video_id}@{item.start}-{item.end}"


def read_transcripts(shards: str | Path, keys: set[str]) -> dict[str, list[dict[str, Any]]]:
    """ASR sentences ({"text", "start", "end"}) of the samples `keys`, from their asr.json."""
    out: dict[str, list[dict[str, Any]]] = {}
    for url in shard_urls(shards):
        with tarfile.open(url) as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                if ext == "asr.json" and key in keys and info.isfile():
                    out[key] = json.load(tar.extractfile(info)).get("sentences", [])
    return out


class CaptionTask(FinetuneTask):
    """Captioning on the engine (module doc)."""

    settings: CaptionSettings

    def __init__(self, cfg: FinetuneConfig, state: dict[str, Any] | None = None) -> None:
        check_positions(cfg)  # before any annotation is read
        super().__init__(cfg, state)
        if self.settings.prompt:  # the same text beside every video (module doc)
            prompt = self.tokens(self.settings.prompt, truncate=False)
            if len(prompt) > cfg.data.max_text_tokens:  # a cut would lose its last slots
                raise ConfigError(
                    f"head.prompt: {len(prompt)} WordPiece tokens, more than data.max_text_tokens "
                    f"{cfg.data.max_text_tokens}; raise data.max_text_tokens or shorten the prompt"
                )
            for e in [*self.train_examples, *self.val_examples]:
                e.extra["text"] = prompt
        if self.settings.use_transcript:
            examples = [*self.train_examples, *self.val_examples]
            sentences = read_transcripts(cfg.data.shards, {e.key for e in examples})
            for e in examples:
                e.extra["text"] = self.tokens(transcript(sentences.get(e.key, []), e.item))

    def check_backbone(self) -> None:
        """Also refuse the masked_lm decoder where the masked LM never sees the video."""
        super().check_backbone()
        if self.settings.decoder == "masked_lm":
            self.refuse_masked_lm_without_video("head.decoder", "head.decoder=cross_attention")

    def prepare(self, examples: list[Example]) -> dict[str, Any]:
        return {}

    def build_head(self, backbone: VLPreTrainedModel) -> nn.Module:
        s = self.settings
        if s.decoder == "masked_lm":
            return MaskedLMCaptioner(backbone)
        return CaptionHead(backbone, s.decoder_layers, s.use_transcript or bool(s.prompt))

    def batch(self, examples: list[Example], train: bool) -> dict[str, Any]:
        """Segment batch (+ the transcript as text) and, training, `caption_ids` [B, N]
        ([CLS] caption [SEP], padded), `caption_mask` [B, N] and `caption_labels` [B, N-1]
        (the next token; -100 on padding). masked_lm trains on `writer_batch` instead."""
        if train and self.settings.decoder == "masked_lm":
            return self.writer_batch(examples)
        texts = [e.extra.get("text", []) for e in examples]  # transcript or prompt
        batch = self.collate(examples, texts)
        if train:
            tok = self.tokenizer
            rows = [
                [tok.cls_token_id, *self.tokens(e.item.caption), tok.sep_token_id] for e in examples
            ]
            n = max(len(r) for r in rows)
            ids = torch.full((len(rows), n), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros(len(rows), n, dtype=torch.bool)
            for i, row in enumerate(rows):
                ids[i, : len(row)] = torch.tensor(row)
                mask[i, : len(row)] = True
            labels = ids[:, 1:].masked_fill(~mask[:, 1:], -100)
            batch.update(caption_ids=ids, caption_mask=mask, caption_labels=labels)
        return batch

    def writer_batch(self, examples: list[Example]) -> dict[str, Any]:
        """masked_lm training: one row per caption prefix, text `w1 .. wk [MASK]` (k = 0 .. n)
        with the caption's clips, `caption_slot` [R] = k and `caption_labels` [R] = w(k+1), or
        [SEP] after the last word (teacher forcing: every word and the end are predicted once);
        `captions` [B] counts the examples."""
        tok = self.tokenizer
        rows, texts, slots, labels = [], [], [], []
        for e in examples:
            words = self.tokens(e.item.caption)[: self.cfg.data.max_text_tokens - 1]
            for k, label in enumerate([*words, tok.sep_token_id]):
                rows.append(e)
                texts.append([*words[:k], tok.mask_token_id])
                slots.append(k)
                labels.append(label)
        batch = self.collate(rows, texts)
        batch.update(
            caption_slot=torch.tensor(slots),
            caption_labels=torch.tensor(labels),
            captions=torch.tensor(len(examples)),
        )
        return batch

    def batch_size(self, batch: dict[str, Any]) -> int:
        if "captions" in batch:  # writer rows are prefixes; the batch is its captions
            return int(batch["captions"])
        return super().batch_size(batch)

    def batch_tokens(self, batch: dict[str, Any]) -> int:
        return int((batch["caption_labels"] != -100).sum()) if "caption_labels" in batch else 0

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        logits = model(batch)["logits"].float()  # [B, N-1, V], or [R, V] from the writer
        labels = batch["caption_labels"]  # [B, N-1] or [R]
        loss = F.cross_entropy(
            logits.flatten(0, -2),
            labels.flatten(),
            ignore_index=-100,
            label_smoothing=self.settings.label_smoothing,
        )
        real = labels != -100
        accuracy = (logits.argmax(-1) == labels)[real].float().mean()
        return {"loss": loss, "token_accuracy": accuracy.detach()}

    @torch.no_grad()
    def predict(self, model: nn.Module, examples: list[Example]) -> list[dict[str, Any]]:
        """One caption per video / segment (its references: every example that shares it)."""
        groups: dict[str, list[Example]] = defaultdict(list)
        for e in examples:
            groups[segment_id(e)].append(e)
        firsts = [
            dataclasses.replace(
                g[0], extra={**g[0].extra, "references": [x.item.caption for x in g]}
            )
            for g in groups.values()
        ]
        return super().predict(model, firsts)

    def predict_batch(self, model, examples, batch) -> list[dict[str, Any]]:
        # FinetuneTask.predict builds batches on the CPU; evaluation runs where the model is.
        device = next(model.parameters()).device
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        config = model.head.generation_config(self.settings)
        ids = model.head.generate(model.backbone, batch, config)
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return [
            {
                "id": segment_id(e),
                "video_id": e.item.video_id,
                "segment": None if e.item.start is None else [e.item.start, e.item.end],
                "references": e.extra["references"],
                "prediction": text.strip(),
            }
            for e, text in zip(examples, texts, strict=True)
        ]

    def score(self, examples, predictions) -> dict[str, float]:
        scores = caption_scores(
            {p["id"]: p["references"] for p in predictions},
            {p["id"]: p["prediction"] for p in predictions},
            use_java=None if self.settings.java_metrics else False,
        )
        return {
            **scores,
            "ptb_tokenized": float(scores.ptb_tokenized),
            "segments": float(len(predictions)),
        }


def check_positions(cfg: FinetuneConfig) -> None:
    """ConfigError when captions need more positions than the backbone's BERT has: decoder
    inputs are [CLS] + up to data.max_text_tokens (training) or head.max_length (decoding)."""
    config = resolve_model_dir(cfg.model) / "config.json"
    positions = json.loads(config.read_text()).get("text_config", {}).get("max_position_embeddings")
    longest = max(cfg.head.max_length, cfg.data.max_text_tokens) + 1
    if positions and longest > positions:
        raise ConfigError(
            f"head.max_length / data.max_text_tokens: {longest} decoder positions with [CLS] "
            f"exceed the text tower's {positions}"
        )


def transcript(sentences: list[dict[str, Any]], item: Any) -> str:
    """The ASR sentences that overlap the item's [start, end] (all of them without a segment)."""
    if item.start is None:
        return " ".join(s["text"] for s in sentences)
    return " ".join(s["text"] for s in sentences if s["start"] < item.end and s["end"] > item.start)
