"""finetune.metrics on hand-computed cases (the no-Java path) and, slow, the Java path.

Hand computations follow pycocoevalcap 1.2's scorers: BLEU with its tiny (1e-15) / small (1e-9)
smoothing and the closest-reference brevity penalty, ROUGE-L with beta 1.2, CIDEr-D with IDF
from the evaluated references, sigma 6 and the x10 factor.
"""

import math
import re
import shutil

import pytest

from finetune.metrics import (
    CAPTION_KEYS,
    CaptionScores,
    caption_scores,
    format_caption_scores,
    qa_accuracy,
    simple_tokenize,
    vqa_accuracy,
    vqa_process_digit_article,
    vqa_process_punctuation,
)

TINY, SMALL = 1e-15, 1e-9

# Video a: a shortened prediction; video b: exact. No n-gram is shared between the two videos,
# so every reference n-gram has document frequency 1 and IDF weight log(2) - log(1).
REFS = {"a": ["The red square spins."], "b": ["a blue cross jumps"]}
PREDS = {"a": "the red square", "b": "A blue cross jumps!"}


def test_caption_scores_hand_computed_without_java(capsys):
    s = caption_scores(REFS, PREDS, use_java=False)
    assert capsys.readouterr().out == ""  # pycocoevalcap's BLEU prints its counts unless told
    assert list(s) == list(CAPTION_KEYS)
    assert s.tokenizer == "simple" and not s.ptb_tokenized and s.unavailable == ("METEOR",)
    assert math.isnan(s["METEOR"])
    # BLEU (corpus level): every n-gram of the predictions is correct (7, 5, 3, 1 of them);
    # 7 predicted words against 8 reference words: brevity penalty exp(1 - 8/7).
    bp = math.exp(1 - (8 + SMALL) / (7 + TINY))
    prod = 1.0
    for n, count in enumerate((7, 5, 3, 1), start=1):
        prod *= (count + TINY) / (count + SMALL)
        assert s[f"BLEU-{n}"] == pytest.approx(100 * bp * prod ** (1 / n), rel=1e-9)
    # ROUGE-L: a: LCS 3, P = 1, R = 3/4, F = (1 + 1.2^2) P R / (R + 1.2^2 P); b: 1.
    f_a = (1 + 1.44) * 1 * 0.75 / (0.75 + 1.44 * 1)
    assert s["ROUGE-L"] == pytest.approx(100 * (f_a + 1) / 2)
    # CIDEr-D: b scores 10 (cosine 1 for n = 1..4). a: cosines sqrt(3)/sqrt(3*4), 2/sqrt(2*3),
    # 1/sqrt(1*2) and 0 (no 4-gram), times the length penalty exp(-(2 - 3)^2 / (2 * 6^2))
    # (lengths counted in bigrams), averaged over n, x10.
    cos = [3 / math.sqrt(3 * 4), 2 / math.sqrt(2 * 3), 1 / math.sqrt(1 * 2), 0.0]
    cider_a = 10 * sum(cos) / 4 * math.exp(-1 / 72)
    assert s["CIDEr"] == pytest.approx(100 * (cider_a + 10) / 2, rel=1e-9)


def test_caption_scores_one_perfect_video():
    s = caption_scores({"v": ["the red square spins"]}, {"v": "the red square spins"}, False)
    for n in range(1, 5):
        assert s[f"BLEU-{n}"] == pytest.approx(100, rel=1e-5)
    assert s["ROUGE-L"] == pytest.approx(100)
    assert s["CIDEr"] == 0  # IDF from the references: with one video every n-gram weighs 0


def test_caption_scores_bad_input():
    with pytest.raises(ValueError, match=r"^caption_scores: .* 1 without a prediction"):
        caption_scores(REFS, {"a": "x"}, use_java=False)
    with pytest.raises(ValueError, match="1 without a reference"):
        caption_scores({"a": ["x"]}, {"a": "x", "z": "y"}, use_java=False)
    with pytest.raises(
        ValueError, match=r"^caption_scores: 1 ids have no reference \(e.g. \['a'\]"
    ):
        caption_scores({"a": []}, {"a": "x"}, use_java=False)
    with pytest.raises(  # blank references are none (CIDEr would crash on them)
        ValueError, match=r"^caption_scores: 1 ids have no reference \(e.g. \['b'\]"
    ):
        caption_scores({"a": ["", "a cat"], "b": [" "]}, {"a": "x", "b": "y"}, use_java=False)
    with pytest.raises(ValueError, match=r"^caption_scores: nothing to score \(no references\)$"):
        caption_scores({}, {}, use_java=False)


def test_bad_ids_are_named_five_at_most():
    refs = {k: ["a cat"] for k in "abcdefg"}  # 7 ids, none predicted
    preds = {k: "a cat" for k in "uvwxyz"}  # 6 ids, none referenced
    message = (
        "caption_scores: predictions and references must have the same ids; "
        "7 without a prediction (e.g. ['a', 'b', 'c', 'd', 'e']), "
        "6 without a reference (e.g. ['u', 'v', 'w', 'x', 'y'])"
    )
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        caption_scores(refs, preds, use_java=False)
    message = "caption_scores: 6 ids have no reference (e.g. ['a', 'b', 'c', 'd', 'e'])"
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        caption_scores({k: [] for k in "abcdef"}, {k: "x" for k in "abcdef"}, use_java=False)


def test_caption_scores_without_java_on_path(monkeypatch, tmp_path):
    """No `java`: the default falls back (labelled), use_java=False never asks, True refuses."""
    asked: list[str] = []
    monkeypatch.setattr(shutil, "which", lambda name: asked.append(name))  # finds nothing
    monkeypatch.setenv("PATH", str(tmp_path))  # nor could a JVM subprocess start
    s = caption_scores(REFS, PREDS)
    assert asked == ["java"]
    assert s.tokenizer == "simple" and not s.ptb_tokenized and s.unavailable == ("METEOR",)
    asked.clear()
    off = caption_scores(REFS, PREDS, use_java=False)
    assert asked == []
    assert off.tokenizer == "simple" and off["CIDEr"] == s["CIDEr"]
    with pytest.raises(RuntimeError, match=r"^caption_scores\(use_java=True\): no `java` on PATH$"):
        caption_scores(REFS, PREDS, use_java=True)
    assert asked == ["java"]


def test_caption_scores_attributes():
    ptb = CaptionScores({"BLEU-1": 50.0}, "ptb", ())
    assert dict(ptb) == {"BLEU-1": 50.0}
    assert (ptb.tokenizer, ptb.ptb_tokenized, ptb.unavailable) == ("ptb", True, ())
    simple = CaptionScores({"BLEU-1": 50.0}, "simple", ("METEOR",))
    assert (simple.tokenizer, simple.ptb_tokenized, simple.unavailable) == (
        "simple",
        False,
        ("METEOR",),
    )


def test_format_labels_the_fallback():
    text = format_caption_scores(caption_scores(REFS, PREDS, use_java=False))
    assert "| n/a |" in text and "Not PTB-tokenised" in text and "METEOR" in text


TABLE_VALUES = [76.13, 5.0, 0.004, 100.0, math.nan, 70.8904, 531.5275]
TABLE_HEAD = (
    "| BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | METEOR | ROUGE-L | CIDEr |\n"
    "|---|---|---|---|---|---|---|\n"
)


def test_format_caption_scores_exact_text():
    simple = CaptionScores(
        dict(zip(CAPTION_KEYS, TABLE_VALUES, strict=True)), "simple", ("METEOR",)
    )
    assert format_caption_scores(simple) == (
        TABLE_HEAD + "| 76.13 | 5.00 | 0.00 | 100.00 | n/a | 70.89 | 531.53 |\n"
        "\n"
        "Not PTB-tokenised (no Java): simple tokenizer; unavailable: METEOR. "
        "Not comparable with published pycocoevalcap figures."
    )
    values = dict(zip(CAPTION_KEYS, TABLE_VALUES, strict=True), METEOR=25.5)
    assert format_caption_scores(CaptionScores(values, "ptb", ())) == (
        TABLE_HEAD + "| 76.13 | 5.00 | 0.00 | 100.00 | 25.50 | 70.89 | 531.53 |"
    )  # the published protocol: no label
    two = CaptionScores(values, "simple", ("METEOR", "CIDEr"))
    assert "; unavailable: METEOR, CIDEr. Not comparable" in format_caption_scores(two)
    # Not PTB-tokenised with nothing unavailable: the label still says so.
    assert format_caption_scores(CaptionScores(values, "simple", ())).endswith(
        "\n\nNot PTB-tokenised (no Java): simple tokenizer; unavailable: none. "
        "Not comparable with published pycocoevalcap figures."
    )


def test_simple_tokenizer_follows_ptb_conventions():
    assert simple_tokenize("The man's dog doesn't run.") == "the man 's dog does n't run"
    assert (
        simple_tokenize("A t-shirt (red) costs $5.50!") == "a t-shirt -lrb- red -rrb- costs $ 5.50"
    )
    assert simple_tokenize("U.S. army; cannot go") == "u.s. army can not go"
    assert simple_tokenize("") == ""
    # Line breaks separate words; double quotes are dropped (PTB turns them into `` and '').
    assert simple_tokenize("Two\nLines") == "two lines"
    assert simple_tokenize('He said "hi"') == "he said hi"


def test_qa_exact_match_has_no_normalisation():
    answers = {"q1": "man", "q2": "dog", "q3": "Cat", "q4": ["star"]}
    preds = {"q1": "man", "q2": "cat", "q3": "cat", "q4": "star"}
    assert qa_accuracy(answers, preds) == pytest.approx(50.0)  # q1 and q4; "Cat" != "cat"


@pytest.mark.parametrize(
    ("prediction", "answers", "expected"),
    [
        # 1 of 10 annotators: the 9 subsets without it score 1/3, the other 0 -> 0.3.
        ("yes", ["yes"] + ["no"] * 9, 0.3),
        # 2 of 10: 2 subsets score 1/3, 8 score 2/3 -> 0.6.
        ("yes", ["yes"] * 2 + ["no"] * 8, 0.6),
        ("yes", ["yes"] * 3 + ["no"] * 7, 0.9),
        ("yes", ["yes"] * 4 + ["no"] * 6, 1.0),
        # The prediction is normalised ("A dog." -> "dog"); identical answers are not touched.
        ("A dog.", ["dog"] * 10, 1.0),
        # Number words become digits in the prediction only: "two" -> "2" matches the three
        # "2" answers but the annotator's "two" stays as it is: 3 x 2/3 + 7 x 1 over 10.
        ("two", ["2"] * 3 + ["two"] + ["3"] * 6, 0.9),
        # Answers that disagree get the punctuation step ("black-white" -> "black white").
        ("black white", ["black-white"] * 3 + ["gray"] * 7, 0.9),
        # ... and identical answers do not: the prediction "black-white" becomes "black white"
        # ("-" has no space beside it: spaced out), the ten answers stay "black-white".
        ("black-white", ["black-white"] * 10, 0.0),
        # Line breaks and tabs in the prediction become spaces before the punctuation step, so
        # "-" now has a space beside it and is removed everywhere: "a-b - c" -> "ab  c" ->
        # "ab c" (with the raw "\n" it would be spaced out: "a b c").
        ("a-b\n-\nc", ["ab c"] * 10, 1.0),
        ("a-b\t-\tc", ["ab c"] * 10, 1.0),
    ],
)
def test_vqa_accuracy_hand_computed(prediction, answers, expected):
    assert vqa_accuracy(prediction, answers) == pytest.approx(expected)


def test_vqa_normalisation_steps():
    # "," is followed by a space: removed; "!" is not: a space (dropped later by the split).
    assert vqa_process_punctuation("hello, world!") == "hello world "
    assert vqa_process_punctuation("black/white") == "black white"  # no space: spaced out
    assert vqa_process_punctuation("1,000 dogs.") == "1000 dogs"  # digit comma: all removed
    assert vqa_process_punctuation("3.5") == "3.5"  # a period before a digit stays
    assert vqa_process_punctuation("a !b") == "a b"  # a space before "!": removed
    # The official re.UNICODE passed as `count` (32): a 33rd bare period stays.
    assert vqa_process_punctuation("." * 33) == "."
    assert vqa_process_digit_article("The Two dont") == "2 don't"


def test_qa_accuracy_mixes_protocols_and_rejects_bad_input():
    answers = {"q1": "star", "q2": ["yes"] * 2 + ["no"] * 8}
    assert qa_accuracy(answers, {"q1": "star", "q2": "yes"}) == pytest.approx(100 * 1.6 / 2)
    message = (
        "qa_accuracy: question 'q' has 3 answers; expected 1 (exact match) or 10 (VQA accuracy)"
    )
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        qa_accuracy({"q": ["a", "b", "c"]}, {"q": "a"})
    message = (
        "qa_accuracy: predictions and references must have the same ids; "
        "1 without a prediction (e.g. ['r']), 0 without a reference (e.g. [])"
    )
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        qa_accuracy({"q": "a", "r": "b"}, {"q": "a"})
    with pytest.raises(ValueError, match=r"^qa_accuracy: nothing to score"):
        qa_accuracy({}, {})


@pytest.mark.slow
@pytest.mark.java
@pytest.mark.skipif(shutil.which("java") is None, reason="needs Java (PTB tokenizer, METEOR)")
def test_caption_scores_with_java_ptb_and_meteor():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    refs = {**REFS, "c": ["the green star jumps", "a star is jumping"], "d": ["a heart"]}
    preds = {**PREDS, "c": "the green star jumps", "d": ""}  # an empty caption is allowed
    java = caption_scores(refs, preds)  # the default: the published protocol when Java is there
    simple = caption_scores(refs, preds, use_java=False)
    assert java.tokenizer == "ptb" and java.ptb_tokenized and java.unavailable == ()
    # On such plain captions both tokenizers agree, so the pure-Python metrics do too.
    for key in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"):
        assert java[key] == pytest.approx(simple[key])
    # METEOR 1.5 (en: alpha 0.85, beta 0.2, gamma 0.6, delta 0.75) on the statistics summed over
    # the four videos, the best reference of c (the exact one) counting. Every predicted word
    # matches exactly: P = 1. Reference words: 14, of which 4 function words ("the" x2, "a" x2),
    # matched 8 of 10 content words ("spins", "heart" not) and 3 of 4 function words:
    # R = (0.75 * 8 + 0.25 * 3) / (0.75 * 10 + 0.25 * 4); Fmean = P R / (0.85 P + 0.15 R).
    # Chunks: 1 (video a; an exact match counts none), over 11 matched words: the penalty is
    # 0.6 * (1 / 11) ** 0.2.
    recall = (0.75 * 8 + 0.25 * 3) / (0.75 * 10 + 0.25 * 4)
    fmean = recall / (0.85 + 0.15 * recall)
    assert java["METEOR"] == pytest.approx(100 * fmean * (1 - 0.6 * (1 / 11) ** 0.2), rel=1e-6)
    sentences = [
        "The man's dog doesn't run.",
        "A t-shirt (red) costs $5.50!",
        'He said "hi" -- then left...',
        "it's 1.5 s long, isn't it?",
        "U.S. army; cannot go, I'm gonna stay",
    ]
    ptb = PTBTokenizer().tokenize({str(i): [{"caption": s}] for i, s in enumerate(sentences)})
    assert [ptb[str(i)][0] for i in range(len(sentences))] == list(map(simple_tokenize, sentences))
