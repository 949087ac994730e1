"""The README's "Your own videos" commands, run as a user pastes them: from a directory outside
the repository, with `~` in `key=value` paths left to vlpipe (the shell does not expand it
there), `configs/...` named relative to the checkout. Settings that only make the run small
enough for a test are appended to a command; nothing in the commands is changed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import media
import pytest

REPO = Path(__file__).resolve().parent.parent
# Appended so the commands run in seconds on tiny videos (the README's own settings are for
# real corpora): one small vocabulary, a few steps.
FAST = {
    "prep": ["video.size=64", "video.fps=8", "asr.source=none"],
    "cluster": ["depth=1", "k=2"],
    "pretrain": [
        "optim.max_steps=2",
        "optim.warmup_steps=1",
        "data.batch_size=2",
        "progress=false",
    ],
}


def readme_commands(section: str) -> list[str]:
    """The `vlpipe ...` commands of the first bash block under `## {section}`, continuation
    lines joined, comments dropped."""
    text = (REPO / "README.md").read_text()
    block = text.split(f"## {section}", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    joined = re.sub(r"\\\n\s*", " ", block)
    commands = [line.split("#", 1)[0].strip() for line in joined.splitlines()]
    return [c for c in commands if c.startswith("vlpipe ")]


@pytest.mark.slow
def test_your_own_videos_commands_work_as_pasted(tmp_path):
    home, work = tmp_path / "home", tmp_path / "elsewhere"
    (home / "videos").mkdir(parents=True)
    work.mkdir()
    for name in ("a", "b"):
        media.make_video(home / "videos" / f"{name}.mp4", seconds=4.0, size=(96, 72), audio="tone")
    # Held-out videos and their labels (the README's last command names them).
    (home / "held").mkdir()
    media.make_video(home / "held" / "c.mp4", seconds=4.0, size=(96, 72), audio="tone")
    labels = {
        "verbs": ["spin", "jump"],
        "nouns": ["square", "star"],
        "videos": {"c": {"file": "c.mp4", "split": "test", "segments": [
            {"start": 0.0, "end": 3.0, "verb": "spin", "noun": "star"}]}},
    }  # fmt: skip
    (work / "labels.json").write_text(json.dumps(labels))
    env = {
        **os.environ,
        "HOME": str(home),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
    }
    commands = readme_commands("Your own videos")
    assert [c.split()[1] for c in commands] == ["prep", "cluster", "pretrain", "evaluate"]
    extra_prep = f"vlpipe prep --input ~/held --output ~/shards/held_out {' '.join(FAST['prep'])}"
    for command in [*commands[:1], extra_prep, *commands[1:]]:
        stage = command.split()[1]
        full = " ".join([command, *FAST.get(stage, [])])
        r = subprocess.run(
            ["bash", "-c", full], cwd=work, env=env, capture_output=True, text=True, timeout=900
        )
        assert r.returncode == 0, f"{full}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    assert (home / "shards" / "howto" / "manifest.jsonl").exists()
    assert (home / "vocab" / "howto" / "centroids.npy").exists()
    assert (work / "runs" / "howto" / "model" / "config.json").exists()
    result = json.loads((work / "runs" / "howto" / "zeroshot.json").read_text())
    assert result["segments"] == 1
