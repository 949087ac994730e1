"""S3D feature-extraction throughput: clips/s by batch size on CPU, and bf16 on GPU when present.

Baseline (measured in the same run): batch 1 on the same device. Every figure is printed as
clips/s and as a ratio to that baseline. When ``data_prep.video`` imports, the same run also
decodes a synthetic video into VideoBERT clips (20 fps x 1.5 s = 30 frames, methods.md 1.1/8)
and reports how long the extractor would wait on one decode worker.

    python benchmarks/bench_s3d.py            # 30 frames at 224, batches 1 8 32
    python benchmarks/bench_s3d.py --quick    # 16 frames at 112, short timing windows (< 60 s)
    python benchmarks/bench_s3d.py --batches 1 8 --frames 32 --size 224

Weights are random (load_s3d(None)): throughput does not depend on the values.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import cpu_name  # noqa: E402
from pipeline.s3d import S3D_VARIANTS, load_s3d  # noqa: E402
from pipeline.s3d_extract import S3DFeatureExtractor  # noqa: E402


def time_extractor(
    extractor: S3DFeatureExtractor, clips: np.ndarray, min_seconds: float, max_iters: int
) -> tuple[float, float]:
    """(clips/s, process CPU seconds per clip) for uint8 clips [B, T, H, W, 3].

    Repeats until min_seconds or max_iters (at least once). CPU seconds per clip is less
    sensitive than wall time to other processes sharing the cores.
    """
    sync = torch.cuda.synchronize if extractor.device.type == "cuda" else (lambda: None)
    iters, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while True:
        extractor(clips)  # returns numpy, so the device work is finished on return
        sync()
        iters += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds or iters >= max_iters:
            clips_done = iters * clips.shape[0]
            return clips_done / elapsed, (time.process_time() - cpu_start) / clips_done


def sweep(extractor: S3DFeatureExtractor, args: argparse.Namespace, label: str) -> dict[int, float]:
    """Warm up once at batch 1, then time each batch size; prints a table with ratios."""
    rng = np.random.default_rng(0)
    shape = (args.frames, args.size, args.size, 3)
    extractor(rng.integers(0, 256, size=(1, *shape), dtype=np.uint8))  # one-time setup costs
    rates: dict[int, float] = {}
    print(f"\n{label}: {args.variant}, {args.frames} frames at {args.size}x{args.size}")
    base = args.batches[0]
    print(
        f"{'batch':>6} {'clips/s':>10} {'s/clip':>9} {'vs batch ' + str(base):>12} {'CPU s/clip':>11}"
    )
    for batch in args.batches:
        clips = rng.integers(0, 256, size=(batch, *shape), dtype=np.uint8)
        rates[batch], cpu_s = time_extractor(extractor, clips, args.min_seconds, args.max_iters)
        ratio = rates[batch] / rates[base]
        print(
            f"{batch:>6} {rates[batch]:>10.3f} {1 / rates[batch]:>9.3f} {ratio:>11.2f}x {cpu_s:>11.3f}"
        )
    return rates


def decode_rate(args: argparse.Namespace) -> float | None:
    """Clips/s of data_prep.video.iter_clips (one process) on a synthetic 640x360 video."""
    try:
        from data_prep.video import iter_clips
    except ImportError as exc:
        print(f"\ndata_prep.video not importable ({exc}): decode share not measured")
        return None
    if shutil.which("ffmpeg") is None:
        print("\nffmpeg not found: decode share not measured")
        return None
    fps, seconds = 20.0, args.frames / 20.0  # VideoBERT: 20 fps windows of `frames` frames
    duration = 8 if args.quick else 20
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "bench.mp4"
        subprocess.run(
            ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30",
             "-t", str(duration), "-c:v", "libx264", "-pix_fmt", "yuv420p", str(video)],
            check=True,
        )  # fmt: skip
        start = time.perf_counter()
        clips = sum(1 for _ in iter_clips(video, fps=fps, clip_seconds=seconds, size=args.size))
        elapsed = time.perf_counter() - start
    rate = clips / elapsed
    print(f"\ndecode (data_prep.video.iter_clips, 1 process, 640x360 H.264 -> {args.size}): "
          f"{rate:.2f} clips/s ({clips} clips)")  # fmt: skip
    return rate


def report_wait(decode: float | None, extract: float, label: str) -> None:
    """Share of time the extractor idles on one decode worker, and workers needed to feed it."""
    if decode is None:
        return
    wait = max(0.0, 1.0 - decode / extract)
    workers = math.ceil(extract / decode)
    print(f"{label} {extract:.2f} clips/s vs decode {decode:.2f} clips/s: waits {wait:.0%} "
          f"of the time on 1 decode worker; {workers} worker(s) keep it busy")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 frames at 112, short windows")
    parser.add_argument("--size", type=int, default=None, help="H = W (default 224; quick 112)")
    parser.add_argument("--frames", type=int, default=None, help="T (default 30; quick 16)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--variant", default="s3dg_howto100m", choices=list(S3D_VARIANTS))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--min-seconds", type=float, default=None, help="timing window/batch")
    parser.add_argument("--max-iters", type=int, default=5)
    parser.add_argument("--skip-cpu", action="store_true", help="GPU only (when present)")
    args = parser.parse_args()
    args.size = args.size or (112 if args.quick else 224)
    args.frames = args.frames or (16 if args.quick else 30)
    args.min_seconds = args.min_seconds or (1.0 if args.quick else 10.0)
    if args.quick:
        args.max_iters = min(args.max_iters, 2)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)  # silence the random-init warning: weights unused

    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; "
          f"GPU: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")  # fmt: skip
    model, _ = load_s3d(None, args.variant)
    cfg = S3D_VARIANTS[args.variant]
    decode = decode_rate(args)

    cpu_rates = {}
    if not args.skip_cpu:
        cpu_rates = sweep(S3DFeatureExtractor(model, cfg, "cpu"), args, "CPU float32")
        report_wait(decode, max(cpu_rates.values()), "CPU best")

    if not torch.cuda.is_available():
        print("\nno CUDA GPU present: bf16-on-GPU mode skipped")
        return
    gpu = S3DFeatureExtractor(model, cfg, "cuda", precision="bf16")
    gpu_rates = sweep(gpu, args, f"GPU bf16 ({torch.cuda.get_device_name(0)})")
    if cpu_rates:
        base = args.batches[0]
        print(f"GPU batch {max(gpu_rates, key=gpu_rates.get)} vs CPU batch {base}: "
              f"{max(gpu_rates.values()) / cpu_rates[base]:.1f}x")  # fmt: skip
    report_wait(decode, max(gpu_rates.values()), "GPU best")


if __name__ == "__main__":
    main()
