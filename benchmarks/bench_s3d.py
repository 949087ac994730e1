"""S3D feature-extraction throughput per setting, with the feature difference each one makes.

Settings (``pipeline.s3d_extract``): engine ``reference`` (the S3D modules as written: prep's
computation before issue 12, the baseline measured in the same run) and ``fused`` (BN folded,
oneDNN conv+ReLU, channels_last_3d), each in fp32 and bf16 (autocast for the reference), at
several batch sizes and thread counts. For each: clips/s, CPU seconds per clip, the ratio to the
reference fp32 at the same batch and threads (wall and CPU time), and the features' max relative
difference to the reference fp32 on the same clips. Repeats are interleaved (best of each), so
other processes sharing the CPU blur every setting alike. When ``data_prep.video`` imports, a
synthetic video is decoded into the same clips to say how long S3D would wait on one decode
worker; on a CUDA GPU the same table runs there (bf16 by default, batch 32 included).

    python benchmarks/bench_s3d.py                   # 30 frames at 224, batches 1 8 16, 1 and 2 threads
    python benchmarks/bench_s3d.py --quick           # 16 frames at 112, short windows (< 2 min)
    python benchmarks/bench_s3d.py --batches 8 --threads 2 --frames 30 --size 224

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

SETTINGS = [("reference", "fp32"), ("fused", "fp32"), ("fused", "bf16"), ("reference", "bf16")]


def time_once(extractor: S3DFeatureExtractor, clips: np.ndarray) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call on uint8 clips [B, T, H, W, 3]."""
    sync = torch.cuda.synchronize if extractor.device.type == "cuda" else (lambda: None)
    start, cpu_start = time.perf_counter(), time.process_time()
    extractor(clips)  # returns numpy, so the device work is finished on return
    sync()
    return time.perf_counter() - start, time.process_time() - cpu_start


def sweep(model, args: argparse.Namespace, device: str, settings: list, batches: list[int],
          threads: list[int]) -> dict:  # fmt: skip
    """Time every (setting, batch, threads), interleaved; print one table; return clips/s."""
    rng = np.random.default_rng(0)
    shape = (args.frames, args.size, args.size, 3)
    cfg = S3D_VARIANTS[args.variant]
    extractors = {st: S3DFeatureExtractor(model, cfg, device, *st) for st in settings}
    probe = rng.integers(0, 256, size=(2, *shape), dtype=np.uint8)
    feats = {st: ex(probe)[0] for st, ex in extractors.items()}  # also: one-time setup costs
    base_feat = feats[settings[0]]
    diff = {
        st: float(np.abs(f - base_feat).max() / np.abs(base_feat).max()) for st, f in feats.items()
    }
    print(f"\n{device}: {args.variant}, {args.frames} frames at {args.size}x{args.size}; "
          f"baseline {settings[0][0]} {settings[0][1]} at the same batch and threads")  # fmt: skip
    print(f"{'engine':>9} {'prec':>5} {'batch':>5} {'thr':>3} {'clips/s':>8} {'CPU s/clip':>10} "
          f"{'x wall':>7} {'x CPU':>6} {'feat rel diff':>13}")  # fmt: skip
    rates = {}
    for n_threads in threads:
        if device == "cpu":
            torch.set_num_threads(n_threads)
        for batch in batches:
            clips = rng.integers(0, 256, size=(batch, *shape), dtype=np.uint8)
            best = {st: (math.inf, math.inf) for st in settings}
            for st in settings:
                extractors[st](clips)  # warm-up at this shape (kernel selection)
            deadline = time.perf_counter() + args.min_seconds * len(settings)
            for _ in range(args.repeats):
                for st in settings:
                    wall, cpu = time_once(extractors[st], clips)
                    best[st] = (min(best[st][0], wall), min(best[st][1], cpu))
                if time.perf_counter() > deadline:
                    break
            base_wall, base_cpu = best[settings[0]]
            for st in settings:
                wall, cpu = best[st]
                rates[(st, batch, n_threads)] = batch / wall
                print(f"{st[0]:>9} {st[1]:>5} {batch:>5} {n_threads:>3} {batch / wall:>8.2f} "
                      f"{cpu / batch:>10.3f} {base_wall / wall:>6.2f}x {base_cpu / cpu:>5.2f}x "
                      f"{diff[st]:>13.1e}")  # fmt: skip
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
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="default 1 8 16")
    parser.add_argument("--threads", type=int, nargs="+", default=None, help="CPU threads")
    parser.add_argument("--variant", default="s3dg_howto100m", choices=list(S3D_VARIANTS))
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (best of)")
    parser.add_argument("--min-seconds", type=float, default=None, help="time budget/setting")
    parser.add_argument("--skip-cpu", action="store_true", help="GPU only (when present)")
    args = parser.parse_args()
    args.size = args.size or (112 if args.quick else 224)
    args.frames = args.frames or (16 if args.quick else 30)
    args.min_seconds = args.min_seconds or (2.0 if args.quick else 20.0)
    batches = args.batches or ([2, 8] if args.quick else [1, 8, 16])
    threads = args.threads or sorted({1, os.cpu_count() or 1})
    logging.basicConfig(level=logging.ERROR)  # silence the random-init warning: weights unused

    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}; "
          f"GPU: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}; "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    model, _ = load_s3d(None, args.variant)
    decode = decode_rate(args)

    if not args.skip_cpu:
        rates = sweep(model, args, "cpu", SETTINGS, batches, threads)
        default = ("fused", "fp32")
        best = max((r for (st, _, _), r in rates.items() if st == default), default=0.0)
        report_wait(decode, best, "CPU fused fp32 (best batch/threads)")

    if not torch.cuda.is_available():
        print("\nno CUDA GPU present: the GPU table is skipped (the CUDA path is tested on CPU)")
        return
    gpu_settings = [("reference", "fp32"), ("fused", "fp32"), ("fused", "bf16"),
                    ("fused", "fp16")]  # fmt: skip
    rates = sweep(model, args, "cuda", gpu_settings, sorted({*batches, 32}), [1])
    bf16_32 = rates[(("fused", "bf16"), 32, 1)]
    print(f"GPU fused bf16 at batch 32: {bf16_32:.1f} clips/s")
    report_wait(decode, bf16_32, "GPU fused bf16 batch 32")
    print("  (prep hides this behind num_workers decode processes; bench_prep.py measures "
          "the idle share of a whole run)")  # fmt: skip


if __name__ == "__main__":
    main()
