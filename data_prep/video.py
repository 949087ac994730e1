"""Stage 1 of data prep: decode a video file into fixed-length clips of resampled, cropped frames.

VideoBERT samples frames at 20 fps and cuts non-overlapping 30-frame (1.5 s) windows, one S3D
clip each (methods.md §1.1, §8). This module turns a file into those windows:

    probe_video(path) -> VideoInfo                  header, packet scan, first frame (PyAV)
    clip_spans(duration, clip_seconds)              the [start, end) windows, in seconds
    iter_clips(path, fps=20, clip_seconds=1.5, size=224) -> one Clip per window

Time axis: seconds from the video stream's first presentation timestamp (decord's convention;
PyAV's after subtracting ``stream.start_time``). An audio track may start a few ms apart.

Frames are picked by timestamp, not by count: target time t_i = start + i / fps takes the frame
whose presentation interval contains t_i (the last frame with pts <= t_i), so odd (19.62 fps) and
variable frame rates resample correctly. Frames are resized (short side -> ``size``) while they are
decoded and centre-cropped, one clip at a time, so memory stays bounded for 4K input.

Shape legend: T frames per clip, H x W space; clip frames are uint8 [T, size, size, 3] RGB.
"""

import logging
import math
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import av
import numpy as np

logger = logging.getLogger(__name__)

# decord2 turns and resizes frames in an FFmpeg filter graph: "transpose=..., scale=W:H" then RGB.
# The PyAV path builds the same chain, except that it scales with "area" instead of swscale's
# default bicubic: ~1.5x cheaper (1.0 vs 1.5 ms per 720p frame), which keeps the PyAV path near
# the bare decoder's speed, at a cost of < 1 grey level mean difference to decord's frames (with
# flags=bicubic the two are bit-identical; see tests/test_video.py and benchmarks/bench_decode.py).
_TRANSPOSE_FILTERS = {0: [], 90: ["clock"], 180: ["clock", "clock"], 270: ["cclock"]}


def _pts_slack(time: np.ndarray | float) -> np.ndarray | float:
    """Slack (s) for "pts <= t": covers decord's float32 timestamps (relative error 6e-8), so
    exact ties (a 20 fps target on a 30 fps grid) resolve the same way in both decoders."""
    return 1e-6 + 4e-7 * np.abs(time)


class VideoDecodeError(Exception):
    """A video file cannot be read or decoded; the message names the file and the cause."""

    def __init__(self, path: str | Path, cause: str) -> None:
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{path}: {cause}")


@dataclass(frozen=True)
class VideoInfo:
    """What ``probe_video`` learns about a file without decoding more than one frame."""

    duration: float  # seconds of video data (stream header; packet scan if cut short or missing)
    fps: float  # average native frame rate
    width: int  # as displayed, after rotation
    height: int  # as displayed, after rotation
    rotation: int  # clockwise quarter turns (0/90/180/270) that display the stored frames upright
    has_audio: bool
    video_codec: str  # FFmpeg decoder name, e.g. "h264"
    num_frames: int | None  # video packets present in the file (stream header if the scan fails)
    variable_frame_rate: bool  # frame durations differ by more than 10%
    truncated: bool = False  # the data ends before the declared duration (cut-off download)
    declared_duration: float | None = None  # video stream header, else container (Matroska)


@dataclass
class Clip:
    """One window of a video: frames uint8 [T, size, size, 3] RGB, T = round(fps * clip_seconds)."""

    index: int  # position of the window in the video, 0-based
    start: float  # seconds, on the video stream's time axis
    end: float  # seconds; start + clip_seconds except for a final partial clip
    frames: np.ndarray  # uint8 [T, size, size, 3]
    num_real_frames: int  # < T when a partial clip is padded by repeating its last frame
    thumb: np.ndarray | None = None  # uint8 [thumb_size, thumb_size, 3], middle real frame


def clip_spans(duration: float, clip_seconds: float) -> list[tuple[float, float]]:
    """Non-overlapping [start, end) spans; a final partial clip is kept iff it holds >= half a clip.

    A video shorter than half a clip gives no spans.
    """
    if clip_seconds <= 0:
        raise ValueError(f"clip_seconds must be > 0, got {clip_seconds}")
    if not math.isfinite(duration) or duration <= 0:
        return []
    num_full = math.floor(duration / clip_seconds + 1e-9)  # 1e-9: 4.5 s / 1.5 s is 3 clips
    spans = [(k * clip_seconds, min((k + 1) * clip_seconds, duration)) for k in range(num_full)]
    rest = duration - num_full * clip_seconds
    if rest > 1e-9 and rest >= clip_seconds / 2 - 1e-9:
        spans.append((num_full * clip_seconds, duration))
    return spans


def _display_rotation(frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> int:
    """Clockwise degrees (0/90/180/270) that turn stored frames upright for display."""
    # PyAV's frame.rotation is the display matrix angle, counter-clockwise; the legacy `rotate`
    # tag (old muxers, phones) is clockwise. Flips and non-right angles are not supported.
    counter_clockwise = frame.rotation
    if not counter_clockwise and stream.metadata.get("rotate", "").lstrip("-").isdigit():
        counter_clockwise = -int(stream.metadata["rotate"])
    return int(-round(counter_clockwise / 90) * 90) % 360


def probe_video(path: str | Path) -> VideoInfo:
    """Read a video's header, scan its packets (no decoding) and decode its first frame.

    Raises VideoDecodeError for a missing or empty file, a file FFmpeg cannot open (e.g. text named
    .mp4), a file without a video stream (audio-only) or one whose video does not decode.
    """
    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(path, "file not found")
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")
    try:
        container = av.open(str(path))
    except av.FFmpegError as exc:
        raise VideoDecodeError(path, f"not a readable media file ({exc.strerror})") from exc
    with container:
        if not container.streams.video:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
            raise VideoDecodeError(path, f"no video stream (streams: {kinds})")
        stream = container.streams.video[0]
        tb = stream.time_base
        # One pass over the packets: their timestamps give the true extent, count and frame-rate
        # regularity; decoding stops as soon as one frame proves the video is decodable.
        stamps: list[int] = []
        last_end = None
        data_end = None  # seconds: end of the last packet of any stream (container time)
        first_frame: av.VideoFrame | None = None
        error: Exception | None = None
        try:
            for packet in container.demux():
                stamp = packet.pts if packet.pts is not None else packet.dts
                if packet.size and stamp is not None:
                    end_s = float((stamp + (packet.duration or 0)) * packet.stream.time_base)
                    data_end = end_s if data_end is None else max(data_end, end_s)
                if packet.stream.index != stream.index:
                    continue
                if packet.size and stamp is not None:
                    stamps.append(stamp)
                    end = stamp + (packet.duration or 0)
                    last_end = end if last_end is None else max(last_end, end)
                if first_frame is None:
                    try:
                        decoded = packet.decode()  # the final empty packet flushes the decoder
                    except av.FFmpegError as exc:
                        error = exc
                        continue
                    first_frame = decoded[0] if decoded else None
        except av.FFmpegError as exc:  # demuxer hit the cut-off end of a truncated file
            error = exc
            if first_frame is None:
                flushed = _flush_decoder(stream)
                first_frame = flushed[0] if flushed else None
        if first_frame is None:
            cause = f" ({error})" if error else ""
            raise VideoDecodeError(path, f"no decodable video frame{cause}")

        rotation = _display_rotation(first_frame, stream)
        width, height = first_frame.width, first_frame.height
        if rotation in (90, 270):
            width, height = height, width
        times = np.unique(np.asarray(stamps, dtype=np.int64)) * float(tb)  # sorted, seconds
        gaps = np.diff(times)
        median_gap = float(np.median(gaps)) if len(gaps) else 0.0
        fps = float(stream.average_rate) if stream.average_rate else 0.0
        fps = fps or (1 / median_gap if median_gap else 30.0)
        scanned = 0.0
        if len(times):  # packets may carry no duration (e.g. Matroska): add one frame gap
            scanned = max(float(last_end * tb) - times[0], times[-1] - times[0] + median_gap)
        header = float(stream.duration * tb) if stream.duration else 0.0
        declared, present = _declared_and_present(container, header, scanned, data_end)
        truncated = bool(declared and present and present < declared - max(0.1, 2 / fps))
        if truncated:
            logger.warning(
                "%s: truncated: data ends at %.2f s of %.2f s; keeping the decodable part",
                path, present, declared,
            )  # fmt: skip
            duration = scanned
        else:
            duration = header or scanned or (container.duration or 0) / av.time_base
        # Variable rate: some frame gap differs from the typical one by > 10% (2 ticks of slack
        # for timestamps rounded to a coarse time base, e.g. Matroska's 1 ms).
        variable = bool(np.any(np.abs(gaps - median_gap) > max(0.1 * median_gap, 2 * float(tb))))
        return VideoInfo(
            duration=float(duration),
            fps=fps,
            width=width,
            height=height,
            rotation=rotation,
            has_audio=bool(container.streams.audio),
            video_codec=stream.codec_context.name,
            num_frames=len(stamps) or stream.frames or None,
            variable_frame_rate=variable,
            truncated=truncated,
            declared_duration=declared or None,
        )


def _declared_and_present(
    container: av.container.InputContainer,
    header: float,
    scanned: float,
    data_end: float | None,
) -> tuple[float, float]:
    """(declared duration, duration of the data present), seconds, for the truncation check.

    MP4/MOV declare a duration per stream: compare the video packets' extent with it. Matroska
    and WebM declare one only for the whole file: compare the end of the last packet of any stream
    (audio may run a little past the video) with it. 0.0 where nothing is declared.
    """
    if header:
        return header, scanned
    if container.duration and data_end is not None:
        start = (container.start_time or 0) / av.time_base
        return container.duration / av.time_base, data_end - start
    return 0.0, scanned


def _flush_decoder(stream: av.video.stream.VideoStream) -> list[av.VideoFrame]:
    """Frames the decoder still holds after the packets ran out early (B-frame/thread delay)."""
    try:
        return list(stream.codec_context.decode(None))
    except av.FFmpegError:
        return []


@dataclass(frozen=True)
class _ClipPlan:
    """Target times of every clip and the frame geometry, shared by both decoders."""

    spans: list[tuple[float, float]]
    fps: float
    clip_seconds: float
    frames_per_clip: int  # T
    size: int
    resized_width: int  # display width after the short side is scaled to `size`
    resized_height: int
    rotation: int  # clockwise degrees, from VideoInfo
    end_slack: float  # data ending this much before a span's end is not a truncation
    thumb_size: int

    def targets(self, index: int, data_end: float) -> tuple[np.ndarray, int]:
        """Target times [T] of clip `index` and how many fall inside the data (0: skip clip)."""
        start, end = self.spans[index]
        times = start + np.arange(self.frames_per_clip) / self.fps
        if data_end < end - self.end_slack:  # truncated: keep the clip iff half of it is there
            if data_end - start < self.clip_seconds / 2:
                return times, 0
            end = data_end
        return times, max(1, int(np.count_nonzero(times < end - 1e-9)))

    def finish(self, index: int, frames: np.ndarray, num_real: int) -> Clip:
        """Centre-crop display-oriented frames [n, H, W, 3] and pad them to a Clip of T frames."""
        height, width = frames.shape[1:3]
        top, left = (height - self.size) // 2, (width - self.size) // 2
        crop = frames[:num_real, top : top + self.size, left : left + self.size]
        out = np.empty((self.frames_per_clip, self.size, self.size, 3), dtype=np.uint8)
        out[:num_real] = crop
        out[num_real:] = crop[num_real - 1]  # pad a partial clip with its last real frame
        thumb = None
        if self.thumb_size:
            middle = av.VideoFrame.from_ndarray(out[num_real // 2], format="rgb24")
            thumb = middle.reformat(self.thumb_size, self.thumb_size, interpolation="AREA")
            thumb = thumb.to_ndarray(format="rgb24")
        start, end = self.spans[index]
        return Clip(index, start, end, out, num_real, thumb)


def iter_clips(
    path: str | Path,
    *,
    fps: float = 20.0,
    clip_seconds: float = 1.5,
    size: int = 224,
    decoder: Literal["decord", "pyav"] = "decord",
    info: VideoInfo | None = None,
    thumb_size: int = 0,
) -> Iterator[Clip]:
    """Yield the clips of ``clip_spans(info.duration, clip_seconds)``, decoded one at a time.

    Each Clip holds frames uint8 [T, size, size, 3] RGB, T = round(fps * clip_seconds), sampled at
    t_i = start + i / fps by timestamp, short side resized to ``size``, centre-cropped, upright.
    ``thumb_size > 0`` adds ``clip.thumb`` [thumb_size, thumb_size, 3] of the middle real frame.
    A truncated file yields the clips it has data for. Raises VideoDecodeError (see probe_video,
    or no frame decodes) and ImportError when decoder="decord" and decord2 is not installed.
    """
    if fps <= 0 or size <= 0 or thumb_size < 0:
        raise ValueError(
            f"need fps > 0, size > 0, thumb_size >= 0; got {fps}, {size}, {thumb_size}"
        )
    frames_per_clip = round(fps * clip_seconds)
    if frames_per_clip < 1:
        raise ValueError(f"fps * clip_seconds must be >= 0.5, got {fps} * {clip_seconds}")
    if decoder not in ("decord", "pyav"):
        raise ValueError(f"decoder must be 'decord' or 'pyav', got {decoder!r}")
    info = info if info is not None else probe_video(path)
    scale = size / min(info.width, info.height)
    plan = _ClipPlan(
        spans=clip_spans(info.duration, clip_seconds),
        fps=fps,
        clip_seconds=clip_seconds,
        frames_per_clip=frames_per_clip,
        size=size,
        resized_width=max(size, round(info.width * scale)),
        resized_height=max(size, round(info.height * scale)),
        rotation=info.rotation,
        end_slack=2 / info.fps if info.fps > 0 else 0.1,
        thumb_size=thumb_size,
    )
    if not plan.spans:
        return
    if decoder == "decord":
        yield from _decord_clips(Path(path), plan)
    else:
        yield from _pyav_clips(Path(path), plan, first_clip=0)


# --- decord (decord2) ------------------------------------------------------------------------


def _decord_clips(path: Path, plan: _ClipPlan) -> Iterator[Clip]:
    """Decode with decord: get_batch of each clip's selected indices, resized while decoding."""
    try:
        import decord
    except ImportError as exc:
        raise ImportError(
            "decoder='decord' needs the decord2 package (pip install 'vlpipe[decord]'); "
            "or pass decoder='pyav'"
        ) from exc
    # decord2 applies the display matrix itself (its filter graph transposes before scaling), so
    # width/height are display dimensions and frames come out upright: no np.rot90 here.
    try:
        reader = _open_decord(decord, path, plan.resized_width, plan.resized_height)
        starts = reader.get_frame_timestamp(np.arange(len(reader))).astype(np.float64)
    except (decord.DECORDError, RuntimeError, AssertionError) as exc:
        logger.warning("%s: decord cannot read it (%s); decoding with PyAV", path, exc)
        yield from _pyav_clips(path, plan, first_clip=0)
        return
    data_end, starts = float(starts[-1, 1]), starts[:, 0]
    for index in range(len(plan.spans)):
        times, num_real = plan.targets(index, data_end)
        if num_real == 0:
            logger.warning("%s: decord has frames up to %.2f s only", path, data_end)
            return
        # Last frame with pts <= t_i (clamped to the first frame for t_i before it).
        chosen = (
            np.searchsorted(starts, times[:num_real] + _pts_slack(times[:num_real]), side="right")
            - 1
        )
        try:
            frames = reader.get_batch(np.maximum(chosen, 0)).asnumpy()  # [n, H, W, 3]
        except (decord.DECORDError, RuntimeError) as exc:
            # Typically a truncated file whose index lists packets that are not all there;
            # PyAV decodes up to the last whole packet.
            logger.warning("%s: decord failed at clip %d (%s); PyAV goes on", path, index, exc)
            yield from _pyav_clips(path, plan, first_clip=index)
            return
        yield plan.finish(index, frames, num_real)


def _open_decord(decord: ModuleType, path: Path, width: int, height: int) -> Any:
    """A VideoReader that resizes to (width, height), checked on frame 0.

    decord2 3.4 mis-sizes its output buffer for some output widths (seen: 1-4, 6, 8, 12, 16, 24,
    32, 48, 96, 144 px) and then raises or returns a wrong shape; a 1-2 px wider frame avoids it,
    and the centre crop absorbs the extra column.
    """
    error: Exception | None = None
    for extra in range(3):
        reader = decord.VideoReader(str(path), width=width + extra, height=height)
        try:
            first = reader.get_batch([0]).asnumpy()
        except decord.DECORDError as exc:
            error = exc
            continue
        if first.shape == (1, height, width + extra, 3):
            return reader
        error = RuntimeError(f"decord returned shape {first.shape} for {width + extra}x{height}")
    raise RuntimeError(f"decord gives no usable {width}x{height} frames: {error}")


# --- PyAV ------------------------------------------------------------------------------------


def _pyav_clips(path: Path, plan: _ClipPlan, first_clip: int) -> Iterator[Clip]:
    """Decode with PyAV: seek, decode sequentially, convert only the frames a clip selects."""
    try:
        container = av.open(str(path))
    except av.FFmpegError as exc:
        raise VideoDecodeError(path, f"not a readable media file ({exc.strerror})") from exc
    with container:
        if not container.streams.video:
            raise VideoDecodeError(path, "no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame + slice threads; frames still come in pts order
        tb = float(stream.time_base)
        origin = stream.start_time * tb if stream.start_time is not None else None
        if first_clip > 0:
            try:  # to the keyframe at or before the clip; the cursor skips frames before it
                offset = (origin or 0.0) + plan.spans[first_clip][0]
                container.seek(int(offset / tb), stream=stream, backward=True)
            except av.FFmpegError:
                container.seek(0, stream=stream)
        frames_iter = _decoded_frames(path, container, stream, origin)
        cursor = _FrameCursor(path, frames_iter, stream.time_base, plan.fps)
        with _RGBConverter(plan, stream.time_base) as converter:
            for index in range(first_clip, len(plan.spans)):
                times, num_real = plan.targets(index, cursor.data_end)
                if num_real:
                    pending = [converter.submit(cursor.frame_at(t)) for t in times[:num_real]]
                    # Running out of data inside this clip shows only now: re-plan it.
                    times, num_real = plan.targets(index, cursor.data_end)
                if num_real == 0:
                    logger.warning("%s: no video data after %.2f s", path, cursor.data_end)
                    return
                frames = np.stack([rgb.result() for rgb in pending[:num_real]])  # [n, H, W, 3]
                yield plan.finish(index, frames, num_real)


def _decoded_frames(
    path: Path,
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    origin: float | None,
) -> Iterator[tuple[float, av.VideoFrame]]:
    """(seconds from the stream start, frame) in presentation order; bad packets are skipped."""
    tb = stream.time_base
    errors, last_error, previous = 0, None, None

    def timed(frames: list[av.VideoFrame]) -> Iterator[tuple[float, av.VideoFrame]]:
        nonlocal origin, previous
        for frame in frames:
            if frame.pts is None:  # no timestamp: assume the average frame spacing
                time = (previous or 0.0) + 1 / float(stream.average_rate or 30)
            else:
                origin = float(frame.pts * tb) if origin is None else origin
                time = float(frame.pts * tb) - origin
            previous = time
            yield time, frame

    try:
        for packet in container.demux(stream):
            try:
                decoded = packet.decode()
            except av.FFmpegError as exc:  # corrupt or cut-off packet: decode what is decodable
                errors, last_error = errors + 1, exc
                continue
            yield from timed(decoded)
    except av.FFmpegError as exc:  # demuxer hit the cut-off end of a truncated file
        errors, last_error = errors + 1, exc
        yield from timed(_flush_decoder(stream))
    if errors:
        logger.warning("%s: skipped %d undecodable packet(s), last: %s", path, errors, last_error)


class _FrameCursor:
    """Walks decoded frames forward, answering "which frame is shown at time t"."""

    def __init__(
        self,
        path: Path,
        frames: Iterator[tuple[float, av.VideoFrame]],
        time_base: Fraction,
        fps: float,
    ) -> None:
        self._frames = frames
        self._time_base = time_base
        self._default_duration = 1 / fps
        self._held: tuple[float, av.VideoFrame] | None = None  # last frame with pts <= query
        self._next = next(frames, None)
        if self._next is None:
            raise VideoDecodeError(path, "no video frame decodes")

    @property
    def data_end(self) -> float:
        """End (seconds) of the last decoded frame once decoding has run out, else infinity."""
        if self._next is not None or self._held is None:
            return math.inf
        time, frame = self._held
        duration = float(frame.duration * self._time_base) if frame.duration else 0.0
        return time + (duration or self._default_duration)

    def frame_at(self, time: float) -> av.VideoFrame:
        """The last frame with pts <= `time` (the first frame for earlier times, as decord)."""
        while self._next is not None and (
            self._held is None or self._next[0] <= time + _pts_slack(time)
        ):
            self._held, self._next = self._next, next(self._frames, None)
        return self._held[1]


class _RGBConverter:
    """Turns, resizes and converts frames to RGB [H, W, 3] in one worker thread.

    PyAV releases the GIL in the filter graph and in the decoder, so converting frame i overlaps
    decoding frame i + 1. At most _MAX_PENDING full-size frames wait, so memory stays bounded.
    """

    _MAX_PENDING = 4

    def __init__(self, plan: _ClipPlan, time_base: Fraction) -> None:
        self._plan = plan
        self._time_base = time_base
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlpipe-rgb")
        self._pending: deque[Future] = deque()
        self._last: tuple[av.VideoFrame, Future] | None = None  # a repeated frame is reused
        self._graph: tuple[tuple[int, int, str], av.filter.Graph] | None = None

    def __enter__(self) -> "_RGBConverter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, frame: av.VideoFrame) -> Future:
        """Future of the display-oriented RGB uint8 [H, W, 3] of `frame`."""
        if self._last is not None and self._last[0] is frame:
            return self._last[1]
        while len(self._pending) >= self._MAX_PENDING:
            self._pending.popleft().result()
        future = self._pool.submit(self._convert, frame)
        self._pending.append(future)
        self._last = (frame, future)
        return future

    def _convert(self, frame: av.VideoFrame) -> np.ndarray:
        graph = self._graph_for(frame)
        graph.push(frame)
        return graph.pull().to_ndarray()

    def _graph_for(self, frame: av.VideoFrame) -> av.filter.Graph:
        """buffer -> transpose (display rotation) -> scale -> rgb24, as decord2 builds it."""
        key = (frame.width, frame.height, frame.format.name)
        if self._graph is None or self._graph[0] != key:  # (re)built if the stream changes size
            graph = av.filter.Graph()
            chain = [graph.add_buffer(width=key[0], height=key[1], format=key[2],
                                      time_base=self._time_base)]  # fmt: skip
            chain += [
                graph.add("transpose", way) for way in _TRANSPOSE_FILTERS[self._plan.rotation]
            ]
            size = f"{self._plan.resized_width}:{self._plan.resized_height}"
            chain += [
                graph.add("scale", f"{size}:flags=area"),
                graph.add("format", "rgb24"),
                graph.add("buffersink"),
            ]
            for upstream, downstream in zip(chain, chain[1:], strict=False):
                upstream.link_to(downstream)
            graph.configure()
            self._graph = (key, graph)
        return self._graph[1]
