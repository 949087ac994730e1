"""Which Whisper segments become pretraining text, and how many words each filter dropped.

Whisper decodes 30 s windows; every segment of a window shares the window's `avg_logprob`,
`compression_ratio` (gzip ratio of the window's text) and `no_speech_prob`. Music, noise and
speech-like non-speech make it invent text, sometimes as a loop that repeats one phrase. A
segment is dropped, for the first reason that applies, when

1. `low_logprob`: its window's avg_logprob is below `logprob_threshold` (the decoder is unsure);
2. `low_word_prob`: its words' mean probability is below `min_word_prob` (crowd noise gives words
   of probability 0.05-0.5, measured on a weightlifting clip; clear speech stays above 0.8);
3. `repetition`: its window's compression ratio is above `compression_ratio_threshold` AND the
   window's words do not look like confident speech (`is_speech_like`);
4. `no_speech`: its window's no_speech_prob is above `no_speech_threshold` AND, again, the
   window's words do not look like confident speech.

Why 3 and 4 ask a second question (issue 8, item 3). A window of narration that repeats a phrase
("keep stirring, keep stirring", an exercise count) compresses as well as a hallucination loop
(ratios 3.1-9.6 measured on espeak-ng narration repeated for 75 s), and synthetic voices get a
no_speech_prob of 0.4-0.9 on clear speech. Dropping on either signal alone lost most of such
narration (240 words -> 20 in the issue; 0 of 270 words in a 90 s espeak-ng check). Neither
reference drops on the ratio: in faster-whisper (and openai-whisper) a high ratio only triggers a
temperature fallback, and the silence skip needs a high no_speech_prob AND a low logprob;
whisperX's batched decoding applies neither and relies on VAD. We do not use the fallback for the
ratio either (`Transcriber._decode`): resampling repeated narration at a higher temperature gave
worse text that then wins because its ratio is lower, or that Whisper skips as silence (two of
three windows lost, 10x the decoding time, measured).

Repetition and no-speech stay signals, though: without them, time-reversed speech (real audio
that sounds like speech) passes filters 1-2 as loops such as "The first symbol is the first
symbol ..." (mean word probability 0.58-0.88). What separates such loops from repeated speech is
how the words sit on the audio: a loop's words are squeezed into a few tens of milliseconds or
stretched over seconds. `word_anomaly` is Whisper's own score for that (openai-whisper
`transcribe.py`, `word_anomaly_score`, used there to spot hallucinations around silences):
+1 for a word of probability < 0.15, +15 per second of duration below 0.133 s, +1 per second
above 2 s. Measured per window (tiny.en, int8, greedy; repeated narration in 5 espeak-ng voices
and speeds; 4 time-reversed recordings in 3 voices): repeated speech has a mean anomaly of
0.00-0.80 and a mean word probability of 0.85-0.96; reversed-speech loops have 0.98-1.63 and
0.58-0.88, and every loop fails at least one of the two bars (`confident_word_prob` 0.8,
`max_word_anomaly` 1.0). A decoder loop that runs past real repeated speech (223 words in a 30 s
window holding ~90) fails the anomaly bar too and is dropped, which is right: its extra copies
have no audio behind them. Not caught, before or after this change: invented text that does not
repeat, on speech-like noise, with words above `min_word_prob` (one reversed-speech clip gave
"So I'm using the new world even big net, it was 600.", mean word probability 0.53).

Windows Whisper skips itself (no_speech_prob above the threshold with a low logprob) and audio
the VAD removes produce no text, so they are not counted. Legend: words as `Word` (transcript.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np

from data_prep.transcript import Word

FILTERS = ("low_logprob", "low_word_prob", "repetition", "no_speech")


class FilterSettings(Protocol):
    """The ASRSettings fields the filter reads."""

    logprob_threshold: float
    min_word_prob: float
    compression_ratio_threshold: float
    no_speech_threshold: float
    confident_word_prob: float
    max_word_anomaly: float


def is_word(w: Word) -> bool:
    """A spoken word, not punctuation alone (the same test transcript.clean_words applies)."""
    return any(c.isalnum() for c in w.text)


def word_anomaly(w: Word) -> float:
    """Whisper's per-word anomaly score (module docstring): 0 for a plausibly timed, sure word."""
    duration = w.end - w.start
    score = 1.0 if w.prob < 0.15 else 0.0
    if duration < 0.133:
        score += (0.133 - duration) * 15
    if duration > 2.0:
        score += duration - 2.0
    return score


def is_speech_like(words: list[Word], s: FilterSettings) -> bool:
    """Confident, plausibly timed words: mean probability >= confident_word_prob and mean
    anomaly <= max_word_anomaly over the spoken words of one window (True when there are none)."""
    spoken = [w for w in words if is_word(w)]
    if not spoken:
        return True
    prob = float(np.mean([w.prob for w in spoken]))
    anomaly = float(np.mean([word_anomaly(w) for w in spoken]))
    return prob >= s.confident_word_prob and anomaly <= s.max_word_anomaly


def _mean_prob(words: list[Word]) -> float:
    return float(np.mean([w.prob for w in words])) if words else 1.0


def drop_reason(seg: dict[str, Any], speech_like: bool, s: FilterSettings) -> str | None:
    """The first filter (FILTERS order) that drops segment `seg`, or None to keep it.

    seg: {"avg_logprob", "compression_ratio", "no_speech_prob", "words"}; speech_like: the
    `is_speech_like` verdict on the segment's whole window.
    """
    if seg["avg_logprob"] < s.logprob_threshold:
        return "low_logprob"
    if _mean_prob(seg["words"]) < s.min_word_prob:
        return "low_word_prob"
    if seg["compression_ratio"] > s.compression_ratio_threshold and not speech_like:
        return "repetition"
    if seg["no_speech_prob"] > s.no_speech_threshold and not speech_like:
        return "no_speech"
    return None


def filter_segments(
    segments: Iterable[dict[str, Any]], s: FilterSettings
) -> tuple[list[Word], dict[str, dict[str, int]]]:
    """Kept words, in order, and {filter: {"segments": n, "words": n}} for every filter.

    segments: Whisper segments as {"seek", "avg_logprob", "compression_ratio", "no_speech_prob",
    "words"}; segments with the same "seek" belong to one decoding window.
    """
    segments = list(segments)
    window_words: dict[Any, list[Word]] = {}
    for seg in segments:
        window_words.setdefault(seg["seek"], []).extend(seg["words"])
    speech_like = {seek: is_speech_like(ws, s) for seek, ws in window_words.items()}
    kept: list[Word] = []
    dropped = {name: {"segments": 0, "words": 0} for name in FILTERS}
    for seg in segments:
        reason = drop_reason(seg, speech_like[seg["seek"]], s)
        if reason is None:
            kept.extend(seg["words"])
        else:
            dropped[reason]["segments"] += 1
            dropped[reason]["words"] += sum(map(is_word, seg["words"]))
    return kept, dropped
