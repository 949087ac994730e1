"""Which clips a time span covers: the one rule shared by alignment and the annotation join.

Prep cuts every video into non-overlapping clips (methods.md 1.1: 1.5 s, 30 frames at 20 fps) and
records their [start, end) spans in clips.json. Two places need the clips of a time span:

* alignment (data_prep/align.py): an ASR sentence's video segment is every clip that overlaps
  its time span, VideoBERT "treat[s] video tokens that fall into that time period as a segment"
  (methods.md 1.2);
* fine-tuning (finetune/annotations.py): an annotated segment [start, end] (YouCook2 captions,
  Kinetics labels, ...) takes the clips that overlap it.

Both call `sentence_clip_range`, so a caption and a transcript sentence over the same seconds
get the same clips.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence


def sentence_clip_range(
    spans: Sequence[tuple[float, float]], start: float, end: float
) -> tuple[int, int]:
    """[first, stop) indices of the clips that overlap the time span [start, end] (seconds).

    ``spans``: the clips' [start, end) in seconds, sorted and non-overlapping (as prep writes
    them). Overlap is strict: a clip that only touches the span at a boundary is not taken, so
    a segment on the clip grid takes exactly its own clips. A span that overlaps no clip (after
    the video, or with end <= start) gives the empty range (len(spans), len(spans)).
    """
    n = len(spans)
    # first clip that ends after the span starts; O(log n), no copy of the spans
    first = bisect.bisect_right(spans, start, key=lambda span: span[1])
    if first >= n or spans[first][0] >= end:
        return n, n
    # first clip that starts at or after the span ends
    stop = bisect.bisect_left(spans, end, lo=first, key=lambda span: span[0])
    return first, stop
