"""Transcripts: timed words grouped into sentences, whatever produced them (Whisper, subtitles).

VideoBERT pairs each ASR sentence with the video tokens inside the sentence's [start, end]
(methods.md 1.2), so every word carries a start and end in seconds and words are grouped into
sentences: at punctuation, at long pauses, or after a maximum number of words.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Word:
    text: str  # as spoken, punctuation attached ("triangle."), no surrounding spaces
    start: float  # seconds
    end: float  # seconds, >= start
    prob: float  # recogniser confidence in [0, 1]; 1.0 for subtitles


@dataclass
class Sentence:
    text: str  # the words joined by single spaces
    start: float  # first word's start
    end: float  # last word's end
    words: list[Word]


@dataclass
class Transcript:
    source: str  # "faster-whisper" | "openai-whisper" | "subtitles" | "none"
    model: str  # model path/name or subtitle file name ("" for none)
    language: str  # ISO code ("en"), "" when unknown
    sentences: list[Sentence]
    # Whisper segments / words the segment filter dropped, per filter (data_prep/asr_filter.py):
    # {"repetition": {"segments": 2, "words": 18}, ...}; {} when no filter ran (subtitles, none).
    # Provenance, not text: prep writes it to meta.json, not to asr.json, and == ignores it.
    dropped: dict[str, dict[str, int]] = field(default_factory=dict, compare=False)

    @property
    def words(self) -> list[Word]:
        return [w for s in self.sentences for w in s.words]

    def to_json(self) -> dict[str, Any]:
        """The `asr.json` payload of a shard sample (pipeline/shards.py), minus the clip ranges."""
        d = asdict(self)
        del d["dropped"]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Transcript:
        sentences = [
            Sentence(
                s["text"],
                s["start"],
                s["end"],
                [Word(w["text"], w["start"], w["end"], w["prob"]) for w in s["words"]],
            )
            for s in d["sentences"]
        ]
        return cls(d["source"], d["model"], d["language"], sentences)


# --------------------------------------------------------------------------- sentences

_SENTENCE_END = (".", "?", "!", "…", "。", "？", "！")
_CLOSERS = "\"')]}”’»"
# Whisper writes these with a period; splitting after them would cut "Dr. Smith" in two.
_ABBREVIATIONS = {"mr.", "mrs.", "ms.", "dr.", "prof.", "st.", "vs.", "e.g.", "i.e.", "approx."}


def _ends_sentence(text: str) -> bool:
    core = text.rstrip(_CLOSERS)
    return core.endswith(_SENTENCE_END) and core.lower() not in _ABBREVIATIONS


def split_sentences(
    words: list[Word], max_words: int = 30, max_pause_s: float = 2.0
) -> list[Sentence]:
    """Group words into sentences: after a word ending in . ? !, before a pause longer than
    `max_pause_s`, and after `max_words` words when neither comes (unpunctuated captions)."""
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    sentences: list[Sentence] = []
    current: list[Word] = []

    def close() -> None:
        if current:
            text = " ".join(w.text for w in current)
            sentences.append(Sentence(text, current[0].start, current[-1].end, list(current)))
            current.clear()

    for word in words:
        # A sentence's [start, end] picks the clips it is paired with (methods.md 1.2): a long
        # silence inside one would pair it with video the narrator is not talking about. Pauses
        # also mark step changes in how-to narration, and ASR without punctuation (YouTube auto
        # captions, tiny models) gives no other boundary.
        if current and word.start - current[-1].end > max_pause_s:
            close()
        current.append(word)
        if _ends_sentence(word.text) or len(current) >= max_words:
            close()
    close()
    return sentences


def clean_words(words: list[Word], duration: float | None) -> list[Word]:
    """Drop punctuation-only words; clamp times into [0, duration] and make them monotonic.

    Whisper's cross-attention alignment can put a word's end past the next word's start at
    window edges; downstream alignment (data_prep/align.py) assumes ordered, disjoint words.
    """
    out: list[Word] = []
    last_end = 0.0
    for w in words:
        text = w.text.strip()
        if not any(c.isalnum() for c in text):
            continue
        start = max(float(w.start), last_end)
        end = max(float(w.end), start)
        if duration is not None:
            start, end = min(start, duration), min(end, duration)
        out.append(Word(text, start, end, float(w.prob)))
        last_end = end
    return out
