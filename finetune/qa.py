"""Video question answering: open-ended (a classifier over the top-K answers) and multiple choice.

Open-ended (MSRVTT-QA, MSVD-QA, ActivityNet-QA, TGIF FrameQA): scores over the K most frequent
training answers, read one of two ways (`head.reader`):

* `classifier` (methods.md 3.6): the question is the text beside the video; the model's pooled
  output goes through the two-layer classifier of vilbert-multi-task (Linear, GELU, LayerNorm,
  Linear).
* `masked_lm` (FrozenBiLM, Yang et al. NeurIPS 2022): the text is `head.template` with the
  question in it ("question: ... answer: [MASK]."), and an answer's score is the backbone's own
  masked-LM logit at the [MASK], averaged over the answer's WordPiece tokens. That equals
  FrozenBiLM's answer embedding (the mean of the answer's token embeddings, and of their output
  biases, `set_answer_embeddings`) through the tied linear decoder. No new weight: what
  pretraining taught the model about filling words from the video is the answer reader from step
  0. Deviation: FrozenBiLM freezes its language model and trains adapters; here the backbone is
  fine-tuned as with the classifier (`backbone_lr_mult`). The text-only baseline (`init=text`)
  reads through the text checkpoint's MLM head, or a freshly initialised transform where the
  checkpoint ships none (MiniLM). Not for CBT, whose text tower never sees the video.

One answer per question: cross entropy. Several annotator answers (VQA style): the soft score
min(count, 4)-based target (0, .3, .6, .9, 1) with `BCEWithLogits * K` as in the reference.
At test time an answer outside the K counts as wrong; accuracy is `finetune.metrics.qa_accuracy`
(exact match, or the VQA formula for ten answers).

Multiple choice (MSRVTT-MC, TGIF Action/Transition): each option is scored with the video by
the model's alignment (`template` joins question and option); cross entropy over the options.
Untrained (`zero_shot`), the pretrained alignment alone picks the option.

Legend: B questions, O options, K answers, D pooled width.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from finetune.metrics import qa_accuracy
from finetune.task import Example, FinetuneTask
from pipeline.config import ConfigError
from pipeline.finetune_config import MCSettings, QASettings
from pipeline.models import model_class
from pipeline.models.base import VLPreTrainedModel

VQA_SCORE = (0.0, 0.3, 0.6, 0.9, 1.0)  # soft score by number of annotators giving the answer


class AnswerHead(nn.Module):
    """pooled [B, D] -> answer logits [B, K] (vilbert-multi-task SimpleClassifier)."""

    def __init__(self, dim: int, answers: int, hidden_mult: int, dropout: float) -> None:
        super().__init__()
        hidden = max(1, hidden_mult) * dim
        self.net = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.LayerNorm(hidden, eps=1e-12),
            nn.Linear(hidden, answers),
        )

    def forward(self, backbone: VLPreTrainedModel, batch: dict[str, Any]) -> dict[str, Tensor]:
        pooled = backbone.encode(batch)["pooled"]  # [B, D]
        return {"logits": self.net(pooled)}


class MaskedAnswerHead(nn.Module):
    """Answer scores [B, K] from the backbone's masked-LM logits at the batch's `answer_slot`
    (module doc); `answer_ids` [K, A] are the answers' WordPiece ids, padded with -1."""

    def __init__(self, answer_ids: list[list[int]]) -> None:
        super().__init__()
        width = max(1, max(len(a) for a in answer_ids))
        ids = torch.full((len(answer_ids), width), -1, dtype=torch.long)
        for k, a in enumerate(answer_ids):
            ids[k, : len(a)] = torch.tensor(a, dtype=torch.long)
        # Buffers, not parameters: rebuilt from the answer list, so not saved with the head.
        self.register_buffer("answer_ids", ids, persistent=False)  # [K, A]

    def forward(self, backbone: VLPreTrainedModel, batch: dict[str, Any]) -> dict[str, Tensor]:
        at_slot = backbone.masked_slot_logits(batch, batch["answer_slot"])  # [B, V]
        real = self.answer_ids >= 0  # [K, A]
        per_token = at_slot[:, self.answer_ids.clamp(min=0)]  # [B, K, A]
        scores = (per_token * real).sum(-1) / real.sum(-1)  # [B, K]
        return {"logits": scores}


class QATask(FinetuneTask):
    """Open-ended QA (module doc)."""

    settings: QASettings

    def check_backbone(self) -> None:
        """Also refuse, before any work, the masked_lm reader on a backbone whose masked-LM
        head never sees the video (CBT): it could only learn the language prior."""
        super().check_backbone()
        if self.settings.reader == "masked_lm" and not (
            model_class(self.backbone_name).masked_lm_sees_video
        ):
            raise ConfigError(
                f"head.reader: masked_lm reads {self.backbone_name}'s masked-LM head, which never "
                "sees the video; use head.reader=classifier"
            )

    def prepare(self, examples: list[Example]) -> dict[str, Any]:
        counts = Counter(a for e in examples for a in set(e.item.answers))
        answers = [a for a, _ in sorted(counts.items(), key=lambda x: (-x[1], x[0]))]
        answers = answers[: self.settings.answers]
        majority = answers[0] if answers else ""
        return {"answers": answers, "majority": majority}

    @property
    def answer_index(self) -> dict[str, int]:
        if not hasattr(self, "_answer_index"):
            self._answer_index = {a: i for i, a in enumerate(self.state["answers"])}
        return self._answer_index

    def usable(self, example: Example) -> bool:
        return any(a in self.answer_index for a in example.item.answers)

    def build_head(self, backbone: VLPreTrainedModel) -> nn.Module:
        s = self.settings
        if s.reader == "masked_lm":
            return MaskedAnswerHead([self.answer_tokens(a) for a in self.state["answers"]])
        dim = backbone.encode_dims["pooled"]
        return AnswerHead(dim, len(self.state["answers"]), s.hidden_mult, s.dropout)

    def answer_tokens(self, answer: str) -> list[int]:
        """WordPiece ids of an answer ([UNK] for one the tokenizer gives nothing for)."""
        return self.tokens(answer, truncate=False) or [self.tokenizer.unk_token_id]

    def prompt(self, question: str) -> tuple[list[int], int]:
        """masked_lm: the template's ids with the question in it, and the [MASK] position.

        The question is cut so the whole text fits `data.max_text_tokens` and the [MASK] stays.
        """
        mask_first, head, tail, other = self.template_pieces()
        mask_id = self.tokenizer.mask_token_id
        room = max(0, self.cfg.data.max_text_tokens - len(head) - len(tail) - len(other) - 1)
        question_ids = self.tokens(question, truncate=False)[:room]
        if mask_first:  # [MASK] ... question ...
            return [*head, mask_id, *tail, *question_ids, *other], len(head)
        ids = [*other, *question_ids, *head]
        return [*ids, mask_id, *tail], len(ids)

    def template_pieces(self) -> tuple[bool, list[int], list[int], list[int]]:
        """(whether [MASK] comes before {question}, ids before the [MASK], ids after it in the
        same part, ids of the other part): tokenised once per template, not per question."""
        template = self.settings.template
        if getattr(self, "_pieces", (None,))[0] != template:
            before, after = template.split("{question}")
            mask = self.tokenizer.mask_token
            masked_part = before if mask in before else after
            head, tail = (self.tokens(x, truncate=False) for x in masked_part.split(mask))
            other = self.tokens(after if mask in before else before, truncate=False)
            self._pieces = (template, (mask in before, head, tail, other))
        return self._pieces[1]

    def target(self, answers: tuple[str, ...]) -> np.ndarray:
        """[K] target: one-hot for one answer, VQA soft scores for several."""
        out = np.zeros(len(self.state["answers"]), np.float32)
        counts = Counter(a for a in answers if a in self.answer_index)
        if len(answers) == 1 or not self.settings.soft_targets:
            if counts:
                out[self.answer_index[counts.most_common(1)[0][0]]] = 1.0
            return out
        for answer, n in counts.items():
            out[self.answer_index[answer]] = VQA_SCORE[min(n, 4)]
        return out

    def batch(self, examples: list[Example], train: bool) -> dict[str, Any]:
        if self.settings.reader == "masked_lm":
            prompts = [self.prompt(e.item.question) for e in examples]
            batch = self.collate(examples, [ids for ids, _ in prompts])
            batch["answer_slot"] = torch.tensor([slot for _, slot in prompts])
        else:
            batch = self.collate(examples, [self.tokens(e.item.question) for e in examples])
        if train:
            batch["targets"] = torch.from_numpy(
                np.stack([self.target(e.item.answers) for e in examples])
            )
        return batch

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        logits = model(batch)["logits"].float()  # [B, K]
        targets = batch["targets"]  # [B, K]
        if self.settings.soft_targets and (targets.sum(1) != 1).any():
            # methods.md 3.6: BCEWithLogits(mean) * K
            loss = F.binary_cross_entropy_with_logits(logits, targets) * targets.shape[1]
        else:
            loss = F.cross_entropy(logits, targets.argmax(1))
        accuracy = (logits.argmax(1) == targets.argmax(1)).float().mean()
        return {"loss": loss, "train_accuracy": accuracy.detach()}

    def predict_batch(self, model, examples, batch) -> list[dict[str, Any]]:
        logits = model(batch)["logits"].float()
        best = logits.argmax(1).tolist()
        return [
            {
                "qid": e.item.qid,
                "video_id": e.item.video_id,
                "question": e.item.question,
                "answers": list(e.item.answers),
                "prediction": self.state["answers"][k],
                **({"type": e.item.qtype} if e.item.qtype else {}),
            }
            for e, k in zip(examples, best, strict=True)
        ]

    def score(self, examples, predictions) -> dict[str, float]:
        return qa_scores(predictions, self.state["majority"])


def qa_scores(predictions: list[dict[str, Any]], majority: str) -> dict[str, float]:
    """Accuracy (finetune.metrics.qa_accuracy), the majority-answer baseline on the same
    questions, and accuracy per answer type where the format has types (ActivityNet-QA)."""
    answers = {
        p["qid"]: p["answers"] if len(p["answers"]) > 1 else p["answers"][0] for p in predictions
    }
    out = {
        "accuracy": qa_accuracy(answers, {p["qid"]: p["prediction"] for p in predictions}),
        "majority_accuracy": qa_accuracy(answers, {p["qid"]: majority for p in predictions}),
        "questions": float(len(predictions)),
    }
    for qtype in sorted({p["type"] for p in predictions if p.get("type")}):
        subset = [p for p in predictions if p.get("type") == qtype]
        out[f"accuracy/{qtype}"] = qa_accuracy(
            {p["qid"]: answers[p["qid"]] for p in subset},
            {p["qid"]: p["prediction"] for p in subset},
        )
    return out


class OptionScorer(nn.Module):
    """Scores every (video, option text) pair by the backbone's alignment: [B, O]."""

    def forward(self, backbone: VLPreTrainedModel, batch: dict[str, Any]) -> dict[str, Tensor]:
        B, n_opt, L = batch["option_ids"].shape  # [B, O, L]
        rows = {
            k: v.repeat_interleave(n_opt, 0)
            for k, v in batch.items()
            if k.startswith("video_") and torch.is_tensor(v)
        }
        rows["text_ids"] = batch["option_ids"].reshape(B * n_opt, L)
        rows["text_mask"] = batch["option_mask"].reshape(B * n_opt, L)
        return {"logits": backbone.alignment_logits(rows).reshape(B, n_opt)}


class MCTask(FinetuneTask):
    """Multiple-choice QA (module doc)."""

    settings: MCSettings

    def prepare(self, examples: list[Example]) -> dict[str, Any]:
        counts = Counter(len(e.item.options) for e in examples)
        if len(counts) > 1:
            raise ConfigError(
                f"data.train: questions with different numbers of options {dict(counts)}"
            )
        return {}

    def build_head(self, backbone: VLPreTrainedModel) -> nn.Module:
        return OptionScorer()

    def batch(self, examples: list[Example], train: bool) -> dict[str, Any]:
        batch = self.collate(examples, [[] for _ in examples])
        texts = [
            [
                self.tokens(self.settings.template.format(question=e.item.question, option=o))
                for o in e.item.options
            ]
            for e in examples
        ]
        n_opt, L = len(texts[0]), max(1, max(len(t) for opts in texts for t in opts))
        ids = torch.full((len(examples), n_opt, L), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(examples), n_opt, L, dtype=torch.bool)
        for i, opts in enumerate(texts):
            for j, t in enumerate(opts):
                ids[i, j, : len(t)] = torch.tensor(t, dtype=torch.long)
                mask[i, j, : len(t)] = True
        batch.update(option_ids=ids, option_mask=mask)
        if train:
            batch["answer"] = torch.tensor([e.item.answer_index for e in examples])
        return batch

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        logits = model(batch)["logits"].float()
        loss = F.cross_entropy(logits, batch["answer"])
        accuracy = (logits.argmax(1) == batch["answer"]).float().mean()
        return {"loss": loss, "train_accuracy": accuracy.detach()}

    def predict_batch(self, model, examples, batch) -> list[dict[str, Any]]:
        best = model(batch)["logits"].argmax(1).tolist()
        return [
            {
                "qid": e.item.qid,
                "video_id": e.item.video_id,
                "question": e.item.question,
                "options": list(e.item.options),
                "answer": e.item.answer_index,
                "prediction": k,
            }
            for e, k in zip(examples, best, strict=True)
        ]

    def score(self, examples, predictions) -> dict[str, float]:
        hits = [p["prediction"] == p["answer"] for p in predictions]
        options = len(predictions[0]["options"]) if predictions else 1
        return {
            "accuracy": 100.0 * float(np.mean(hits)) if hits else float("nan"),
            "chance": 100.0 / options,
            "questions": float(len(predictions)),
        }
