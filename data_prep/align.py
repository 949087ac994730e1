"""Stage 4: align transcript words and sentences with clips.

* A word belongs to the clip that contains its midpoint (a word straddling a clip boundary goes
  to the clip holding most of it).
* A sentence's video segment is every clip that overlaps its time span: VideoBERT "treat[s] video
  tokens that fall into that time period as a segment" (methods.md 1.2). The rule lives in
  pipeline/clips.py, shared with the fine-tuning annotation join.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

from data_prep.asr import Transcript
from pipeline.clips import sentence_clip_range


def words_per_clip(
    spans: Sequence[tuple[float, float]], transcript: Transcript
) -> list[list[dict]]:
    """For each clip span [start, end), the words whose midpoint falls inside it."""
    starts = [s for s, _ in spans]
    out: list[list[dict]] = [[] for _ in spans]
    for word in transcript.words:
        mid = 0.5 * (word.start + word.end)
        i = bisect.bisect_right(starts, mid) - 1
        if 0 <= i < len(spans) and spans[i][0] <= mid < spans[i][1]:
            out[i].append({"text": word.text, "start": word.start, "end": word.end})
    return out


def align(spans: Sequence[tuple[float, float]], transcript: Transcript) -> tuple[dict, dict]:
    """-> (clips.json payload without fps settings, asr.json payload with each sentence's clips)."""
    clip_words = words_per_clip(spans, transcript)
    clips = [
        {"start": round(s, 4), "end": round(e, 4), "words": words}
        for (s, e), words in zip(spans, clip_words, strict=True)
    ]
    asr: dict[str, Any] = transcript.to_json()
    for sent, sent_json in zip(transcript.sentences, asr["sentences"], strict=True):
        sent_json["clips"] = list(sentence_clip_range(spans, sent.start, sent.end))
    return {"clips": clips}, asr
