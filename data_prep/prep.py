"""`vlpipe prep`: a folder of narrated videos -> clip-aligned webdataset shards.

Stages (one obvious place each): decode (`data_prep.video`, in worker processes via
`data_prep.decode_worker`), S3D features (`pipeline.s3d_extract`, batched across videos here),
transcript (`data_prep.asr`, in a thread so that it never holds up S3D), alignment
(`data_prep.align`), shard writing (`pipeline.shards`), the end-of-run table
(`data_prep.prep_report`); the checks before any work (`data_prep.prep_setup`).

Resume and distribution: every rank sees the same sorted input list, takes every world-th input,
skips the keys already in completed shards (and recorded failures unless --retry-failed), and
writes its own shards; the manifests merge when each rank finishes. A run killed at any moment
and rerun ends with the same samples as an uninterrupted one. SIGINT / SIGTERM stop the run at the
next safe point (never inside a shard write): the open shard is closed with its finished samples,
one line says to rerun, and the exit code is 128 + the signal number.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import queue
import shutil
import signal
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.align import align
from data_prep.decode_worker import DecodeSettings, quiet_ffmpeg, video_events, worker_main
from data_prep.inputs import InputError, InputItem, discover_inputs, find_duplicates
from data_prep.interrupt import INTERRUPTED_LINE, PrepInterrupted, StopOnSignal
from data_prep.prep_report import PrepSummary, print_summary
from data_prep.prep_setup import (
    check_output_dir,
    check_resume_config,
    dist_info,
    library_versions,
    resolve_device,
)
from pipeline.config import config_hash, save_config, to_dict
from pipeline.io import append_jsonl
from pipeline.prep_config import PrepConfig, check_space_to_depth
from pipeline.shards import (
    STATE_DIR,
    ResumableShardWriter,
    completed_shards,
    latest_failures,
    merge_state,
    npy_bytes,
    rank_state_path,
)

__all__ = ["Prep", "PrepInterrupted", "PrepSummary", "print_summary", "run_prep"]

log = logging.getLogger("vlpipe.prep")


@dataclass
class VideoState:
    """What the main process knows about one input while its events arrive."""

    item: InputItem
    begin: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    spans: list[tuple[float, float, int]] = field(default_factory=list)
    feats: dict[int, np.ndarray] = field(default_factory=dict)  # clip index -> [D]
    # member name (fmap.npy [h, w, D], tokens.npy [N, D], sizes.npy [N]) -> clip index -> array
    spatial: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    thumbs: list[np.ndarray] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list)  # stored frames [n, F', s, s, 3]
    speech: dict | None = None
    transcript: Future | None = None  # ASR running in the thread (or done)
    end: dict | None = None

    @property
    def complete(self) -> bool:
        """Decoded and every clip through S3D (the transcript may still be running)."""
        return self.end is not None and len(self.feats) == len(self.spans)


class Prep:
    """One rank's prep run. Use `run()`."""

    def __init__(self, cfg: PrepConfig, input_spec: str, out: Path, retry_failed: bool = False):
        self.cfg, self.input_spec, self.out, self.retry_failed = cfg, input_spec, out, retry_failed
        self.rank, self.world, self.local_rank = dist_info()
        self.summary = PrepSummary(num_workers=cfg.num_workers)
        self.states: dict[str, VideoState] = {}
        self.buffer: list[tuple[str, int, np.ndarray]] = []  # (key, clip index, frames [T,S,S,3])
        self.extractor = None
        self.s3d_info: dict[str, Any] = {}
        self.encoder_record: dict[str, Any] = {}  # meta.json "encoder" (pipeline.encoders.extract)
        self.transcriber = None
        self.asr_pool: ThreadPoolExecutor | None = None
        self.writer: ResumableShardWriter | None = None
        self.pbar = None
        self.stop = StopOnSignal()
        self.versions = library_versions()
        self.failures_path = rank_state_path(out, self.rank, "failures")
        self.duplicates_path = rank_state_path(out, self.rank, "duplicates")

    # ----------------------------------------------------------------------------- set-up
    def plan(
        self, items: list[InputItem]
    ) -> tuple[list[InputItem], list[tuple[InputItem, InputItem]]]:
        """This rank's inputs still to do, and the duplicates it must record."""
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
        """The feature extractor: the fused S3D engine for `s3d` (today's features, bit for bit),
        any other registered visual encoder through `EncoderExtractor`."""
        import torch

        fc = self.cfg.features
        if fc.threads > 0:
            torch.set_num_threads(fc.threads)
        device = resolve_device(fc.device, self.local_rank)
        if fc.extractor == "s3d":
            self.load_s3d(device)
        else:
            self.load_encoder(device)
        self.summary.random_init = self.encoder_record["weights_sha256"] == "random-init"
        self.summary.s3d = {
            **({"extractor": fc.extractor} if fc.extractor != "s3d" else {}),
            "engine": fc.engine if fc.extractor == "s3d" else "-",
            "precision": getattr(self.extractor, "precision", "fp32"),
            "device": device,
            "threads": torch.get_num_threads() if device == "cpu" else "-",
            "batch": fc.batch_size,
        }

    def load_s3d(self, device: str) -> None:
        from pipeline.encoders.extract import encoder_record, with_source
        from pipeline.s3d import MIXED_5C_DIM, S3D_VARIANTS, load_s3d
        from pipeline.s3d_extract import S3DFeatureExtractor

        fc = self.cfg.features
        model, info = load_s3d(fc.checkpoint, fc.s3d_variant, seed=fc.seed)
        if S3D_VARIANTS[info["variant"]].stem == "space_to_depth":
            check_space_to_depth(self.cfg.video)  # variant "auto" is known only now
        self.extractor = S3DFeatureExtractor(
            model, S3D_VARIANTS[info["variant"]], device, fc.engine, fc.precision
        )
        self.s3d_info = info
        # What the `s3d` encoder (pipeline.encoders, the same trunk unfused) would be: the record a
        # fine-tuning run rebuilds it from (methods.md 8; fused = reference up to ~3e-7 relative).
        weights = str(Path(info["path"]).resolve()) if info["path"] else None
        settings = dataclasses.replace(fc.encoder, variant=info["variant"])
        self.encoder_record = encoder_record(
            name="s3d",
            settings=with_source(settings, weights, fc.seed),
            weights_sha256=info["weights"],
            feature_dim=MIXED_5C_DIM,
        )

    def load_encoder(self, device: str) -> None:
        from pipeline.encoders import build_encoder
        from pipeline.encoders.extract import EncoderExtractor, encoder_record, with_source

        fc = self.cfg.features
        weights = str(Path(fc.weights).expanduser().resolve()) if fc.weights else None
        try:
            encoder = build_encoder(fc.extractor, with_source(fc.encoder, weights, fc.seed))
        except FileNotFoundError as e:
            raise InputError(f"features.weights: {e}") from None
        except ValueError as e:  # unreadable file, or not this encoder's checkpoint
            raise InputError(f"features.weights: {e}") from None
        self.extractor = EncoderExtractor(encoder, device)
        self.encoder_record = encoder_record(encoder)
        self.s3d_info = {}  # meta's s3d_* keys stay empty; "encoder" names the checkpoint

    def get_transcriber(self):
        if self.transcriber is None:
            from data_prep.asr import ASRSettings, Transcriber

            device = resolve_device(self.cfg.asr.device, self.local_rank).split(":")[0]
            self.transcriber = Transcriber(ASRSettings.from_config(self.cfg.asr, device))
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

    def duplicate(self, item: InputItem, original: InputItem) -> None:
        """Record an input whose content another input already has (not a failure)."""
        record = {"key": item.key, "input": item.display, "same_as": original.display}
        append_jsonl(self.duplicates_path, {**record, "time": time.time()})
        self.summary.duplicates += 1
        log.info("duplicate %s: same content as %s; kept once", item.display, original.display)

    # ----------------------------------------------------------------------------- events
    def handle(self, event: tuple) -> None:
        kind, key = event[0], event[1]
        if kind == "log":  # a warning from a worker, already naming its file
            log.log(event[2], "%s", event[3])
            return
        state = self.states.get(key)
        if state is None:
            return  # the input already failed
        if kind == "start":
            if self.pbar is not None:  # name the file being decoded
                self.pbar.set_postfix_str(state.item.display[-40:], refresh=False)
        elif kind == "begin":
            state.begin = event[2]
        elif kind == "info":
            state.info = event[2]
        elif kind == "clips":
            _, _, spans, frames, thumbs = event
            first = len(state.spans)
            state.spans.extend(spans)
            if thumbs is not None:
                state.thumbs.extend(thumbs)
            fc = self.cfg.features
            if fc.frames:  # from the frames decoded for the extractor: no second decode
                from pipeline.encoders.frames import stored_frames

                state.frames.append(stored_frames(frames, fc.frames_per_clip, fc.frames_size))
            for i in range(len(spans)):
                self.buffer.append((key, first + i, frames[i]))
            self.flush(partial=False)
        elif kind == "speech":
            state.speech = event[2]
            # ASR in its thread: S3D goes on with other clips meanwhile (CTranslate2 and the
            # ONNX VAD release the GIL).
            state.transcript = self.asr_pool.submit(self.transcript_of, state)
        elif kind == "end":
            state.end = event[2]
            self.summary.timings["decode"] += event[2]["decode_seconds"]
        elif kind == "error":
            self.fail(key, state.item.display, event[2], event[3])
        self.finalize_ready()

    def flush(self, partial: bool = True) -> None:
        """Run the extractor (S3D by default) on buffered clips (any mix of videos) in batches of
        features.batch_size.

        Every forward has the same batch shape (a short last batch is zero-padded): oneDNN's
        result for a clip then does not depend on which other clips share its batch, so a
        resumed or distributed run gives bit-identical features. `partial=False` leaves a short
        remainder buffered for the next call.
        """
        bs = self.cfg.features.batch_size
        while len(self.buffer) >= bs or (partial and self.buffer):
            self.stop.check()
            batch, self.buffer = self.buffer[:bs], self.buffer[bs:]
            frames = self.extractor.host_buffer((bs, *batch[0][2].shape))
            for j, item in enumerate(batch):
                frames[j] = item[2]
            frames[len(batch) :] = 0
            t0 = time.perf_counter()
            feats, spatial = self.extract(frames)
            self.summary.timings["s3d"] += time.perf_counter() - t0
            for j, (key, idx, _) in enumerate(batch):
                state = self.states[key]
                state.feats[idx] = feats[j]
                for name, values in spatial.items():
                    state.spatial.setdefault(name, {})[idx] = values[j]
        self.finalize_ready()

    def extract(self, frames: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """uint8 clips [B, F, S, S, 3] -> (feat [B, D], {member: per-clip arrays [B, ...]}).

        The token map (features.spatial): S3D's Mixed_5c averaged over time, `fmap.npy`
        [B, h, w, 1024] as before issue 11; any other encoder's tokens, `tokens.npy` [B, N, D]
        (+ `sizes.npy` [B, N] under ToMe). Both cost nothing beyond the forward that gives feat.
        """
        spatial = self.cfg.features.spatial
        if self.cfg.features.extractor != "s3d":
            return self.extractor(frames, spatial=spatial)
        feats, fmaps = self.extractor(frames, spatial=spatial)
        return feats, ({"fmap.npy": fmaps} if fmaps is not None else {})

    def waiting_video(self) -> bool:
        """A fully decoded video whose last clips sit in the buffer (flush them, don't wait)."""
        return any(s.end is not None and not s.complete for s in self.states.values())

    def finalize_ready(self) -> None:
        """Write every video whose clips went through S3D and whose transcript is done."""
        for state in list(self.states.values()):
            if state.complete and state.transcript is not None and state.transcript.done():
                self.finalize(state)

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
            for name, counts in transcript.dropped.items():  # totals for the summary
                self.summary.asr_dropped.update({(name, unit): n for unit, n in counts.items()})
            return transcript
        return Transcript(source="none", model="", language="", sentences=[])

    def finalize(self, state: VideoState) -> None:
        key, item = state.item.key, state.item
        try:
            transcript = state.transcript.result()
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
            "truncated": bool(info.get("truncated")),
            "declared_duration": info.get("declared_duration"),
            "native_fps": info.get("fps"),
            "variable_frame_rate": info.get("variable_frame_rate"),
            "width": info.get("width"),
            "height": info.get("height"),
            "rotation": info.get("rotation"),
            "video_codec": info.get("video_codec"),
            "has_audio": info.get("has_audio"),
            "num_clips": n,
            "decoder": self.cfg.video.decoder,
            "extraction": self.extraction(),
            "weights": self.encoder_record["weights_sha256"],  # sha256 or "random-init"
            "s3d_weights_path": self.s3d_info.get("path"),  # the extractor's checkpoint as given
            "encoder": self.encoder_record,  # what rebuilds the extractor (data.frames=true)
            "frames": self.frames_record(),
            "transcript_source": transcript.source,
            "transcript_note": (state.speech or {}).get("note"),
            "asr_dropped": transcript.dropped,  # {filter: {segments, words}}; {} if no Whisper
            "whisper_model": transcript.model if transcript.source.endswith("whisper") else None,
            "versions": self.versions,
            "content_config_hash": self.content_hash,
            **({"input_extra": item.extra} if item.extra else {}),
        }
        sample = {
            "__key__": key,
            "feat.npy": npy_bytes(feat),
            "clips.json": clips_json,
            "asr.json": asr_json,
            "meta.json": meta,
        }
        for name, per_clip in state.spatial.items():  # fmap.npy / tokens.npy float16
            values = np.stack([per_clip[i] for i in range(n)])
            sample[name] = npy_bytes(values if name == "sizes.npy" else values.astype(np.float16))
        if state.thumbs:
            sample["thumbs.npy"] = npy_bytes(np.stack(state.thumbs).astype(np.uint8))
        if state.frames:
            sample["frames.npy"] = npy_bytes(np.concatenate(state.frames))  # uint8
        self.writer.write(sample)
        self.summary.timings["write"] += time.perf_counter() - t0
        self.summary.ok += 1
        self.summary.truncated += int(meta["truncated"])
        self.summary.clips += n
        self.summary.video_seconds += float(info.get("duration") or 0.0)
        self.summary.words += len(transcript.words)
        del self.states[key]
        if self.pbar is not None:
            self.pbar.update(1)
            elapsed = max(time.perf_counter() - self.t_start, 1e-6)
            self.pbar.set_postfix_str(
                f"{self.summary.clips / elapsed:.1f} clips/s, "
                f"{sum(self.summary.failed.values())} failed, done {item.display[-40:]}"
            )

    def extraction(self) -> dict[str, Any]:
        """meta.json `extraction`: every setting that shapes feat.npy (clustering refuses to mix
        samples whose extraction differs). S3D keeps its keys of before issue 11."""
        fc = self.cfg.features
        out = {
            **to_dict(self.cfg.video),
            "frames_per_clip": round(self.cfg.video.fps * self.cfg.video.clip_seconds),
            "spatial": fc.spatial,
            "thumbnail_size": fc.thumbnail_size,
        }
        if fc.extractor == "s3d":
            out.update(
                s3d_variant=self.s3d_info.get("variant"),
                s3d_layer="Mixed_5c",
                pooling="mean over T,H,W (feat); mean over T (fmap)",
            )
        else:
            out.update(
                encoder_width=self.encoder_record["feature_dim"],
                pooling="the encoder's pooled output (feat); its tokens (tokens.npy)",
            )
        return {**out, "batch_size": fc.batch_size, **self.extractor.describe()}

    def frames_record(self) -> dict[str, Any] | None:
        """meta.json `frames`: how frames.npy was made (None: not written)."""
        fc = self.cfg.features
        if not fc.frames:
            return None
        from pipeline.encoders.frames import RESIZE, SAMPLING

        decoded = round(self.cfg.video.fps * self.cfg.video.clip_seconds)
        return {
            "per_clip": fc.frames_per_clip or decoded,
            "size": fc.frames_size or self.cfg.video.size,
            "from": f"{decoded} frames of {self.cfg.video.size}^2 per clip, as the extractor saw",
            "sampling": SAMPLING,
            "resize": RESIZE,
        }

    # ----------------------------------------------------------------------------- driving
    def decode_settings(self) -> DecodeSettings:
        return DecodeSettings.from_config(self.cfg)

    def run_inline(self, todo: list[InputItem]) -> None:
        quiet_ffmpeg()
        for item in todo:
            self.states[item.key] = VideoState(item)
            for event in video_events(item, self.decode_settings(), self.tmp_dir):
                self.stop.check()
                self.handle(event)
            self.flush()
        self.wait_for_transcripts()

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
        try:
            while self.states:
                self.stop.check()
                t0 = time.perf_counter()
                try:
                    event = event_q.get(timeout=0.2)
                except queue.Empty:
                    self.summary.timings["wait"] += time.perf_counter() - t0
                    self.stop.check()  # a signal also stops the workers: not a decoder crash
                    if self.waiting_video():  # nothing arriving: don't let a finished video wait
                        self.flush()
                    self.finalize_ready()
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
                self.summary.timings["wait"] += time.perf_counter() - t0
                if event[0] == "start":
                    current[event[2]] = event[1]
                self.handle(event)
            self.flush()
            self.wait_for_transcripts()
            for key in list(self.states):  # inputs no worker finished (should not happen)
                self.fail(key, self.states[key].item.display, "decode", "decoder stopped early")
        finally:
            for w in workers:  # workers ignore SIGINT/SIGTERM: on a signal the run ends them
                if self.stop.signum is not None:
                    w.kill()
                w.join(timeout=5)
                if w.is_alive():
                    w.kill()

    def wait_for_transcripts(self) -> None:
        """Finish the videos whose S3D is done but whose ASR still runs in the thread."""
        while any(s.complete and s.transcript is not None for s in self.states.values()):
            self.stop.check()
            pending = [s.transcript for s in self.states.values() if s.complete and s.transcript]
            for future in pending:
                if not future.done():
                    try:
                        future.exception(timeout=0.2)
                    except TimeoutError:
                        pass
                    break
            self.finalize_ready()

    def drain(self, event_q) -> None:
        """Events still in the pipe after every worker exited."""
        while True:
            try:
                self.handle(event_q.get(timeout=1.0))
            except queue.Empty:
                return

    def run(self) -> PrepSummary:
        """The whole rank's run; raises InputError (bad --input/--output) before writing."""
        t_start = time.perf_counter()
        self.t_start = t_start
        check_output_dir(self.out)
        items = discover_inputs(self.input_spec, self.cfg.video.extensions)  # before any write
        self.out.mkdir(parents=True, exist_ok=True)
        check_resume_config(self.out, self.cfg, self.rank)
        self.content_hash = config_hash(self.cfg, PrepConfig.CONTENT_SECTIONS)
        if self.rank == 0:
            extra = {"input": self.input_spec, "content_config_hash": self.content_hash}
            save_config(self.cfg, self.out / "prep_config.yaml", extra)
        self.tmp_dir = self.out / STATE_DIR / f"tmp-rank{self.rank:03d}"
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        todo, dups = self.plan(items)
        for item, original in dups:
            self.duplicate(item, original)
        self.writer = ResumableShardWriter(
            self.out, self.rank, self.cfg.shards.max_samples, self.cfg.shards.max_bytes
        )
        with self.stop:
            try:
                if todo:
                    self.process(todo)
            except PrepInterrupted as e:
                self.summary.interrupted = str(e)
            finally:
                # Closing the writer finishes the open shard: its samples are complete ones.
                self.writer.close()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        shards, _ = merge_state(self.out)
        self.summary.total_samples = sum(r["samples"] for r in shards)
        self.summary.wall = time.perf_counter() - t_start
        return self.summary

    def process(self, todo: list[InputItem]) -> None:
        """Models, progress bar and ASR thread around the decode loop."""
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self.load_models()
        self.stop.check()
        self.asr_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlpipe-asr")
        self.pbar = tqdm(
            total=len(todo),
            unit="video",
            desc=f"prep rank {self.rank}",
            disable=not self.cfg.progress,
            dynamic_ncols=True,
        )
        try:
            # Log lines (failures, worker warnings) go above the bar instead of through it.
            with logging_redirect_tqdm(loggers=[logging.getLogger()]):
                if self.cfg.num_workers > 0:
                    self.run_workers(todo)
                else:
                    self.run_inline(todo)
        finally:
            self.pbar.close()
            # A transcription already running finishes; queued ones are dropped.
            self.asr_pool.shutdown(wait=True, cancel_futures=True)


def run_prep(
    cfg: PrepConfig, input_spec: str, out: Path, retry_failed: bool = False
) -> PrepSummary:
    """Run prep; on SIGINT/SIGTERM print one line and exit with 128 + the signal number."""
    summary = Prep(cfg, input_spec, out, retry_failed).run()
    if summary.interrupted is not None:
        print(INTERRUPTED_LINE, file=sys.stderr, flush=True)
        raise SystemExit(128 + signal.Signals[summary.interrupted].value)
    return summary
