"""`vlpipe prep`: a folder of narrated videos -> clip-aligned webdataset shards.

Stages (one obvious place each): decode (`data_prep.video`, in worker processes via
`data_prep.decode_worker`), S3D features (`pipeline.s3d`, batched across videos here), transcript
(`data_prep.asr`), alignment (`data_prep.align`), shard writing (`pipeline.shards`).

Resume and distribution: every rank sees the same sorted input list, takes every world-th input,
skips the keys already in completed shards (and recorded failures unless --retry-failed), and
writes its own shards; the manifests merge when each rank finishes. A run killed at any moment
and rerun ends with the same samples as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import os
import queue
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.align import align
from data_prep.decode_worker import DecodeSettings, video_events, worker_main
from data_prep.inputs import InputItem, discover_inputs, quick_fingerprint
from pipeline.config import ConfigError, config_hash, save_config, to_dict
from pipeline.io import append_jsonl, atomic_write_json, file_sha256
from pipeline.prep_config import PrepConfig
from pipeline.shards import (
    STATE_DIR,
    ResumableShardWriter,
    completed_shards,
    latest_failures,
    merge_state,
    npy_bytes,
    rank_state_path,
)

log = logging.getLogger("vlpipe.prep")


@dataclass
class VideoState:
    """What the main process knows about one input while its events arrive."""

    item: InputItem
    begin: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    spans: list[tuple[float, float, int]] = field(default_factory=list)
    feats: dict[int, np.ndarray] = field(default_factory=dict)  # clip index -> [F]
    fmaps: dict[int, np.ndarray] = field(default_factory=dict)  # clip index -> [h, w, F]
    thumbs: list[np.ndarray] = field(default_factory=list)
    speech: dict | None = None
    end: dict | None = None

    @property
    def complete(self) -> bool:
        return self.end is not None and len(self.feats) == len(self.spans)


@dataclass
class PrepSummary:
    inputs: int = 0
    skipped_done: int = 0
    skipped_failed: int = 0
    ok: int = 0
    failed: Counter = field(default_factory=Counter)  # stage -> count
    clips: int = 0
    video_seconds: float = 0.0
    words: int = 0
    wall: float = 0.0
    timings: Counter = field(default_factory=Counter)  # decode / s3d / asr / write seconds
    random_init: bool = False
    total_samples: int = 0  # in the merged manifest (all ranks, all runs)


def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun / accelerate launch environment variables."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    return rank, world, local


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in (
        "vlpipe",
        "torch",
        "numpy",
        "av",
        "decord2",
        "faster-whisper",
        "ctranslate2",
        "openai-whisper",
        "webdataset",
    ):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


def resolve_device(device: str, local_rank: int) -> str:
    import torch

    if device != "auto":
        return device
    return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"


def check_resume_config(out: Path, cfg: PrepConfig) -> None:
    """Refuse to mix samples made with different content settings in one output directory."""
    path = out / STATE_DIR / "content_config.json"
    content = {k: to_dict(cfg)[k] for k in PrepConfig.CONTENT_SECTIONS}
    if path.exists():
        import json

        old = json.loads(path.read_text())
        diffs = [
            f"{sec}.{k}: {old.get(sec, {}).get(k)!r} -> {v!r}"
            for sec, d in content.items()
            for k, v in d.items()
            if old.get(sec, {}).get(k) != v
        ]
        if diffs:
            raise ConfigError(
                f"{out} holds samples made with other settings ({'; '.join(diffs)}); "
                "use a new --output directory or the original settings"
            )
    else:
        atomic_write_json(path, content)


def find_duplicates(items: list[InputItem]) -> dict[str, InputItem]:
    """duplicate key -> the input it duplicates (the first by key among identical files)."""
    by_fp: dict[str, list[InputItem]] = defaultdict(list)
    for item in items:
        fp = quick_fingerprint(item.path)
        if fp is not None:
            by_fp[fp].append(item)
    dups = {}
    for group in by_fp.values():
        if len(group) < 2:
            continue
        by_digest: dict[str, list[InputItem]] = defaultdict(list)
        for item in group:  # confirm with the full content hash
            by_digest[file_sha256(item.path)].append(item)
        for same in by_digest.values():
            for dup in same[1:]:
                dups[dup.key] = same[0]
    return dups


class Prep:
    """One rank's prep run. Use `run()`."""

    def __init__(self, cfg: PrepConfig, input_spec: str, out: Path, retry_failed: bool = False):
        self.cfg, self.input_spec, self.out, self.retry_failed = cfg, input_spec, out, retry_failed
        self.rank, self.world, self.local_rank = dist_info()
        self.summary = PrepSummary()
        self.states: dict[str, VideoState] = {}
        self.buffer: list[tuple[str, int, np.ndarray]] = []  # (key, clip index, frames [T,S,S,3])
        self.extractor = None
        self.s3d_info: dict[str, Any] = {}
        self.transcriber = None
        self.writer: ResumableShardWriter | None = None
        self.versions = library_versions()
        self.failures_path = rank_state_path(out, self.rank, "failures")

    # ----------------------------------------------------------------------------- set-up
    def plan(self) -> tuple[list[InputItem], list[tuple[InputItem, InputItem]]]:
        """This rank's inputs still to do, and the duplicates it must record."""
        items = discover_inputs(self.input_spec, self.cfg.video.extensions)
        self.summary.inputs = len(items)
        dups = find_duplicates(items)
        mine = items[self.rank :: self.world]
        done = {k for r in completed_shards(self.out) for k in r["keys"]}
        failed = set(latest_failures(self.out))
        todo, my_dups = [], []
        for item in mine:
            if item.key in done:
                self.summary.skipped_done += 1
            elif item.key in failed and not self.retry_failed:
                self.summary.skipped_failed += 1
            elif item.key in dups:
                my_dups.append((item, dups[item.key]))
            else:
                todo.append(item)
        return todo, my_dups

    def load_models(self) -> None:
        from pipeline.s3d import S3D_VARIANTS, S3DFeatureExtractor, load_s3d

        fc = self.cfg.features
        model, info = load_s3d(fc.s3d_weights, fc.s3d_variant, seed=fc.seed)
        device = resolve_device(fc.device, self.local_rank)
        self.extractor = S3DFeatureExtractor(
            model.to(device), S3D_VARIANTS[info["variant"]], device
        )
        self.s3d_info = info
        self.summary.random_init = info["weights"] == "random-init"

    def get_transcriber(self):
        if self.transcriber is None:
            from data_prep.asr import ASRSettings, Transcriber

            a = self.cfg.asr
            device = resolve_device(a.device, self.local_rank)
            # ASRConfig's fields carry over by name (it adds `source`; ASRSettings' extra fields
            # keep their defaults); only the device is resolved here.
            shared = {
                f.name: getattr(a, f.name)
                for f in dataclasses.fields(ASRSettings)
                if hasattr(a, f.name) and f.name != "device"
            }
            self.transcriber = Transcriber(ASRSettings(**shared, device=device.split(":")[0]))
        return self.transcriber

    # ----------------------------------------------------------------------------- records
    def fail(self, key: str, display: str, stage: str, error: str) -> None:
        append_jsonl(
            self.failures_path,
            {"key": key, "input": display, "stage": stage, "error": error, "time": time.time()},
        )
        self.summary.failed[stage] += 1
        self.states.pop(key, None)
        self.buffer = [b for b in self.buffer if b[0] != key]
        log.warning("failed [%s] %s: %s", stage, display, error)

    # ----------------------------------------------------------------------------- events
    def handle(self, event: tuple) -> None:
        kind, key = event[0], event[1]
        if kind == "start":
            return
        state = self.states.get(key)
        if state is None:
            return  # the input already failed
        if kind == "begin":
            state.begin = event[2]
        elif kind == "info":
            state.info = event[2]
        elif kind == "clips":
            _, _, spans, frames, thumbs = event
            first = len(state.spans)
            state.spans.extend(spans)
            if thumbs is not None:
                state.thumbs.extend(thumbs)
            for i in range(len(spans)):
                self.buffer.append((key, first + i, frames[i]))
            self.flush(partial=False)
        elif kind == "speech":
            state.speech = event[2]
        elif kind == "end":
            state.end = event[2]
            self.summary.timings["decode"] += event[2]["decode_seconds"]
            if state.complete:
                self.finalize(state)
        elif kind == "error":
            self.fail(key, state.item.display, event[2], event[3])

    def flush(self, partial: bool = True) -> None:
        """Run S3D on buffered clips (any mix of videos) in batches of features.batch_size.

        Every forward has the same batch shape (a short last batch is zero-padded): oneDNN's
        result for a clip then does not depend on which other clips share its batch, so a
        resumed or distributed run gives bit-identical features. `partial=False` leaves a short
        remainder buffered for the next call.
        """
        bs = self.cfg.features.batch_size
        while len(self.buffer) >= bs or (partial and self.buffer):
            batch, self.buffer = self.buffer[:bs], self.buffer[bs:]
            frames = np.stack([b[2] for b in batch])
            if len(batch) < bs:
                pad = np.zeros((bs - len(batch), *frames.shape[1:]), frames.dtype)
                frames = np.concatenate([frames, pad])
            t0 = time.perf_counter()
            feats, fmaps = self.extractor(frames, spatial=self.cfg.features.spatial)
            self.summary.timings["s3d"] += time.perf_counter() - t0
            finished = []
            for j, (key, idx, _) in enumerate(batch):
                state = self.states[key]
                state.feats[idx] = feats[j]
                if fmaps is not None:
                    state.fmaps[idx] = fmaps[j]
                if state.complete:
                    finished.append(state)
            for state in finished:
                self.finalize(state)

    def waiting_video(self) -> bool:
        """A fully decoded video whose last clips sit in the buffer (flush them, don't wait)."""
        return any(s.end is not None for s in self.states.values())

    def transcript_of(self, state: VideoState):
        from data_prep.asr import Transcript

        speech = state.speech or {}
        if speech.get("subtitles") is not None:
            return Transcript.from_json(speech["subtitles"])
        if speech.get("audio") is not None:
            t0 = time.perf_counter()
            audio = speech["audio"].astype(np.float32) / 32767.0
            transcript = self.get_transcriber().transcribe(audio)
            self.summary.timings["asr"] += time.perf_counter() - t0
            return transcript
        return Transcript(source="none", model="", language="", sentences=[])

    def finalize(self, state: VideoState) -> None:
        key, item = state.item.key, state.item
        try:
            transcript = self.transcript_of(state)
        except Exception as e:
            self.fail(key, item.display, "asr", f"{item.display}: {type(e).__name__}: {e}")
            return
        t0 = time.perf_counter()
        n = len(state.spans)
        spans = [(s, e) for s, e, _ in state.spans]
        clips_json, asr_json = align(spans, transcript)
        for clip, (_, _, real) in zip(clips_json["clips"], state.spans, strict=True):
            clip["num_frames"] = real
        clips_json.update(fps=self.cfg.video.fps, clip_seconds=self.cfg.video.clip_seconds)
        feat = np.stack([state.feats[i] for i in range(n)]).astype(np.float16)
        info = state.info
        meta = {
            "key": key,
            "source": item.display,
            "source_path": str(Path(item.path)) if not item.path.startswith("tar:") else item.path,
            "bytes": state.begin.get("bytes"),
            "sha256": state.begin.get("sha256"),
            "duration": info.get("duration"),
            "native_fps": info.get("fps"),
            "variable_frame_rate": info.get("variable_frame_rate"),
            "width": info.get("width"),
            "height": info.get("height"),
            "rotation": info.get("rotation"),
            "video_codec": info.get("video_codec"),
            "has_audio": info.get("has_audio"),
            "num_clips": n,
            "decoder": self.cfg.video.decoder,
            "extraction": {
                **to_dict(self.cfg.video),
                "frames_per_clip": round(self.cfg.video.fps * self.cfg.video.clip_seconds),
                "spatial": self.cfg.features.spatial,
                "thumbnail_size": self.cfg.features.thumbnail_size,
                "s3d_variant": self.s3d_info.get("variant"),
                "s3d_layer": "Mixed_5c",
                "pooling": "mean over T,H,W (feat); mean over T (fmap)",
            },
            "weights": self.s3d_info.get("weights"),
            "s3d_weights_path": self.s3d_info.get("path"),
            "transcript_source": transcript.source,
            "transcript_note": (state.speech or {}).get("note"),
            "whisper_model": transcript.model if transcript.source.endswith("whisper") else None,
            "versions": self.versions,
            "config_hash": self.content_hash,
            **({"input_extra": item.extra} if item.extra else {}),
        }
        sample = {
            "__key__": key,
            "feat.npy": npy_bytes(feat),
            "clips.json": clips_json,
            "asr.json": asr_json,
            "meta.json": meta,
        }
        if state.fmaps:
            fmap = np.stack([state.fmaps[i] for i in range(n)]).astype(np.float16)
            sample["fmap.npy"] = npy_bytes(fmap)
        if state.thumbs:
            sample["thumbs.npy"] = npy_bytes(np.stack(state.thumbs).astype(np.uint8))
        self.writer.write(sample)
        self.summary.timings["write"] += time.perf_counter() - t0
        self.summary.ok += 1
        self.summary.clips += n
        self.summary.video_seconds += float(info.get("duration") or 0.0)
        self.summary.words += len(transcript.words)
        del self.states[key]
        if self.pbar is not None:
            self.pbar.update(1)
            elapsed = max(time.perf_counter() - self.t_start, 1e-6)
            self.pbar.set_postfix(
                clips_s=f"{self.summary.clips / elapsed:.1f}",
                failed=sum(self.summary.failed.values()),
            )

    # ----------------------------------------------------------------------------- driving
    def decode_settings(self) -> DecodeSettings:
        return DecodeSettings.from_config(self.cfg)

    def run_inline(self, todo: list[InputItem]) -> None:
        for item in todo:
            self.states[item.key] = VideoState(item)
            for event in video_events(item, self.decode_settings(), self.tmp_dir):
                self.handle(event)
            self.flush()

    def run_workers(self, todo: list[InputItem]) -> None:
        ctx = mp.get_context("spawn")  # no fork after torch/OpenMP start: avoids deadlocks
        n = min(self.cfg.num_workers, len(todo))
        task_q, event_q = ctx.Queue(), ctx.Queue(maxsize=2 + 2 * n)
        for item in todo:
            self.states[item.key] = VideoState(item)
            task_q.put(item)
        for _ in range(n):
            task_q.put(None)  # one stop sign per worker, behind the inputs
        args = (task_q, event_q, self.decode_settings(), str(self.tmp_dir))

        def start_worker() -> mp.process.BaseProcess:
            w = ctx.Process(target=worker_main, args=args, daemon=True)
            w.start()
            return w

        workers = [start_worker() for _ in range(n)]
        current: dict[int, str] = {}  # worker pid -> key it is decoding
        while self.states:
            try:
                event = event_q.get(timeout=0.2)
            except queue.Empty:
                if self.waiting_video():  # nothing arriving: don't let a finished video wait
                    self.flush()
                for i, w in enumerate(workers):
                    if w.exitcode not in (None, 0):  # crashed (e.g. a decoder segfault)
                        key = current.pop(w.pid, None)
                        if key in self.states:
                            self.fail(
                                key,
                                self.states[key].item.display,
                                "decode",
                                f"decoder process died (exit code {w.exitcode})",
                            )
                        workers[i] = start_worker()
                if all(w.exitcode == 0 for w in workers):
                    self.drain(event_q)
                    break
                continue
            if event[0] == "start":
                current[event[2]] = event[1]
            self.handle(event)
        self.flush()
        for key in list(self.states):  # inputs no worker finished (should not happen)
            self.fail(key, self.states[key].item.display, "decode", "decoder stopped early")
        for w in workers:
            w.join(timeout=5)
            if w.is_alive():
                w.terminate()

    def drain(self, event_q) -> None:
        """Events still in the pipe after every worker exited."""
        while True:
            try:
                self.handle(event_q.get(timeout=1.0))
            except queue.Empty:
                return

    def run(self) -> PrepSummary:
        t_start = time.perf_counter()
        self.t_start = t_start
        self.out.mkdir(parents=True, exist_ok=True)
        check_resume_config(self.out, self.cfg)
        self.content_hash = config_hash(self.cfg, PrepConfig.CONTENT_SECTIONS)
        if self.rank == 0:
            save_config(self.cfg, self.out / "prep_config.yaml", {"input": self.input_spec})
        self.tmp_dir = self.out / STATE_DIR / f"tmp-rank{self.rank:03d}"
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        todo, dups = self.plan()
        for item, original in dups:
            self.fail(
                item.key, item.display, "dedup", f"same content as {original.display}; kept once"
            )
        self.writer = ResumableShardWriter(
            self.out, self.rank, self.cfg.shards.max_samples, self.cfg.shards.max_bytes
        )
        self.pbar = None
        if todo:
            self.load_models()
            from tqdm import tqdm

            self.pbar = tqdm(
                total=len(todo),
                unit="video",
                desc=f"prep rank {self.rank}",
                disable=not self.cfg.progress,
                dynamic_ncols=True,
            )
            try:
                if self.cfg.num_workers > 0:
                    self.run_workers(todo)
                else:
                    self.run_inline(todo)
            finally:
                self.pbar.close()
        self.writer.close()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        shards, _ = merge_state(self.out)
        self.summary.total_samples = sum(r["samples"] for r in shards)
        self.summary.wall = time.perf_counter() - t_start
        return self.summary


def run_prep(
    cfg: PrepConfig, input_spec: str, out: Path, retry_failed: bool = False
) -> PrepSummary:
    return Prep(cfg, input_spec, out, retry_failed).run()


def print_summary(s: PrepSummary, out: Path) -> None:
    """The end-of-run table: videos ok / failed by reason, clips, hours, words, throughput."""
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    t = Table(title=f"vlpipe prep -> {out}", show_header=False)
    t.add_row("inputs found", str(s.inputs))
    t.add_row("already done (skipped)", str(s.skipped_done))
    if s.skipped_failed:
        t.add_row("failed before (skipped; --retry-failed redoes them)", str(s.skipped_failed))
    t.add_row("videos ok (this run)", str(s.ok))
    for stage, n in sorted(s.failed.items()):
        t.add_row(f"failed at {stage}", str(n))
    t.add_row("clips", str(s.clips))
    t.add_row("hours of video", f"{s.video_seconds / 3600:.3f}")
    t.add_row("transcript words", str(s.words))
    t.add_row("wall time", f"{s.wall:.1f} s")
    if s.wall > 0:
        t.add_row(
            "throughput",
            f"{s.clips / s.wall:.1f} clips/s, {s.video_seconds / s.wall:.2f}x real time",
        )
    for name in ("decode", "s3d", "asr", "write"):
        t.add_row(f"time in {name}", f"{s.timings.get(name, 0.0):.1f} s")
    t.add_row("samples in output (all runs)", str(s.total_samples))
    console.print(t)
    if sum(s.failed.values()):
        console.print(
            f"[yellow]{sum(s.failed.values())} input(s) failed: see {out / 'failures.jsonl'}"
        )
    if s.random_init:
        console.print(
            "[bold red]WARNING: S3D ran with RANDOM weights (no features.s3d_weights given). "
            "Features are only useful for testing; samples are marked weights=random-init."
        )
