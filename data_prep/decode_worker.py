"""The part of prep that runs in worker processes: decode clips and audio of one video at a time.

A worker turns an `InputItem` into a stream of events that the main process (which owns the
models) consumes from a bounded queue, so a long or 4K video never sits in memory whole:

    ("start", key, pid)                      the worker took this input
    ("begin", key, {"bytes", "sha256"})
    ("info", key, VideoInfo as dict)
    ("clips", key, spans, frames, thumbs)    spans [(start, end, num_real_frames)] of n clips,
                                             frames uint8 [n, T, S, S, 3], thumbs uint8 [n, s, s, 3]
    ("speech", key, payload)                 {"audio": int16 [N] @16 kHz | None,
                                              "subtitles": Transcript json | None, "note": str}
    ("end", key, {"clips": n, "decode_seconds": t})   t: video and audio decoding
    ("error", key, stage, message)           the input failed at `stage`; nothing more follows
    ("log", key, level, message)             a warning logged while decoding (names the file)
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import os
import queue
import shutil
import signal
import tarfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from data_prep.asr import AudioDecodeError, load_audio, read_subtitles
from data_prep.inputs import InputItem
from data_prep.video import VideoDecodeError, iter_clips, probe_video
from pipeline.io import file_sha256
from pipeline.prep_config import PrepConfig

CLIPS_PER_EVENT = 8  # clips per queue message: bounds memory (8 x 30 x 224^2 x 3 = 36 MB)
SAMPLE_RATE = 16000


class StageError(Exception):
    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    """What a worker needs from the prep config (picklable, built only by `from_config`)."""

    decoder: str  # video.decoder
    fps: float  # video.fps
    clip_seconds: float  # video.clip_seconds
    size: int  # video.size
    thumbnail_size: int  # features.thumbnail_size
    asr_source: str  # asr.source: auto | whisper | subtitles | none

    @classmethod
    def from_config(cls, cfg: PrepConfig) -> DecodeSettings:
        v = cfg.video
        return cls(
            decoder=v.decoder,
            fps=v.fps,
            clip_seconds=v.clip_seconds,
            size=v.size,
            thumbnail_size=cfg.features.thumbnail_size,
            asr_source=cfg.asr.source,
        )


def materialize(ref: str, tmp_dir: Path) -> Path:
    """A local path for `ref`; members of video2dataset tars are extracted into `tmp_dir`."""
    if not ref.startswith("tar:"):
        return Path(ref)
    _, tar_path, member = ref.split(":", 2)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    # The member name comes from an untrusted tar: never use it as a path (no "../" escapes).
    dest = tmp_dir / f"{os.getpid()}-{abs(hash(ref))}{Path(member).suffix}"
    with tarfile.open(tar_path) as tf, open(dest, "wb") as out:
        src = tf.extractfile(member)
        if src is None:
            raise StageError("read", f"{member} is not a regular file in {tar_path}")
        shutil.copyfileobj(src, out)
    return dest


def _speech(item: InputItem, path: Path, has_audio: bool, s: DecodeSettings, tmp: Path) -> dict:
    """Subtitles when configured and present, else the 16 kHz audio for Whisper, else nothing."""
    if s.asr_source in ("auto", "subtitles") and item.subtitles:
        sub = materialize(item.subtitles, tmp)
        try:
            transcript = read_subtitles(sub)
        except Exception as e:  # a broken subtitle file: say so, fall back to speech
            if s.asr_source == "subtitles":
                raise StageError("subtitles", f"{item.subtitles}: {e}") from e
        else:
            return {"audio": None, "subtitles": transcript.to_json(), "note": "subtitles"}
        finally:
            if sub != Path(item.subtitles):
                sub.unlink(missing_ok=True)
    if s.asr_source in ("auto", "whisper") and has_audio:
        try:
            audio = load_audio(path, SAMPLE_RATE)
        except AudioDecodeError as e:
            raise StageError("audio", str(e)) from e
        if audio is not None:
            pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)  # half the queue traffic
            return {"audio": pcm, "subtitles": None, "note": "whisper"}
    note = "no audio track" if not has_audio else f"asr.source={s.asr_source}"
    if s.asr_source == "subtitles":
        note = "no subtitle file"
    return {"audio": None, "subtitles": None, "note": note}


def video_events(item: InputItem, s: DecodeSettings, tmp_dir: Path) -> Iterator[tuple]:
    """All events for one input (see module docstring); errors become one final "error" event.

    The "end" event's decode_seconds counts only the time spent producing events, not the time
    the consumer held this generator (a full queue, or S3D running inline in between).
    """
    events, busy = _video_events(item, s, tmp_dir), 0.0
    while True:
        t0 = time.perf_counter()
        event = next(events, None)
        busy += time.perf_counter() - t0
        if event is None:
            return
        if event[0] == "end":
            event[2]["decode_seconds"] = busy
        yield event


def _video_events(item: InputItem, s: DecodeSettings, tmp_dir: Path) -> Iterator[tuple]:
    key = item.key
    path = None
    stage = "read"
    try:
        path = materialize(item.path, tmp_dir)
        if not path.exists():
            raise StageError("read", f"{item.display}: file does not exist")
        size = path.stat().st_size
        if size == 0:
            raise StageError("read", f"{item.display}: empty file (0 bytes)")
        yield ("begin", key, {"bytes": size, "sha256": file_sha256(path)})
        stage = "probe"
        info = probe_video(path)
        yield ("info", key, dataclasses.asdict(info))
        stage = "decode"
        spans, frames, thumbs, n = [], [], [], 0
        for clip in iter_clips(
            path,
            fps=s.fps,
            clip_seconds=s.clip_seconds,
            size=s.size,
            decoder=s.decoder,
            info=info,
            thumb_size=s.thumbnail_size,
        ):
            spans.append((clip.start, clip.end, clip.num_real_frames))
            frames.append(clip.frames)
            if s.thumbnail_size:
                thumbs.append(clip.thumb)
            n += 1
            if len(frames) == CLIPS_PER_EVENT:
                yield ("clips", key, spans, np.stack(frames), np.stack(thumbs) if thumbs else None)
                spans, frames, thumbs = [], [], []
        if frames:
            yield ("clips", key, spans, np.stack(frames), np.stack(thumbs) if thumbs else None)
        if n == 0:
            raise StageError(
                "decode",
                f"{item.display}: shorter than half a clip "
                f"({info.duration:.2f} s < {s.clip_seconds / 2:.2f} s), no clip to keep",
            )
        stage = "audio"
        yield ("speech", key, _speech(item, path, info.has_audio, s, tmp_dir))
        yield ("end", key, {"clips": n, "decode_seconds": 0.0})  # set by video_events
    except StageError as e:
        yield ("error", key, e.stage, str(e))
    except (VideoDecodeError, AudioDecodeError) as e:
        yield ("error", key, stage, str(e))
    except Exception as e:  # anything else is still this input's failure, not the run's
        tb = traceback.format_exc(limit=3).strip().splitlines()[-1]
        yield ("error", key, stage, f"{item.display}: {type(e).__name__}: {e} ({tb})")
    finally:
        if path is not None and item.path.startswith("tar:"):
            path.unlink(missing_ok=True)


class _ForwardLogs(logging.Handler):
    """Sends a worker's warnings to the main process as ("log", key, level, message) events.

    The main process prints them above its progress bar; written by the worker itself they
    would cut through the bar.
    """

    def __init__(self, event_q) -> None:
        super().__init__(logging.WARNING)
        self.event_q, self.key = event_q, ""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _put(self.event_q, ("log", self.key, record.levelno, record.getMessage()))
        except Exception:  # never let logging fail a video
            self.handleError(record)


def quiet_ffmpeg() -> None:
    """Keep FFmpeg's own stderr lines (which name no file) out of the output.

    Decoding problems still surface: they raise, or video.py logs them naming the file. PyAV
    keeps FFmpeg quiet by default; decord2 bundles its own FFmpeg, which logs unless told.
    """
    try:
        import decord

        decord.logging.set_level(decord.logging.QUIET)
    except (ImportError, AttributeError):
        pass


def _put(event_q, event: tuple) -> None:
    """Queue an event; give up (exit) if the main process is gone (killed with -9)."""
    while True:
        try:
            event_q.put(event, timeout=1.0)
            return
        except queue.Full:
            parent = mp.parent_process()
            if parent is not None and not parent.is_alive():
                raise SystemExit(0) from None


def worker_main(task_q, event_q, settings: DecodeSettings, tmp_dir: str) -> None:
    """Process entry point: take inputs until a None arrives."""
    # Decoding is single-threaded per worker; keep BLAS/OpenMP pools from oversubscribing cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # Ctrl-C and a scheduler's SIGTERM reach the whole process group. The main process decides:
    # it stops at a safe point and then kills the workers (a worker killed in the middle of a
    # queue message would leave the main process waiting for the rest of it).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    quiet_ffmpeg()
    forward = _ForwardLogs(event_q)
    logging.getLogger().addHandler(forward)
    logging.getLogger().setLevel(logging.WARNING)
    while True:
        item = task_q.get()
        if item is None:
            return
        forward.key = item.key
        _put(event_q, ("start", item.key, os.getpid()))
        for event in video_events(item, settings, Path(tmp_dir)):
            _put(event_q, event)
