"""Whole `vlpipe prep` on the bundled sample corpus: wall time and where it goes.

Prints the wall time, the share of decode / S3D / ASR / write (decode runs in worker processes,
overlapped with the main process's S3D and ASR, so shares can sum past 100 %), and throughput as
a ratio to real time (seconds of video per wall second) - the baseline measured in the same run.

    python benchmarks/bench_prep.py [--quick] [--config configs/prep/demo.yaml] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks.machine import cpu_name  # noqa: E402


def main() -> None:
    import torch

    from data_prep.prep import run_prep
    from pipeline.config import load_config
    from pipeline.prep_config import PrepConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 videos only")
    ap.add_argument("--config", default=str(REPO / "configs/prep/demo.yaml"))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_config(PrepConfig, args.config, ["progress=false", *args.overrides])
    corpus = REPO / "data" / "sample_corpus"
    videos = sorted(corpus.glob("*.mp4"))[: 8 if args.quick else None]
    tmp = Path(tempfile.mkdtemp(prefix="bench_prep_"))
    try:
        manifest = tmp / "in.jsonl"
        manifest.write_text("".join(json.dumps({"path": str(v)}) + "\n" for v in videos))
        s = run_prep(cfg, str(manifest), tmp / "out")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"settings: {args.config} {' '.join(args.overrides)} num_workers={cfg.num_workers}")
    print(
        f"videos ok {s.ok}, failed {sum(s.failed.values())}, clips {s.clips}, "
        f"video {s.video_seconds:.1f} s, words {s.words}"
    )
    print(
        f"wall {s.wall:.1f} s = {s.video_seconds / s.wall:.2f}x real time, "
        f"{s.clips / s.wall:.2f} clips/s"
    )
    for stage in ("decode", "s3d", "asr", "write"):
        t = s.timings.get(stage, 0.0)
        print(f"  {stage:7s} {t:7.1f} s  {100 * t / s.wall:5.1f} % of wall")


if __name__ == "__main__":
    main()
