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


def test_words_on_clip_boundaries_follow_half_open_spans():
    """A midpoint exactly on a boundary belongs to the clip that starts there ([start, end)); one
    exactly at the end of the last clip is past the video."""
    words = [
        Word("a", 1.4, 1.6, 0.9),  # midpoint 1.5: start of clip 1
        Word("b", 2.9, 3.1, 0.9),  # midpoint 3.0: start of clip 2
        Word("c", 5.9, 6.1, 0.9),  # midpoint 6.0: end of the last clip, dropped
        Word("d", 0.0, 0.0, 0.9),  # midpoint 0.0: start of clip 0
    ]
    t = Transcript("subtitles", "x.vtt", "en", [Sentence("a b c d", 0.0, 6.1, words)])
    got = [[x["text"] for x in c] for c in words_per_clip(SPANS, t)]
    assert got == [["d"], ["a"], ["b"], []]


def test_align_payload_is_exact():
    """The clips.json payload literally: times rounded to 4 decimals, words with their times."""
    spans = [(0.0, 1.501557), (1.501557, 3.003114)]  # 5 decimals would differ
    words = [Word("spin", 1.4, 1.7, 0.9), Word("it", 0.2, 0.3, 0.8)]
    t = Transcript("whisper", "tiny.en", "en", [Sentence("spin it", 0.2, 1.7, words)])
    clips, asr = align(spans, t)
    assert clips == {
        "clips": [
            {"start": 0.0, "end": 1.5016, "words": [{"text": "it", "start": 0.2, "end": 0.3}]},
            {
                "start": 1.5016,
                "end": 3.0031,
                "words": [{"text": "spin", "start": 1.4, "end": 1.7}],
            },
        ]
    }
    assert asr["sentences"][0]["clips"] == [0, 2]
    assert asr["sentences"][0]["text"] == "spin it"
