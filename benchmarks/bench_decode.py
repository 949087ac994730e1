"""Benchmark: clip decoding (data_prep.video.iter_clips) against the bare decoder, per decoder.

Run:  python benchmarks/bench_decode.py [--quick] [--seconds 20] [--repeats 3] [video ...]

What it measures (methods.md §1.1: 20 fps, 30-frame / 1.5 s clips, 224 x 224 for S3D, §8):

* ours: ``iter_clips(path, decoder=...)``, everything the prep stage pays for: timestamp
  resampling, resize at decode time, centre crop, clip assembly. Figure: clips/s.
* baseline, same run, same file, the same source frames:
  - decord: ``VideoReader(path).get_batch(indices)`` per clip at native resolution, no further
    processing (the indices are the ones iter_clips picks: last frame with pts <= t_i);
  - pyav: a plain sequential decode (threads on) that converts the same frames to RGB at
    native resolution (``to_ndarray``), nothing else. Also shown, not used for the ratio: the same
    decode without any RGB conversion (a floor no real pipeline can reach).
* ratio = ours clips/s / baseline clips/s (target >= 0.8), by process CPU time (all threads:
  throughput when every core is busy, as in a prep run with one worker per core) and by wall
  time (one video alone on the machine; noisy when the CPU is shared). Best of --repeats runs
  each, interleaved.

Input: a synthetic 1280x720, 30 fps H.264 video of ffmpeg's moving ``testsrc2`` picture made in a
temporary folder (20 s; 6 s with --quick), plus any video paths given on the command line.
"""

import argparse
import importlib.metadata
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

# runnable as `python benchmarks/bench_decode.py` from a checkout without installing vlpipe
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import cpu_name  # noqa: E402
from data_prep.video import VideoInfo, clip_spans, iter_clips, probe_video  # noqa: E402

FPS, CLIP_SECONDS, SIZE = 20.0, 1.5, 224  # VideoBERT's sampling (methods.md §1.1)


def machine() -> str:
    cpu = cpu_name()
    versions = {
        name: importlib.metadata.version(dist)
        for name, dist in [("torch", "torch"), ("av", "av"), ("decord2", "decord2")]
    }
    return (
        f"{cpu}, {os.cpu_count()} cores visible, Python {platform.python_version()}, "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + f", FFmpeg (PyAV) {av.ffmpeg_version_info}"
    )


def make_synthetic(folder: Path, seconds: float) -> Path:
    path = folder / f"testsrc2_720p_{seconds:g}s.mp4"
    source = f"testsrc2=size=1280x720:rate=30:duration={seconds}"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i", source,
         "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )  # fmt: skip
    return path


def target_times(info: VideoInfo) -> list[np.ndarray]:
    """Per clip, the target times t_i = start + i / fps of its real frames (as iter_clips)."""
    frames_per_clip = round(FPS * CLIP_SECONDS)
    out = []
    for start, end in clip_spans(info.duration, CLIP_SECONDS):
        times = start + np.arange(frames_per_clip) / FPS
        out.append(times[times < end - 1e-9])
    return out


def ours(path: Path, decoder: str, info: VideoInfo) -> int:
    return sum(1 for _ in iter_clips(path, fps=FPS, clip_seconds=CLIP_SECONDS, size=SIZE,
                                     decoder=decoder, info=info))  # fmt: skip


def decord_baseline(path: Path, info: VideoInfo) -> int:
    import decord

    reader = decord.VideoReader(str(path))  # native resolution, no resize
    starts = reader.get_frame_timestamp(np.arange(len(reader)))[:, 0].astype(np.float64)
    clips = 0
    for times in target_times(info):
        indices = np.maximum(np.searchsorted(starts, times + 1e-6, side="right") - 1, 0)
        reader.get_batch(indices).asnumpy()
        clips += 1
    return clips


def pyav_baseline(path: Path, info: VideoInfo, convert: bool = True) -> int:
    """Sequential decode; each frame some target time falls in is converted to RGB once."""
    targets = np.concatenate(target_times(info))
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb, origin = float(stream.time_base), (stream.start_time or 0) * float(stream.time_base)
        position, previous = 0, None
        for frame in container.decode(stream):
            time_s = frame.pts * tb - origin
            # targets before this frame belong to the previous frame: "convert" it once
            ahead = np.searchsorted(targets, time_s - 1e-6, side="left")
            if ahead > position and previous is not None and convert:
                previous.to_ndarray(format="rgb24")
            position = max(position, ahead)
            previous = frame
        if position < len(targets) and previous is not None and convert:
            previous.to_ndarray(format="rgb24")
    return len(target_times(info))


def best_of(
    repeats: int, runs: dict[str, Callable[[], int]]
) -> dict[str, tuple[float, float, int]]:
    """Best wall time, best process CPU time (all threads) and clip count of each run.

    Runs are interleaved so that drifts in the CPU share of a busy machine even out.
    """
    best = {name: (float("inf"), float("inf"), 0) for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            clips = run()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu), clips)
    return best


def bench_file(path: Path, repeats: int) -> None:
    info = probe_video(path)
    print(f"\n{path.name}: {info.width}x{info.height}, {info.fps:.2f} fps, {info.duration:.1f} s,"
          f" {info.video_codec}, {len(target_times(info))} clips of {CLIP_SECONDS} s at {FPS:g} fps"
          f" -> {SIZE}x{SIZE}")  # fmt: skip
    runs = {
        "decord iter_clips": lambda: ours(path, "decord", info),
        "decord get_batch native (baseline)": lambda: decord_baseline(path, info),
        "pyav   iter_clips": lambda: ours(path, "pyav", info),
        "pyav   decode + RGB native (baseline)": lambda: pyav_baseline(path, info),
        "pyav   decode only (floor, for info)": lambda: pyav_baseline(path, info, convert=False),
    }
    best = best_of(repeats, runs)
    print(f"  {'':<38} {'wall s':>7} {'clips/s':>8} {'CPU s':>7} {'clips/CPU-s':>11}")
    for name, (wall, cpu, clips) in best.items():
        print(f"  {name:<38} {wall:7.2f} {clips / wall:8.2f} {cpu:7.2f} {clips / cpu:11.2f}")
    for decoder, baseline in [
        ("decord", "decord get_batch native (baseline)"),
        ("pyav", "pyav   decode + RGB native (baseline)"),
    ]:
        ours_wall, ours_cpu, _ = best[f"{decoder:<6} iter_clips"]
        base_wall, base_cpu, _ = best[baseline]
        by_cpu, by_wall = base_cpu / ours_cpu, base_wall / ours_wall
        verdict = "ok" if by_cpu >= 0.8 else "BELOW TARGET"
        print(f"  ratio {decoder:<6} iter_clips / baseline: {by_cpu:.2f} by CPU time "
              f"(target >= 0.8: {verdict}), {by_wall:.2f} by wall time")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("videos", nargs="*", type=Path, help="extra video files to measure")
    parser.add_argument("--quick", action="store_true", help="6 s synthetic video, 2 repeats")
    parser.add_argument("--seconds", type=float, default=20.0, help="synthetic video length")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    seconds, repeats = (6.0, 2) if args.quick else (args.seconds, args.repeats)
    print("machine:", machine())
    with tempfile.TemporaryDirectory() as tmp:
        for path in [make_synthetic(Path(tmp), seconds), *args.videos]:
            bench_file(path, repeats)


if __name__ == "__main__":
    main()
