"""Words land in the clip holding their midpoint; sentences span the clips they overlap."""

from data_prep.align import align, sentence_clip_range, words_per_clip
from data_prep.asr import Sentence, Transcript, Word


def _transcript():
    w = [
        Word("now", 0.1, 0.4, 0.9),
        Word("spin", 1.4, 1.7, 0.9),  # midpoint 1.55 -> clip 1 (1.5-3.0)
        Word("the", 2.9, 3.2, 0.9),  # midpoint 3.05 -> clip 2
        Word("square.", 3.3, 3.9, 0.9),
        Word("next", 6.1, 6.4, 0.9),  # after the last clip (0..6 s): dropped from clips
    ]
    return Transcript(
        source="subtitles",
        model="x.vtt",
        language="en",
        sentences=[
            Sentence("now spin the square.", 0.1, 3.9, w[:4]),
            Sentence("next", 6.1, 6.4, w[4:]),
        ],
    )


SPANS = [(0.0, 1.5), (1.5, 3.0), (3.0, 4.5), (4.5, 6.0)]


def test_words_per_clip_by_midpoint():
    got = [[x["text"] for x in c] for c in words_per_clip(SPANS, _transcript())]
    assert got == [["now"], ["spin"], ["the", "square."], []]


def test_sentence_clip_range():
    assert sentence_clip_range(SPANS, 0.1, 3.9) == (0, 3)
    assert sentence_clip_range(SPANS, 1.5, 3.0) == (1, 2)  # touching boundaries do not overlap
    assert sentence_clip_range(SPANS, 6.1, 6.4) == (4, 4)  # after the video: empty
    assert sentence_clip_range(SPANS, 4.6, 4.7) == (3, 4)


def test_align_payloads():
    clips, asr = align(SPANS, _transcript())
    assert len(clips["clips"]) == 4
    assert clips["clips"][2]["words"][1]["text"] == "square."
    assert asr["sentences"][0]["clips"] == [0, 3]
    assert asr["sentences"][1]["clips"] == [4, 4]
    assert asr["source"] == "subtitles"
