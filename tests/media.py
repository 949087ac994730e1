"""Synthetic test media, written with PyAV and the ffmpeg CLI: tiny, deterministic, no downloads.

Video patterns (``make_video(pattern=...)``):

* ``"index"``: every frame is one flat colour that encodes its index (``index_frame`` /
  ``read_index``), so a decoded, resized, cropped frame still tells which source frame it came from.
* ``"orientation"``: quadrants red | green over blue | white *as displayed*; with ``rotation`` the
  stored frames are turned the other way, so a player that honours the display matrix shows them
  upright (``read_orientation``).
* ``"testsrc"``: ffmpeg's moving ``testsrc2`` picture, realistic work for a codec (benchmarks).

Times: ``frame_times`` gives the presentation times ``make_video`` asks for; ``stored_frame_times``
reads back what the container holds (ground truth independent of the code under test).
"""

import shutil
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

TIME_BASE = Fraction(1, 90_000)  # MPEG-style ticks: fine enough for 19.62 fps and VFR
QUADRANT_COLOURS = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "white": (255, 255, 255),
}
UPRIGHT = ("red", "green", "blue", "white")  # top-left, top-right, bottom-left, bottom-right


def frame_times(seconds: float, fps: float, *, vfr: bool = False) -> np.ndarray:
    """Presentation times (s) [N] of the frames ``make_video`` writes, rounded to TIME_BASE.

    ``vfr=True``: the first third of the video at ``fps``, the middle third at ``fps / 3`` and the
    last third at ``0.8 * fps`` (three frame durations in one file).
    """
    if not vfr:
        times = np.arange(round(seconds * fps)) / fps
    else:
        third = seconds / 3
        times = np.concatenate(
            [
                np.arange(0, third, 1 / fps),
                third + np.arange(0, third, 3 / fps),
                2 * third + np.arange(0, third - 1e-9, 1.25 / fps),
            ]
        )
    return np.round(times / float(TIME_BASE)) * float(TIME_BASE)


def index_frame(index: int, width: int, height: int) -> np.ndarray:
    """Flat RGB frame uint8 [H, W, 3] encoding `index` (< 4096) in 16 levels per channel."""
    digits = [(index >> shift) & 15 for shift in (0, 4, 8)]
    return np.broadcast_to(np.array([d * 16 + 8 for d in digits], np.uint8), (height, width, 3))


def read_index(frame: np.ndarray) -> int:
    """Inverse of ``index_frame`` for a decoded RGB frame [H, W, 3] of any size."""
    height, width = frame.shape[:2]
    centre = frame[height // 4 : 3 * height // 4 + 1, width // 4 : 3 * width // 4 + 1]
    levels = np.clip(np.round((centre.reshape(-1, 3).mean(0) - 8) / 16), 0, 15).astype(int)
    return int(levels[0] + 16 * levels[1] + 256 * levels[2])


def orientation_frame(width: int, height: int) -> np.ndarray:
    """Upright RGB frame uint8 [H, W, 3]: red | green on top, blue | white below."""
    frame = np.empty((height, width, 3), np.uint8)
    top, bottom = slice(0, height // 2), slice(height // 2, None)
    left, right = slice(0, width // 2), slice(width // 2, None)
    quadrants = [(top, left), (top, right), (bottom, left), (bottom, right)]
    for (rows, cols), name in zip(quadrants, UPRIGHT, strict=True):
        frame[rows, cols] = QUADRANT_COLOURS[name]
    return frame


def read_orientation(frame: np.ndarray) -> tuple[str, ...]:
    """Colour names at the centres of the four quadrants (TL, TR, BL, BR) of an RGB frame."""
    height, width = frame.shape[:2]
    names, colours = zip(*QUADRANT_COLOURS.items(), strict=True)
    palette = np.array(colours, dtype=float)
    found = []
    for y, x in [(1, 1), (1, 3), (3, 1), (3, 3)]:
        pixel = frame[y * height // 4, x * width // 4].astype(float)
        found.append(names[int(np.argmin(np.abs(palette - pixel).sum(1)))])
    return tuple(found)


def stored_frame_times(path: str | Path) -> np.ndarray:
    """Sorted presentation times (s) [N] of the video packets, from the first one (no decoding)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pts = [p.pts for p in container.demux(stream) if p.size and p.pts is not None]
    pts = np.sort(np.asarray(pts, dtype=np.int64))
    return (pts - pts[0]) * float(stream.time_base)


def _run_ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", *args], check=True)


def _encoder_options(codec: str, preset: str) -> dict[str, str]:
    if codec in ("libx264", "libx265"):
        return {"crf": "12", "preset": preset}
    if codec == "libvpx-vp9":
        return {"crf": "20", "b": "0", "deadline": "realtime", "cpu-used": "8"}
    return {}


def make_video(
    path: str | Path,
    seconds: float = 2.0,
    fps: float = 30.0,
    size: tuple[int, int] = (160, 120),
    *,
    audio: str | Path | None = None,
    rotation: int | None = None,
    vfr: bool = False,
    codec: str = "libx264",
    pattern: str = "index",
    preset: str = "veryfast",
) -> Path:
    """Write a synthetic video and return its path.

    size: (width, height) as displayed. rotation: clockwise degrees a player turns the stored
    frames (0/90/180/270, written as the display matrix; ``probe_video`` reports the same number).
    audio: None, "tone" (440 Hz), "silence" or a path to an audio file to mux in. vfr: three frame
    rates in one file (see ``frame_times``). pattern: "index", "orientation" or "testsrc" (module
    docstring). codec: a PyAV/FFmpeg encoder ("libx264", "mpeg4", "libvpx-vp9", ...); preset:
    the x264/x265 speed preset ("ultrafast" has no B-frames). The container follows the suffix
    (.mp4, .mkv, .webm, .mov). Timestamps use TIME_BASE ticks (Matroska/WebM round them to 1 ms).
    """
    path = Path(path)
    if pattern == "testsrc":
        if vfr or rotation:
            raise ValueError("pattern='testsrc' supports neither vfr nor rotation")
        source = f"testsrc2=size={size[0]}x{size[1]}:rate={fps}:duration={seconds}"
        x264_preset = ["-preset", preset] if codec in ("libx264", "libx265") else []
        _run_ffmpeg("-f", "lavfi", "-i", source, "-c:v", codec, "-pix_fmt", "yuv420p",
                    *x264_preset, str(path))  # fmt: skip
        return _add_audio(path, seconds, audio) if audio is not None else path
    width, height = size
    turns = (rotation or 0) // 90 % 4
    times = frame_times(seconds, fps, vfr=vfr)
    upright = orientation_frame(width, height) if pattern == "orientation" else None
    if pattern not in ("index", "orientation"):
        raise ValueError(f"unknown pattern {pattern!r}")
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = (height, width) if turns % 2 else (width, height)
        stream.pix_fmt = "yuv420p"
        stream.time_base = TIME_BASE
        stream.codec_context.time_base = TIME_BASE
        stream.options = _encoder_options(codec, preset)
        if codec == "mpeg4":
            stream.bit_rate = 8_000_000
        if rotation is not None:
            stream.set_display_rotation(-rotation)  # PyAV takes counter-clockwise degrees
        for index, time in enumerate(times):
            if upright is None:  # flat colour: fill YUV planes directly (4K stays fast)
                frame = _flat_frame(index_frame(index, 1, 1)[0, 0], stream.width, stream.height)
            else:  # turned counter-clockwise, so the player's clockwise turn undoes it
                stored = np.ascontiguousarray(np.rot90(upright, turns))
                frame = av.VideoFrame.from_ndarray(stored, format="rgb24")
            frame.pts = round(time / TIME_BASE)
            frame.time_base = TIME_BASE
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return _add_audio(path, seconds, audio) if audio is not None else path


def _flat_frame(rgb: np.ndarray, width: int, height: int) -> av.VideoFrame:
    """A yuv420p frame of one RGB colour [3], converted once on a tiny frame by swscale."""
    tiny = np.ascontiguousarray(np.broadcast_to(rgb, (16, 16, 3)))
    tiny_yuv = av.VideoFrame.from_ndarray(tiny, format="rgb24").reformat(format="yuv420p")
    frame = av.VideoFrame(width, height, "yuv420p")
    for plane, tiny_plane in zip(frame.planes, tiny_yuv.planes, strict=True):
        value = np.frombuffer(memoryview(tiny_plane), np.uint8)[0]
        plane.update(np.full(plane.buffer_size, value, np.uint8))
    return frame


def _add_audio(path: Path, seconds: float, audio: str | Path) -> Path:
    """Mux an audio track into `path` with ffmpeg (video stream copied, display matrix kept)."""
    if audio == "tone":
        source = ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=16000:duration={seconds}"]
    elif audio == "silence":
        source = ["-f", "lavfi", "-t", str(seconds), "-i", "anullsrc=r=16000:cl=mono"]
    else:
        source = ["-i", str(audio)]
    codec = "libopus" if path.suffix == ".webm" else "aac"
    with tempfile.TemporaryDirectory() as tmp:
        video_only = Path(tmp) / f"video{path.suffix}"
        shutil.move(path, video_only)
        _run_ffmpeg("-i", str(video_only), *source, "-map", "0:v", "-map", "1:a",
                    "-c:v", "copy", "-c:a", codec, str(path))  # fmt: skip
    return path


def make_tone_wav(path: str | Path, seconds: float = 2.0, frequency: float = 440.0) -> Path:
    """16 kHz mono WAV of a sine tone."""
    source = f"sine=frequency={frequency}:sample_rate=16000:duration={seconds}"
    _run_ffmpeg("-f", "lavfi", "-i", source, "-ac", "1", str(path))
    return Path(path)


def make_audio_only(path: str | Path, seconds: float = 2.0) -> Path:
    """An .mp4/.m4a file holding only an AAC tone: no video stream."""
    source = f"sine=frequency=440:sample_rate=16000:duration={seconds}"
    _run_ffmpeg("-f", "lavfi", "-i", source, "-c:a", "aac", str(path))
    return Path(path)


def make_truncated(
    path: str | Path, seconds: float = 3.0, keep: float = 0.5, *, faststart: bool = True, **video
) -> Path:
    """An MP4 whose media data (the mdat box) is cut after a fraction `keep` of its bytes.

    faststart=True puts the index (moov) first, so it survives and the head stays decodable
    (keep=0: an index and no frame data); False leaves the index at the end, where the cut
    removes it. Extra keyword arguments go to ``make_video``.
    """
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        whole = make_video(Path(tmp) / "whole.mp4", seconds, **video)
        remuxed = Path(tmp) / "remuxed.mp4"
        flags = ["-movflags", "+faststart"] if faststart else []
        _run_ffmpeg("-i", str(whole), "-c", "copy", *flags, str(remuxed))
        data = remuxed.read_bytes()
    offset = 0
    while offset + 8 <= len(data):  # top-level boxes: 4-byte big-endian size, 4-byte type
        box_size = int.from_bytes(data[offset : offset + 4], "big")
        header = 8
        if box_size == 1:  # 64-bit size follows the type
            box_size, header = int.from_bytes(data[offset + 8 : offset + 16], "big"), 16
        elif box_size == 0:  # box runs to the end of the file
            box_size = len(data) - offset
        if data[offset + 4 : offset + 8] == b"mdat":
            payload = offset + header
            path.write_bytes(data[: payload + int((box_size - header) * keep)])
            return path
        offset += box_size
    raise RuntimeError(f"no mdat box in {remuxed}")
