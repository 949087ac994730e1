"""`vlpipe demo` end to end on a slice of the bundled sample corpus (the full run is `make demo`)."""

import json
import shutil
from pathlib import Path

import pytest

from pipeline.config import ConfigError
from vlpipe.cli import main as cli_main
from vlpipe.demo import CORPUS, split_overrides, task_overrides


def test_demo_overrides_are_routed_and_checked():
    model, limit, tasks, per = split_overrides(
        ["model=cbt", "limit=4", "prep.video.size=64", "tasks=qa", "finetune.optim.max_steps=3"]
    )
    assert (model, limit, tasks, per["prep"]) == ("cbt", 4, ["qa"], ["video.size=64"])
    assert per["finetune"] == ["optim.max_steps=3"]
    items = ["optim.max_steps=3", "caption.head.num_beams=5", "qa.head.answers=4"]
    assert task_overrides(items, "caption") == ["optim.max_steps=3", "head.num_beams=5"]
    assert task_overrides(items, "classify") == ["optim.max_steps=3"]
    with pytest.raises(ConfigError, match="model"):
        split_overrides(["model=gpt"])
    with pytest.raises(ConfigError, match="prefix"):
        split_overrides(["video.size=64"])
    with pytest.raises(ConfigError, match="task"):
        split_overrides(["tasks=qa,dance"])


def test_bundled_corpus_is_small_and_labelled():
    labels = json.loads((CORPUS / "labels.json").read_text())
    files = [CORPUS / v["file"] for v in labels["videos"].values()]
    assert all(f.exists() for f in files)
    assert sum(f.stat().st_size for f in CORPUS.iterdir()) < 6_000_000
    splits = {v["split"] for v in labels["videos"].values()}
    assert splits == {"train", "val", "test"}
    for task in labels["annotations"].values():
        files = task["files"].values()
        assert all((CORPUS / f).exists() for f in files)


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory) -> Path:
    """One output directory for the three models, as a user adding `model=cbt` to a finished
    demo would have: the first test preps the videos, the others resume that prep (nothing left
    to do) and cluster again; each pretrains and fine-tunes its own model."""
    return tmp_path_factory.mktemp("demo") / "demo"


@pytest.mark.slow
@pytest.mark.parametrize("model", ["videobert", "cbt", "vilbert"])
def test_demo_runs_every_stage(demo_out: Path, model: str):
    out = demo_out
    args = [
        "demo",
        "--output",
        str(out),
        f"model={model}",
        "limit=6",
        "pretrain.optim.max_steps=4",
        "pretrain.data.batch_size=8",
        "prep.video.size=64",
        "prep.video.fps=8",
        "pretrain.optim.warmup_steps=1",
        "pretrain.eval_every=2",
        "finetune.optim.max_steps=2",
        "finetune.optim.warmup_steps=1",
        # one validation pass per run (at the last step): with Java, every caption evaluation
        # starts METEOR's JVM (~15 s), three caption runs here
        "finetune.eval_every=2",
        *(["tasks=qa,caption,classify"] if model == "videobert" else ["tasks=qa"]),
        # METEOR's JVM start (~10 s per evaluation) is covered by tests/test_metrics.py
        "finetune.caption.head.java_metrics=false",
    ]
    assert cli_main(args) == 0
    report = (out / "report.md").read_text()
    for needle in ("Stage timings", "Visual vocabulary", "Zero-shot", "language prior", "chance"):
        assert needle in report
    assert "Fine-tuning" in report and "text only" in report and "blind" in report
    assert (out / f"training-{model}.png").stat().st_size > 1000
    assert (out / f"finetune-{model}.png").stat().st_size > 1000
    finetune = json.loads((out / f"finetune-{model}.json").read_text())
    assert set(finetune["qa"]) == {"pretrained", "text only", "blind"}
    assert "accuracy" in finetune["qa"]["pretrained"]["test"]
    result = json.loads((out / f"zeroshot-{model}.json").read_text())
    assert result["segments"] > 0 and result["model"] == model
    for regime in ("cross_modal", "language_prior", "chance"):
        assert 0 <= result["metrics"][regime]["verb"]["top1"] <= 100
    # 5 verbs and 5 nouns in the sample corpus: chance is 1 in 5, top-5 always hits.
    labels = json.loads((CORPUS / "labels.json").read_text())
    assert len(labels["verbs"]) == len(labels["nouns"]) == 5
    for slot in ("verb", "noun"):
        assert result["metrics"]["chance"][slot]["top1"] == pytest.approx(20.0)
        assert result["metrics"]["cross_modal"][slot]["top5"] == pytest.approx(100.0)
    # the verdict line is judged by the interval, and says which way it went
    assert f"Does {model} use the video?" in report
    assert (out / f"run-{model}" / "model" / "model.safetensors").exists()
    # The fine-tuned models (~1 GB for VideoBERT's nine) go now, not at the end of the module:
    # CI's /tmp once ran out of space.
    shutil.rmtree(out / "finetune" / model)
