"""The BERT text side shared by the models that keep text in a tower of its own (CBT, two-stream).

A `TextTower` is a local HuggingFace BERT checkpoint (`bert.*` weights as BERT saves them) plus
BERT's masked-LM head tied to the word embeddings. It frames a segment batch's sentences as
`[CLS] words [SEP]`, runs them and decodes masked positions; the masked-LM loss of methods.md 1.4
/ 2.1 / 3.5 is `losses.cross_entropy_or_zero` on `mlm_logits`. VideoBERT packs words and visual
words into one BERT sequence and shares `read_bert_directory` and `bert_by_length` (BERT run
on rows grouped by length, padding left out).

Legend: B batch, L sentence tokens (L+2 with [CLS]/[SEP]), D text width, V WordPiece vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoConfig, AutoTokenizer, BertConfig, BertModel


def read_bert_directory(text_model_path: str | Path) -> tuple[Path, BertConfig, dict[str, int]]:
    """Check a local HF BERT directory: (path, its BertConfig, {"cls_token_id", "sep_token_id",
    "mask_token_id", "pad_token_id"} from its tokenizer, so another vocabulary works).

    Raises FileNotFoundError without config.json, ValueError if it is not a BERT or its
    tokenizer lacks a special token.
    """
    path = Path(text_model_path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json; expected a local HF BERT directory")
    text_config = AutoConfig.from_pretrained(path)
    if text_config.model_type != "bert":
        raise ValueError(f"{path}: model_type {text_config.model_type!r}, expected 'bert'")
    tokenizer = AutoTokenizer.from_pretrained(path)
    special_ids = {
        "cls_token_id": tokenizer.cls_token_id,
        "sep_token_id": tokenizer.sep_token_id,
        "mask_token_id": tokenizer.mask_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    missing = [name for name, value in special_ids.items() if value is None]
    if missing:
        raise ValueError(f"{path}: tokenizer lacks special tokens {missing}")
    return path, text_config, special_ids


def load_tokenizer(path: str | Path):
    """The WordPiece tokenizer saved in a BERT or vlpipe model directory.

    The vlpipe models' config.json names a `model_type` transformers does not know; passing a
    BertConfig keeps AutoTokenizer from reading it (and from warning that the model type differs):
    every vlpipe text side is a BERT.
    """
    return AutoTokenizer.from_pretrained(str(path), config=BertConfig())


def add_cls_sep(
    text_ids: Tensor, text_mask: Tensor, cls_id: int, sep_id: int, pad_id: int
) -> tuple[Tensor, Tensor]:
    """Frame a padded segment batch as BERT input: `[CLS] tokens [SEP] pad...`.

    text_ids Long [B, L] and text_mask Bool [B, L] with the real tokens first (the segment batch
    contract). Returns ids [B, L+2] and mask [B, L+2]; token i of the sentence sits at i+1, so
    outputs[:, 1:L+1] line up with `text_ids`. Raises ValueError if a mask is not a prefix.
    """
    batch, length = text_ids.shape
    lengths = text_mask.sum(1)  # [B]
    positions = torch.arange(length, device=text_ids.device)
    if not torch.equal(text_mask, positions[None, :] < lengths[:, None]):
        raise ValueError("text_mask must mark a prefix of each row (real tokens first)")
    cls = torch.full((batch, 1), cls_id, dtype=text_ids.dtype, device=text_ids.device)
    pad = torch.full((batch, 1), pad_id, dtype=text_ids.dtype, device=text_ids.device)
    ids = torch.cat([cls, torch.where(text_mask, text_ids, pad_id), pad], dim=1)  # [B, L+2]
    rows = torch.arange(batch, device=text_ids.device)
    ids[rows, lengths + 1] = sep_id
    mask = torch.arange(length + 2, device=text_ids.device)[None, :] <= (lengths + 1)[:, None]
    return ids, mask  # [B, L+2] each


# What one more BERT call costs, in padded tokens' worth of compute (fixed per-call work and
# smaller, less efficient matrix products); read at call time. benchmarks/bench_demo_step.py
# times the demo's pretraining steps over a range of values (and with one padded call).
RUN_OVERHEAD_TOKENS = 64


def length_runs(lengths: list[int], overhead: int) -> list[tuple[int, int]]:
    """Cut rows sorted by length (ascending) into runs [start, end) that each pad to their
    longest row, minimising sum(rows x longest) + `overhead` per run (exact dynamic programme
    over the places where the length changes: a run never splits rows of one length).
    """
    ends = [
        i + 1 for i in range(len(lengths)) if i + 1 == len(lengths) or lengths[i + 1] > lengths[i]
    ]
    bounds = [0, *ends]  # cost[j]: the best cut of rows [0, bounds[j])
    cost, back = [0.0] + [float("inf")] * len(ends), [0] * (len(ends) + 1)
    for j in range(1, len(bounds)):
        for i in range(j):
            c = cost[i] + (bounds[j] - bounds[i]) * lengths[bounds[j] - 1] + overhead
            if c < cost[j]:
                cost[j], back[j] = c, i
    runs, j = [], len(bounds) - 1
    while j > 0:
        runs.append((bounds[back[j]], bounds[j]))
        j = back[j]
    return runs[::-1]


def bert_by_length(
    bert: BertModel, attention_mask: Tensor, overhead: int | None = None, **inputs: Tensor
) -> tuple[Tensor, Tensor | None]:
    """`bert(attention_mask=..., **inputs)` on runs of rows of similar length, each cut to its
    longest row: padding is most of a batch of short narrated segments (58 % of the demo's
    pretraining tokens), and BERT spends as much on a padding token as on a word.

    attention_mask [B, N]; inputs: `input_ids` or `inputs_embeds` [B, N(, D)] and optionally
    `token_type_ids` / `position_ids` [B, N]. Returns (last_hidden_state [B, N, D], meaningless
    beyond each row's last attended token: zero when the rows ran in groups, BERT's values when
    one call was cheapest; pooler_output [B, D] or None). A row's outputs do not depend
    on the other rows (each row attends to itself only), so this equals one call up to float
    rounding; in training, dropout draws differ. `overhead`: see `length_runs`
    (None: RUN_OVERHEAD_TOKENS).
    """
    batch, width = attention_mask.shape
    positions = torch.arange(1, width + 1, device=attention_mask.device)
    extent = torch.where(attention_mask.bool(), positions, 0).amax(1).clamp(min=1)  # [B]
    order = extent.argsort(stable=True)
    lengths = extent[order].tolist()
    runs = length_runs(lengths, RUN_OVERHEAD_TOKENS if overhead is None else overhead)
    if len(runs) == 1:
        out = bert(attention_mask=attention_mask, **inputs)
        return out.last_hidden_state, out.pooler_output
    hidden, pooled = [], []
    for start, end in runs:
        rows, length = order[start:end], lengths[end - 1]
        out = bert(
            attention_mask=attention_mask[rows, :length],
            **{k: v[rows, :length] for k, v in inputs.items()},
        )
        hidden.append(F.pad(out.last_hidden_state, (0, 0, 0, width - length)))
        pooled.append(out.pooler_output)
    back = order.argsort()  # sorted position of each original row
    pooler = torch.cat(pooled)[back] if pooled[0] is not None else None
    return torch.cat(hidden)[back], pooler


class TiedMaskedLMHead(nn.Module):
    """BERT MLM head whose decoder is the word-embedding matrix (BertLMPredictionHead).

    The decoder weight is passed in at call time instead of being tied through HF's
    `_tied_weights_keys`, so the checkpoint holds it once and loading needs no tying step.
    h [..., D], embedding_weight [V, D] -> logits [..., V].
    """

    def __init__(self, dim: int, vocab_size: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, h: Tensor, embedding_weight: Tensor) -> Tensor:
        h = self.norm(F.gelu(self.dense(h)))
        return F.linear(h, embedding_weight, self.bias)


class TextTower(nn.Module):
    """BERT (no pooler) + tied masked-LM head. Special ids as in the checkpoint's tokenizer."""

    def __init__(self, config: BertConfig, cls_id: int, sep_id: int, pad_id: int) -> None:
        super().__init__()
        self.bert = BertModel(config, add_pooling_layer=False)
        self.mlm_head = TiedMaskedLMHead(
            config.hidden_size, config.vocab_size, config.layer_norm_eps
        )
        self.cls_id, self.sep_id, self.pad_id = cls_id, sep_id, pad_id
        self.frozen = False

    def freeze(self) -> None:
        """No trainable parameter left, and forward builds no graph (nothing to backpropagate
        into). Call again after `from_pretrained`, which swaps in Parameters that require grad."""
        self.requires_grad_(False)
        self.frozen = True

    @property
    def vocab_size(self) -> int:
        return self.bert.config.vocab_size

    def load_checkpoint(self, path: str | Path) -> None:
        """Copy the encoder weights of the local BERT at `path` (its pooler, if any, is dropped:
        the models pool themselves). Loaded through `from_pretrained` so a checkpoint saved with
        a pooler reports nothing unexpected."""
        weights = BertModel.from_pretrained(path).state_dict()
        self.bert.load_state_dict({k: v for k, v in weights.items() if not k.startswith("pooler.")})

    def frame(self, text_ids: Tensor, text_mask: Tensor) -> tuple[Tensor, Tensor]:
        """ids [B, L], mask [B, L] -> `[CLS] words [SEP]` ids [B, L+2] and mask [B, L+2].

        Raises ValueError when the framed text exceeds BERT's positions."""
        ids, mask = add_cls_sep(text_ids, text_mask, self.cls_id, self.sep_id, self.pad_id)
        limit = self.bert.config.max_position_embeddings
        if ids.shape[1] > limit:
            raise ValueError(
                f"text of {ids.shape[1] - 2} tokens exceeds the BERT limit {limit - 2}"
            )
        return ids, mask

    def forward(self, text_ids: Tensor, text_mask: Tensor) -> tuple[Tensor, Tensor]:
        """ids [B, L], mask [B, L] -> BERT outputs [B, L+2, D] of `[CLS] words [SEP]`, mask."""
        ids, mask = self.frame(text_ids, text_mask)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return bert_by_length(self.bert, mask, input_ids=ids)[0], mask

    def mlm_logits(self, hidden: Tensor) -> Tensor:
        """[..., D] -> [..., V] WordPiece logits (decoder tied to the word embeddings)."""
        return self.mlm_head(hidden, self.bert.embeddings.word_embeddings.weight)
