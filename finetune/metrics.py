"""Captioning and question-answering metrics: a small public API (issue 10, methods.md 10).

    from finetune.metrics import caption_scores, qa_accuracy
    caption_scores({"v1": ["the red square spins", ...]}, {"v1": "a red square spins"})
    -> {"BLEU-1": .., "BLEU-2": .., "BLEU-3": .., "BLEU-4": .., "METEOR": .., "ROUGE-L": ..,
        "CIDEr": ..}
    qa_accuracy({"q1": "star", "q2": ["2"] * 10}, {"q1": "star", "q2": "two"}) -> 100.0

Captions are scored by pycocoevalcap 1.2, the package HERO and LAVIS report with, x100 like
them (methods.md 10; UniVL's nlg-eval numbers on BERT-detokenised text are not comparable).
Nothing pycocoevalcap computes is re-implemented here: its PTB tokenizer (Stanford CoreNLP
3.4.1 with -lowerCase, punctuation tokens dropped) and METEOR 1.5 run on Java, BLEU, ROUGE-L
(beta 1.2) and CIDEr (really CIDEr-D, IDF from the evaluated references, so one video alone
scores 0) are its pure-Python scorers. The two JVMs start once per evaluation, METEOR's (about
15 s: it loads its paraphrase table) while the PTB tokenizer runs.

Without Java (no `java` on PATH, or use_java=False) BLEU, ROUGE-L and CIDEr come from the same
pure-Python scorers on `simple_tokenize`'s tokens, METEOR is NaN and listed in `.unavailable`,
and the result says `ptb_tokenized = False`: such figures are close to, but not, the published
protocol, and `format_caption_scores` labels them so.

QA accuracy follows the datasets' own protocols: MSRVTT-QA, MSVD-QA, ActivityNet-QA and TGIF
FrameQA give one answer per question and are scored by plain exact match, no normalisation;
VQA-style questions with ten annotator answers get the official VQA accuracy (answer
normalisation, min(#matches / 3, 1) averaged over the ten leave-one-out subsets).
"""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Mapping, Sequence

CAPTION_KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


class CaptionScores(dict):
    """``dict[str, float]`` of CAPTION_KEYS (x100), plus how it was computed.

    ``tokenizer``: "ptb" or "simple"; ``ptb_tokenized``: whether the published protocol's PTB
    tokenizer was used; ``unavailable``: metrics that could not be computed (their value is NaN).
    """

    def __init__(self, scores: dict[str, float], tokenizer: str, unavailable: tuple[str, ...]):
        super().__init__(scores)
        self.tokenizer = tokenizer
        self.ptb_tokenized = tokenizer == "ptb"
        self.unavailable = unavailable


def _check_ids(kind: str, expected: Mapping, predictions: Mapping) -> None:
    """Every reference id needs a prediction and every prediction a reference."""
    if not expected:
        raise ValueError(f"{kind}: nothing to score (no references)")
    missing = [k for k in expected if k not in predictions]
    extra = [k for k in predictions if k not in expected]
    if missing or extra:
        raise ValueError(
            f"{kind}: predictions and references must have the same ids; "
            f"{len(missing)} without a prediction (e.g. {missing[:5]}), "
            f"{len(extra)} without a reference (e.g. {extra[:5]})"
        )


# --- captions ---------------------------------------------------------------------------------

# Tokens pycocoevalcap's PTBTokenizer drops after tokenising (its PUNCTUATIONS list).
PTB_PUNCTUATION = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-",
     "--", "...", ";"]
)  # fmt: skip
_CONTRACTION = re.compile(r"(?<=\w)(n't|'s|'re|'ve|'ll|'d|'m)\b")
# Words PTB splits in two ("cannot" -> "can not").
_PTB_SPLITS = {"cannot": "can not", "gonna": "gon na", "gotta": "got ta", "wanna": "wan na",
               "lemme": "lem me", "gimme": "gim me"}  # fmt: skip
_PTB_SPLIT_RE = re.compile(r"\b(" + "|".join(_PTB_SPLITS) + r")\b")
# PTB's bracket tokens; -lowerCase lower-cases them too, so pycocoevalcap (which drops "-LRB-")
# keeps them: reproduced.
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_TOKEN = re.compile(r"(?:[a-z]\.){2,}|\d+:\d+|n't|'[a-z]+|\w+(?:[-./]\w+)*|\S")


def simple_tokenize(text: str) -> str:
    """The no-Java stand-in for the PTB tokenizer: lower-cased tokens joined by single spaces.

    Mimics Stanford PTBTokenizer -lowerCase + pycocoevalcap's punctuation filter on
    caption-like text: clitics split off as PTB does ("don't" -> "do n't", "cat's" -> "cat 's",
    "cannot" -> "can not"), words keep inner hyphens, periods and slashes ("t-shirt", "1.5"),
    abbreviations keep their periods ("u.s."), brackets become "-lrb-" etc. (kept, as
    pycocoevalcap keeps them), every other symbol is a token of its own, and tokens in
    PTB_PUNCTUATION and double quotes are dropped. It differs from PTB on rarer cases (e.g.
    "rock'n'roll"), which is why results computed with it are labelled as not PTB-tokenised.
    """
    text = text.lower().replace("\n", " ")
    text = _PTB_SPLIT_RE.sub(lambda m: _PTB_SPLITS[m.group(1)], _CONTRACTION.sub(r" \1", text))
    tokens = [_BRACKETS.get(t, t) for t in _TOKEN.findall(text)]
    return " ".join(t for t in tokens if t not in PTB_PUNCTUATION and t != '"')


def _ptb_tokenize(texts: dict[str, list[str]]) -> dict[str, list[str]]:
    """pycocoevalcap's PTBTokenizer (one JVM) on every non-empty text; empty stays empty.

    Empty captions are kept out of the tokenizer's input: its output is matched to its input
    line by line, so a line the tokenizer dropped would shift every caption after it.
    """
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    flat = [(k, i, t) for k, ts in texts.items() for i, t in enumerate(ts)]
    todo = {f"{n}": [{"caption": t}] for n, (_, _, t) in enumerate(flat) if t.strip()}
    done = PTBTokenizer().tokenize(todo) if todo else {}
    out: dict[str, list[str]] = {k: [""] * len(ts) for k, ts in texts.items()}
    for n, (k, i, _) in enumerate(flat):
        if f"{n}" in done:
            out[k][i] = done[f"{n}"][0]
    return out


def caption_scores(
    references: dict[str, list[str]],
    predictions: dict[str, str],
    use_java: bool | None = None,
) -> CaptionScores:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr (x100) of one prediction per id against its references.

    references: id -> one or more reference captions (e.g. a YouCook2 segment, an MSR-VTT
    video's 20 sentences); predictions: id -> the generated caption, for exactly those ids.
    use_java: None = PTB + METEOR when `java` is on PATH, else the labelled fallback; True
    requires Java. Raises ValueError on mismatched ids or an id without a non-blank reference.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    _check_ids("caption_scores", references, predictions)
    # A blank reference is no reference: all-blank ones would crash CIDEr's document frequencies.
    empty = [k for k, refs in references.items() if not any(r.strip() for r in refs)]
    if empty:
        raise ValueError(f"caption_scores: {len(empty)} ids have no reference (e.g. {empty[:5]})")
    java = shutil.which("java") is not None if use_java is None else use_java
    if use_java and shutil.which("java") is None:
        raise RuntimeError("caption_scores(use_java=True): no `java` on PATH")
    ids = list(references)
    meteor = None
    if java:
        from pycocoevalcap.meteor.meteor import Meteor

        meteor = Meteor()  # its JVM loads the paraphrase table while the PTB tokenizer runs
        tokens = _ptb_tokenize(
            {**{f"r{i}": list(references[k]) for i, k in enumerate(ids)},
             **{f"p{i}": [predictions[k]] for i, k in enumerate(ids)}}
        )  # fmt: skip
        gts = {k: tokens[f"r{i}"] for i, k in enumerate(ids)}
        res = {k: tokens[f"p{i}"] for i, k in enumerate(ids)}
    else:
        gts = {k: [simple_tokenize(r) for r in references[k]] for k in ids}
        res = {k: [simple_tokenize(predictions[k])] for k in ids}
    try:
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        scores = {f"BLEU-{n + 1}": 100 * float(b) for n, b in enumerate(bleu)}
        scores["METEOR"] = 100 * float(meteor.compute_score(gts, res)[0]) if meteor else math.nan
    finally:
        del meteor  # pycocoevalcap's Meteor.__del__ closes and reaps the JVM
    scores["ROUGE-L"] = 100 * float(Rouge().compute_score(gts, res)[0])
    scores["CIDEr"] = 100 * float(Cider().compute_score(gts, res)[0])
    ordered = {k: scores[k] for k in CAPTION_KEYS}
    return CaptionScores(ordered, "ptb" if java else "simple", () if java else ("METEOR",))


def format_caption_scores(scores: CaptionScores) -> str:
    """A one-row markdown table, labelled when the figures are not the PTB-tokenised protocol."""
    cells = ["n/a" if math.isnan(v) else f"{v:.2f}" for v in scores.values()]
    lines = [
        "| " + " | ".join(scores) + " |",
        "|" + "---|" * len(scores),
        "| " + " | ".join(cells) + " |",
    ]
    if not scores.ptb_tokenized:
        unavailable = ", ".join(scores.unavailable) or "none"
        lines.append(
            f"\nNot PTB-tokenised (no Java): simple tokenizer; unavailable: {unavailable}. "
            "Not comparable with published pycocoevalcap figures."
        )
    return "\n".join(lines)


# --- question answering -----------------------------------------------------------------------

# Answer normalisation of the official VQA evaluation (GT-Vision-Lab/VQA,
# PythonEvaluationTools/vqaEvaluation/vqaEval.py), reproduced with its quirks: the prediction is
# always normalised, the ten answers only get the punctuation step and only when they disagree,
# keys with capitals ("Im") can never match after lower-casing, and "somebody'd" maps to
# "somebodyd".
VQA_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
                   ">", "<", "@", "`", ",", "?", "!")  # fmt: skip
VQA_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
               "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}  # fmt: skip
VQA_ARTICLES = ("a", "an", "the")
_VQA_CONTRACTIONS_TEXT = """
aint:ain't arent:aren't cant:can't couldve:could've couldnt:couldn't couldn'tve:couldn't've
couldnt've:couldn't've didnt:didn't doesnt:doesn't dont:don't hadnt:hadn't hadnt've:hadn't've
hadn'tve:hadn't've hasnt:hasn't havent:haven't hed:he'd hed've:he'd've he'dve:he'd've hes:he's
howd:how'd howll:how'll hows:how's Id've:I'd've I'dve:I'd've Im:I'm Ive:I've isnt:isn't itd:it'd
itd've:it'd've it'dve:it'd've itll:it'll let's:let's maam:ma'am mightnt:mightn't
mightnt've:mightn't've mightn'tve:mightn't've mightve:might've mustnt:mustn't mustve:must've
neednt:needn't notve:not've oclock:o'clock oughtnt:oughtn't ow's'at:'ow's'at 'ows'at:'ow's'at
'ow'sat:'ow's'at shant:shan't shed've:she'd've she'dve:she'd've she's:she's shouldve:should've
shouldnt:shouldn't shouldnt've:shouldn't've shouldn'tve:shouldn't've somebody'd:somebodyd
somebodyd've:somebody'd've somebody'dve:somebody'd've somebodyll:somebody'll
somebodys:somebody's someoned:someone'd someoned've:someone'd've someone'dve:someone'd've
someonell:someone'll someones:someone's somethingd:something'd somethingd've:something'd've
something'dve:something'd've somethingll:something'll thats:that's thered:there'd
thered've:there'd've there'dve:there'd've therere:there're theres:there's theyd:they'd
theyd've:they'd've they'dve:they'd've theyll:they'll theyre:they're theyve:they've twas:'twas
wasnt:wasn't wed've:we'd've we'dve:we'd've weve:we've werent:weren't whatll:what'll
whatre:what're whats:what's whatve:what've whens:when's whered:where'd wheres:where's
whereve:where've whod:who'd whod've:who'd've who'dve:who'd've wholl:who'll whos:who's
whove:who've whyll:why'll whyre:why're whys:why's wont:won't wouldve:would've wouldnt:wouldn't
wouldnt've:wouldn't've wouldn'tve:wouldn't've yall:y'all yall'll:y'all'll y'allll:y'all'll
yall'd've:y'all'd've y'alld've:y'all'd've y'all'dve:y'all'd've youd:you'd youd've:you'd've
you'dve:you'd've youll:you'll youre:you're youve:you've
"""
VQA_CONTRACTIONS = dict(pair.split(":", 1) for pair in _VQA_CONTRACTIONS_TEXT.split())
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
# The official pattern, typo included: "(?!<=\d)" is a negative look-ahead for "<=" + digit,
# so a period is removed unless a digit follows it.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")


def vqa_process_punctuation(text: str) -> str:
    """The official processPunctuation: strip or space out punctuation, drop bare periods."""
    out = text
    for p in VQA_PUNCTUATION:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    # The official call passes re.UNICODE positionally, i.e. as count: at most 32 periods go.
    return _PERIOD_STRIP.sub("", out, count=int(re.UNICODE))


def vqa_process_digit_article(text: str) -> str:
    """The official processDigitArticle: lower-case, number words -> digits, drop articles."""
    words = [VQA_NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(VQA_CONTRACTIONS.get(w, w) for w in words if w not in VQA_ARTICLES)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Official VQA accuracy of one prediction against its ten annotator answers, in [0, 1].

    min(#other annotators who gave the prediction / 3, 1), averaged over the ten ways of
    leaving one annotator out.
    """
    pred = prediction.replace("\n", " ").replace("\t", " ").strip()
    pred = vqa_process_digit_article(vqa_process_punctuation(pred))
    gts = list(answers)
    if len(set(gts)) > 1:
        gts = [vqa_process_punctuation(a) for a in gts]
    per_subset = [
        min(1.0, sum(1 for j, a in enumerate(gts) if j != i and a == pred) / 3)
        for i in range(len(gts))
    ]
    return sum(per_subset) / len(per_subset)


def qa_accuracy(answers: dict[str, str | list[str]], predictions: dict[str, str]) -> float:
    """Accuracy in percent of one predicted answer per question id.

    answers: question id -> its answer (a string, or a list of one: exact match, no
    normalisation, the MSRVTT-QA / MSVD-QA / ActivityNet-QA / TGIF FrameQA convention) or its
    ten annotator answers (the official VQA accuracy, see `vqa_accuracy`). Any other number of
    answers raises ValueError: the VQA formula is defined for ten.
    """
    _check_ids("qa_accuracy", answers, predictions)
    total = 0.0
    for qid, answer in answers.items():
        pred = predictions[qid]
        if isinstance(answer, str):
            total += pred == answer
        elif len(answer) == 1:
            total += pred == answer[0]
        elif len(answer) == 10:
            total += vqa_accuracy(pred, answer)
        else:
            raise ValueError(
                f"qa_accuracy: question {qid!r} has {len(answer)} answers; expected 1 "
                "(exact match) or 10 (VQA accuracy)"
            )
    return 100.0 * total / len(answers)
