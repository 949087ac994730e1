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
    ("end", key, {"clips": n, "decode_seconds": t})
    ("error", key, stage, message)           the input failed at `stage`; nothing more follows
"""

from __future__ import annotations

import dataclasses
import os
import shutil
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
    """All events for one input (see module docstring); errors become one final "error" event."""
    key = item.key
    path = None
    stage = "read"
    try:
        t0 = time.perf_counter()
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
        decode_seconds = time.perf_counter() - t0
        stage = "audio"
        yield ("speech", key, _speech(item, path, info.has_audio, s, tmp_dir))
        yield ("end", key, {"clips": n, "decode_seconds": decode_seconds})
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


def worker_main(task_q, event_q, settings: DecodeSettings, tmp_dir: str) -> None:
    """Process entry point: take inputs until a None arrives."""
    # Decoding is single-threaded per worker; keep BLAS/OpenMP pools from oversubscribing cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    while True:
        item = task_q.get()
        if item is None:
            return
        event_q.put(("start", item.key, os.getpid()))
        for event in video_events(item, settings, Path(tmp_dir)):
            event_q.put(event)
