"""The command line as a user meets it: bad settings fail fast naming the key and create
nothing, paths expand `~`, README-style `configs/...` paths work from any directory, a missing
path is a one-line error."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def vlpipe(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m vlpipe ARGS` run from `cwd` with this checkout importable (as installed)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "vlpipe", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("objective.mask_prb=0.3", "objective.mask_prb"),
        ("objective.mask_prob=7", "objective.mask_prob"),
        ("model.config.no_such=1", "model.config.no_such"),
    ],
)
def test_bad_pretrain_setting_fails_fast_and_creates_nothing(tmp_path, override, needle):
    run = tmp_path / "run"
    t0 = time.perf_counter()
    r = vlpipe(
        "pretrain",
        "--config",
        "configs/pretrain/cbt.yaml",
        f"data.shards={tmp_path}",
        f"output_dir={run}",
        override,
        cwd=tmp_path,  # outside the repository: configs/... is found in the checkout
    )
    elapsed = time.perf_counter() - t0
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert not run.exists()
    assert elapsed < 5, elapsed


def test_missing_paths_are_one_line_errors_naming_key_and_path(tmp_path):
    home = tmp_path / "home"
    (home / "shards").mkdir(parents=True)
    r = vlpipe(
        "pretrain",
        "--config",
        "configs/pretrain/videobert.yaml",
        "data.shards=~/shards",  # as pasted from the README: the shell leaves `~` alone here
        "data.vocab=~/vocab/howto",
        f"output_dir={tmp_path / 'run'}",
        cwd=tmp_path,
        env={"HOME": str(home)},
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    # `~` was expanded: the message names the real path (no shard yet in the empty directory).
    assert "data.shards" in lines[0] and str(home / "shards") in lines[0]
    (home / "shards" / "shard-000-000000.tar").write_bytes(b"")
    r = vlpipe(
        "pretrain",
        "--config",
        "configs/pretrain/videobert.yaml",
        "data.shards=~/shards",
        "data.vocab=~/vocab/howto",
        f"output_dir={tmp_path / 'run'}",
        cwd=tmp_path,
        env={"HOME": str(home)},
    )
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1, r.stderr
    assert "data.vocab" in r.stderr and str(home / "vocab" / "howto") in r.stderr
    assert not (tmp_path / "run").exists()


def test_evaluate_with_a_missing_model_is_one_line(tmp_path):
    r = vlpipe(
        "evaluate",
        "zeroshot",
        "--model",
        str(tmp_path / "nope"),
        "--shards",
        str(tmp_path),
        "--labels",
        str(tmp_path / "labels.json"),
        cwd=tmp_path,
    )
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "no saved model" in r.stderr, r.stderr
