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

Windowed reading (`head.window_clips` > 0, either reader): a question about a whole video
usually concerns a few of its clips ("what does the red square do?"). The question is read beside
every window of `window_clips` consecutive clips (`window_stride` apart), and the answer
distribution is the mixture of the windows' distributions weighted by the softmax of the
backbone's alignment logit of each row (`WindowedAnswers`): a retrieve-then-read latent window,
trained end to end by the mixture's likelihood. A pretrained alignment localises from step 0; a
text-only backbone's alignment head starts untrained. The masked-LM reader gets both scores from
one forward pass per window (`masked_slot_and_alignment`); the classifier makes a second one.

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

import dataclasses
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
        out: dict[str, Tensor] = {}
        if "window_index" in batch:  # WindowedAnswers weighs the rows: the same pass scores them
            at_slot, out["alignment"] = backbone.masked_slot_and_alignment(
                batch, batch["answer_slot"]
            )  # [B, V], [B]
        else:
            at_slot = backbone.masked_slot_logits(batch, batch["answer_slot"])  # [B, V]
        real = self.answer_ids >= 0  # [K, A]
        per_token = at_slot[:, self.answer_ids.clamp(min=0)]  # [B, K, A]
        out["logits"] = (per_token * real).sum(-1) / real.sum(-1)  # [B, K]
        return out


class WindowedAnswers(nn.Module):
    """Reads the question beside every window of a video's clips and mixes the windows.

    The batch's rows are windows (N of them); `window_index` Long [B, M] lists question b's rows
    (-1: padding). With s_n the backbone's alignment logit of row n (its text with its clips) and
    p_n(k) the softmax of the reader's scores, the answer log-probability is

        log p(k | question b) = logsumexp_m [ log softmax_m(s_{b,m}) + log p_{b,m}(k) ]

    a mixture over windows weighted by how well each window matches the question (the latent
    window of multiple-instance / retrieve-then-read models). Trained by its likelihood, the
    weights and the reader both learn; a pretrained alignment localises from the first step.
    """

    def __init__(self, reader: nn.Module) -> None:
        super().__init__()
        self.reader = reader

    def forward(self, backbone: VLPreTrainedModel, batch: dict[str, Any]) -> dict[str, Tensor]:
        read = self.reader(backbone, batch)
        scores = read["logits"].float()  # [N, K]
        relevance = read.get("alignment")  # [N], where the reader's pass gave it
        if relevance is None:
            relevance = backbone.alignment_logits(batch)
        relevance = relevance.float()
        index = batch["window_index"]  # [B, M]
        rows, real = index.clamp(min=0), index >= 0
        weights = relevance[rows].masked_fill(~real, float("-inf")).log_softmax(1)  # [B, M]
        per_window = scores.log_softmax(-1)[rows]  # [B, M, K]
        logits = torch.logsumexp(weights[..., None] + per_window, 1)  # [B, K] log-probabilities
        return {"logits": logits, "window_weights": weights.exp()}


class QATask(FinetuneTask):
    """Open-ended QA (module doc)."""

    settings: QASettings

    def check_backbone(self) -> None:
        """Also refuse the masked_lm reader where the masked LM never sees the video."""
        super().check_backbone()
        if self.settings.reader == "masked_lm":
            self.refuse_masked_lm_without_video("head.reader", "head.reader=classifier")

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
            head = MaskedAnswerHead([self.answer_tokens(a) for a in self.state["answers"]])
        else:
            dim = backbone.encode_dims["pooled"]
            head = AnswerHead(dim, len(self.state["answers"]), s.hidden_mult, s.dropout)
        return WindowedAnswers(head) if s.window_clips else head

    def rows(self, example: Example) -> list[Example]:
        """The batch rows that read `example`: its windows, or itself with the video hidden
        (every window would be the same row, and a mixture of identical rows is that row)."""
        return [example] if self.cfg.blind else self.windows(example)

    def windows(self, example: Example) -> list[Example]:
        """`head.window_clips` consecutive clips every `head.window_stride` (the last window ends
        at the last clip, so none is left out); the whole example when it is that short."""
        size, stride = self.settings.window_clips, self.settings.window_stride
        T = len(example.feats)
        if T <= size:
            return [example]
        starts = list(range(0, T - size + 1, stride))
        if starts[-1] != T - size:
            starts.append(T - size)
        return [
            dataclasses.replace(
                example,
                feats=example.feats[a : a + size],
                words=example.words[a : a + size],
                frames=None if example.frames is None else example.frames[a : a + size],
                extra={**example.extra, "window": (a, a + size)},
            )
            for a in starts
        ]

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
        rows, index = examples, None
        if self.settings.window_clips:  # one row per window; window_index [B, M] finds them
            per_question = [self.rows(e) for e in examples]
            rows = [w for ws in per_question for w in ws]
            index = torch.full((len(examples), max(map(len, per_question))), -1)
            first = 0
            for b, ws in enumerate(per_question):
                index[b, : len(ws)] = torch.arange(first, first + len(ws))
                first += len(ws)
        if self.settings.reader == "masked_lm":
            prompts = [self.prompt(e.item.question) for e in rows]
            batch = self.collate(rows, [ids for ids, _ in prompts])
            batch["answer_slot"] = torch.tensor([slot for _, slot in prompts])
        else:
            batch = self.collate(rows, [self.tokens(e.item.question) for e in rows])
        if index is not None:
            batch["window_index"] = index
        if train:
            batch["targets"] = torch.from_numpy(
                np.stack([self.target(e.item.answers) for e in examples])
            )
        return batch

    def batch_size(self, batch: dict[str, Any]) -> int:
        if "window_index" in batch:  # rows are windows; the batch is its questions
            return int(batch["window_index"].shape[0])
        return super().batch_size(batch)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        logits = model(batch)["logits"].float()  # [B, K]
        targets = batch["targets"]  # [B, K]
        if "window_index" in batch:
            # logits are the mixture's log-probabilities: its likelihood, the soft targets
            # (several answers) as a distribution
            loss = F.cross_entropy(logits, targets / targets.sum(1, keepdim=True).clamp(min=1e-6))
        elif self.settings.soft_targets and (targets.sum(1) != 1).any():
            # methods.md 3.6: BCEWithLogits(mean) * K
            loss = F.binary_cross_entropy_with_logits(logits, targets) * targets.shape[1]
        else:
            loss = F.cross_entropy(logits, targets.argmax(1))
        accuracy = (logits.argmax(1) == targets.argmax(1)).float().mean()
        return {"loss": loss, "train_accuracy": accuracy.detach()}

    def predict_batch(self, model, examples, batch) -> list[dict[str, Any]]:
        out = model(batch)
        best = out["logits"].float().argmax(1).tolist()
        preds = [
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
        if "window_weights" in out:  # the clips [first, stop) of the window weighed highest
            chosen = out["window_weights"].argmax(1).tolist()
            for p, e, m in zip(preds, examples, chosen, strict=True):
                p["window"] = list(self.rows(e)[m].extra.get("window", (0, len(e.feats))))
        return preds

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
