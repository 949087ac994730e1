"""Stopping a prep run cleanly on SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption).

A signal only sets a flag; the run checks it at safe points (between decoder events and between
S3D batches, never inside a shard write), then closes the open shard with its finished samples,
stops its decode workers and exits with 128 + the signal number after one line on stderr. A
second Ctrl-C interrupts at once. kill -9 needs none of this: the shard writer's rename-on-close
and the state records already make any kill resumable.
"""

from __future__ import annotations

import signal
from typing import Any

INTERRUPTED_LINE = "interrupted: rerun the same command to resume"


class PrepInterrupted(Exception):
    """SIGINT or SIGTERM arrived; raised at the next safe point of the run."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopOnSignal:
    """While active, SIGINT/SIGTERM only set `signum`; `check()` raises PrepInterrupted.

    The run calls `check()` between events and between S3D batches, so a signal never lands in
    the middle of a shard write. A second Ctrl-C interrupts at once (Python's default handler).
    Handlers can only be installed from the main thread; elsewhere this does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        try:
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread
            pass
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _handle(self, signum: int, _frame: object) -> None:
        self.signum = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def check(self) -> None:
        if self.signum is not None:
            raise PrepInterrupted(self.signum)
