"""`vlpipe evaluate qa|mc|caption|classify`: a fine-tuned run on held-out annotations.

    vlpipe evaluate qa --model runs/qa-msrvtt --shards ~/shards/msrvtt \\
        --annotations ~/msrvtt/test_qa.json [--format msrvtt-qa] [--split test] [--output DIR]

The run's saved task (answer list, labels, settings) scores the annotations of `--split` (records
without a split are all used); `DIR` (default RUN/eval/test) receives predictions.jsonl,
metrics.json and failures.jsonl (annotations that could not be joined to the shards).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finetune.annotations import write_failures
from finetune.task import load_finetuned, write_predictions


def evaluate_run(
    run: str | Path,
    shards: str | list[str],
    annotations: list[str],
    fmt: str | None = None,
    split: str | None = "test",
    output: str | Path | None = None,
) -> dict[str, Any]:
    """Metrics of the fine-tuned `run` on `annotations` (written with the predictions)."""
    shards = [shards] if isinstance(shards, str | Path) else shards
    overrides: dict[str, Any] = {"shards": [str(Path(p).expanduser()) for p in shards]}
    overrides["val"] = annotations
    overrides["val_split"] = split
    if fmt:
        overrides["format"] = fmt
    task, model = load_finetuned(run, **overrides)
    predictions = task.predict(model, task.val_examples)
    metrics = task.score(task.val_examples, predictions)
    out = Path(output) if output else Path(run).expanduser() / "eval" / "test"
    write_predictions(out, predictions, metrics)
    write_failures(out / "failures.jsonl", task.failures)
    return {
        "task": task.cfg.task,
        "metrics": metrics,
        "output": str(out),
        "failures": len(task.failures),
    }
