"""Subtitle files (.vtt / .srt) next to a video -> Transcript, instead of running Whisper.

WebVTT (including YouTube's rolling auto-captions with inline word times) and SubRip. Markup,
cue settings, NOTE/STYLE blocks and sound descriptions ([Music], (applause)) are dropped.
"""

from __future__ import annotations

import html
import re
from glob import escape as glob_escape
from pathlib import Path

from data_prep.transcript import Transcript, Word, clean_words, split_sentences


class SubtitleParseError(ValueError):
    """A subtitle file holds no cue or a malformed timing line (the message names the file)."""


_TIME = r"(?:\d+:)?\d{1,2}:\d{2}[.,]\d{1,3}"
_TIMING = re.compile(rf"^\s*({_TIME})\s*-->\s*({_TIME})")
_INLINE_TIME = re.compile(r"<((?:\d+:)?\d{1,2}:\d{2}\.\d{3})>")  # YouTube word starts
_MARKUP = re.compile(r"</?[^>]*>|\{\\[^}]*\}")  # <c>, <i>, <v Name>, <font ...>, {\\an8}
# Sound descriptions are not speech: [Music], (applause), music notes.
_SOUND = re.compile(r"\[[^\]]*\]|\([^)]*\)|[♪♫]")


def _seconds(stamp: str) -> float:
    parts = stamp.replace(",", ".").split(":")
    return sum(float(p) * 60**i for i, p in enumerate(reversed(parts)))


def _plain(text: str) -> str:
    text = _SOUND.sub(" ", html.unescape(_MARKUP.sub("", text)))
    return " ".join(text.split())


def _cue_words(text: str, start: float, end: float) -> list[Word]:
    """Words of one cue: inline <hh:mm:ss.mmm> tags give word starts; text without tags is
    spread evenly over the span it has (the whole cue when there is no tag)."""
    pieces = _INLINE_TIME.split(text)  # [text, time, text, time, text, ...]
    starts = [start] + [min(max(_seconds(t), start), end) for t in pieces[1::2]]
    words = []
    for k, piece in enumerate(pieces[0::2]):
        tokens = _plain(piece).split()
        t0 = max(starts[k], words[-1].end if words else start)
        t1 = max(starts[k + 1] if k + 1 < len(starts) else end, t0)
        step = (t1 - t0) / max(len(tokens), 1)
        words += [Word(w, t0 + j * step, t0 + (j + 1) * step, 1.0) for j, w in enumerate(tokens)]
    return words


def read_subtitles(path: str | Path, max_words: int = 30, max_pause_s: float = 2.0) -> Transcript:
    """Parse a WebVTT or SubRip file into a Transcript (source "subtitles", prob 1 per word).

    Markup, cue settings (align:/position:), NOTE/STYLE blocks and sound descriptions are
    dropped. YouTube's rolling captions show each line twice (first as the new line, then as the
    top line of the next cue, plus 10 ms transition cues): a line equal to one of the previous
    cue's lines is a repeat and is skipped. Raises SubtitleParseError for a file with no cue.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8-sig", errors="replace").splitlines()
    language = ""
    cues: list[tuple[float, float, list[str]]] = []
    in_cue = False
    for number, line in enumerate(lines, 1):
        if m := _TIMING.match(line):
            start, end = _seconds(m[1]), _seconds(m[2])
            if end < start:
                raise SubtitleParseError(f"{path}:{number}: cue ends before it starts: {line!r}")
            if in_cue and cues[-1][2]:  # no empty line after the last cue: that line was
                cues[-1][2].pop()  # this cue's identifier (SRT number / VTT id), not text
            cues.append((start, end, []))
            in_cue = True
        elif not line:
            # An empty line ends a cue. A line of spaces does not: YouTube starts rolling cues
            # with a " " line.
            in_cue = False
        elif in_cue:
            cues[-1][2].append(line)
        elif not cues and line.lower().startswith("language:"):
            language = line.split(":", 1)[1].strip()
    if not cues and not (lines and lines[0].startswith("WEBVTT")):
        raise SubtitleParseError(f"{path}: no subtitle cue (expected WebVTT or SubRip)")
    words: list[Word] = []
    previous: set[str] = set()
    for start, end, text_lines in cues:
        shown = [_plain(_INLINE_TIME.sub("", t)).lower() for t in text_lines]
        kept = [t for t, key in zip(text_lines, shown, strict=True) if key and key not in previous]
        previous = set(shown)
        words += _cue_words(" ".join(kept), start, end) if kept else []
    words = clean_words(words, None)
    sentences = split_sentences(words, max_words, max_pause_s)
    return Transcript("subtitles", path.name, language, sentences)


def find_subtitles(video_path: str | Path) -> Path | None:
    """The subtitle file of a video: same stem, .vtt preferred over .srt, in the same folder;
    then yt-dlp's `<stem>.<lang>.vtt|srt` naming, English first. None when there is none."""
    video_path = Path(video_path)
    folder, stem = video_path.parent, video_path.stem
    for ext in (".vtt", ".srt"):
        if (candidate := folder / f"{stem}{ext}").is_file():
            return candidate
    for ext in (".vtt", ".srt"):
        tagged = sorted(folder.glob(f"{glob_escape(stem)}.*{ext}"))
        tagged.sort(key=lambda p: not p.name[len(stem) + 1 :].lower().startswith("en"))
        if tagged:
            return tagged[0]
    return None
