"""What one `vlpipe prep` run did: the counters the run keeps, and the end-of-run table.

Stage times overlap: decoding runs in `num_workers` processes (its time is summed over them),
ASR in a thread of the main process, S3D and shard writing in the main process. So the table
gives each stage's share of the *busy* time (the sum over stages), says that they overlap, and
shows separately how long S3D sat idle waiting for decoded clips (the share of the wall time a
GPU would wait).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

STAGES = ("decode", "s3d", "asr", "write")


@dataclass
class PrepSummary:
    inputs: int = 0
    skipped_done: int = 0
    skipped_failed: int = 0
    duplicates: int = 0  # same content as another input: recorded, processed once, not a failure
    ok: int = 0
    truncated: int = 0  # samples from files whose data ends before their declared duration
    failed: Counter = field(default_factory=Counter)  # stage -> count
    clips: int = 0
    video_seconds: float = 0.0
    words: int = 0
    wall: float = 0.0
    timings: Counter = field(default_factory=Counter)  # STAGES + "wait" (S3D idle), seconds
    random_init: bool = False
    total_samples: int = 0  # in the merged manifest (all ranks, all runs)
    num_workers: int = 0
    s3d: dict = field(default_factory=dict)  # engine, precision, device, threads, batch_size
    interrupted: str | None = None  # "SIGINT" / "SIGTERM" when the run stopped early
    asr_dropped: Counter = field(default_factory=Counter)  # (filter, segments|words) -> count

    def stage_shares(self) -> dict[str, float]:
        """Each stage's share of the busy time (sum of the stage times), 0..1."""
        busy = sum(self.timings.get(s, 0.0) for s in STAGES)
        return {s: (self.timings.get(s, 0.0) / busy if busy else 0.0) for s in STAGES}


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
    if s.duplicates:
        t.add_row("duplicates (same content as another input; kept once)", str(s.duplicates))
    t.add_row("videos ok (this run)", str(s.ok))
    if s.truncated:
        t.add_row("  of which truncated (decodable part kept)", str(s.truncated))
    for stage, n in sorted(s.failed.items()):
        t.add_row(f"failed at {stage}", str(n))
    t.add_row("clips", str(s.clips))
    t.add_row("hours of video", f"{s.video_seconds / 3600:.3f}")
    t.add_row(
        "ASR words (segments) dropped by filter",
        ", ".join(
            f"{f} {s.asr_dropped[f, 'words']} ({s.asr_dropped[f, 'segments']})"
            for f in sorted({f for f, _ in s.asr_dropped})
        )
        or "-",
    )
    t.add_row("transcript words", str(s.words))
    t.add_row("wall time", f"{s.wall:.1f} s")
    if s.wall > 0:
        t.add_row(
            "throughput",
            f"{s.clips / s.wall:.1f} clips/s, {s.video_seconds / s.wall:.2f}x real time",
        )
    busy = sum(s.timings.get(name, 0.0) for name in STAGES)
    if busy > 0:
        shares = s.stage_shares()
        where = {
            "decode": f"{s.num_workers} worker process(es)" if s.num_workers else "main process",
            "s3d": "main process",
            "asr": "thread",
            "write": "main process",
        }
        t.add_row(
            "stage times (they overlap)",
            f"busy {busy:.1f} s over {s.wall:.1f} s of wall time; shares of busy time:",
        )
        for name in STAGES:
            t.add_row(
                f"  {name} ({where[name]})",
                f"{100 * shares[name]:.0f} %  ({s.timings.get(name, 0.0):.1f} s)",
            )
        if s.wall > 0:
            t.add_row(
                "S3D idle, waiting for decoded clips",
                f"{100 * s.timings.get('wait', 0.0) / s.wall:.0f} % of wall time",
            )
    if s.s3d:
        t.add_row("S3D", ", ".join(f"{k} {v}" for k, v in s.s3d.items()))
    t.add_row("samples in output (all runs)", str(s.total_samples))
    console.print(t)
    if sum(s.failed.values()):
        console.print(
            f"[yellow]{sum(s.failed.values())} input(s) failed: see {out / 'failures.jsonl'}"
        )
    if s.random_init:
        console.print(
            f"[bold red]WARNING: {s.s3d.get('extractor', 'S3D')} ran with RANDOM weights (no "
            "features.weights given). "
            "Features are only useful for testing; samples are marked weights=random-init."
        )
