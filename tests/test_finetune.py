"""Fine-tuning tasks on the engine, on real prep-schema shards and annotation files in their
distributed formats: heads' shapes, gradients and save/load for every registered backbone,
evaluation files, `vlpipe finetune` / `vlpipe evaluate`, bad annotations, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from corpus import WORDS, write_corpus, write_pretrained_runs

from finetune.task import load_finetuned
from pipeline.config import ConfigError, load_config
from pipeline.finetune_config import FinetuneConfig
from pipeline.io import read_jsonl
from pipeline.models import MODELS, model_class
from pipeline.models.base import VLPreTrainedModel
from pipeline.shards import decode_sample, shard_urls

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_bert) -> dict[str, Path]:
    """Shards, a pretrained-looking run per registered model, and annotation files."""
    root = tmp_path_factory.mktemp("finetune")
    shards = write_corpus(root / "shards", shards=2, per_shard=8)
    out: dict[str, Path] = {"shards": shards, "root": root}
    out.update(write_pretrained_runs(root, tiny_bert))
    # Annotations from the shards' own narration: what happens first / the first noun.
    videos = []
    for url in shard_urls(shards):
        for raw in wds.WebDataset(url, shardshuffle=False, empty_check=False):
            sample = decode_sample(raw)
            first = sample["asr.json"]["sentences"][0]
            verb, noun = first["text"].split()[-3], first["text"].split()[-1]
            videos.append((sample["__key__"], verb, noun, first))
    qa = [
        {"question": "what happens first?", "answer": verb, "video_id": key, "id": i}
        for i, (key, verb, _, _) in enumerate(videos)
    ]
    (root / "qa_train.json").write_text(json.dumps(qa[:12]))
    (root / "qa_val.json").write_text(json.dumps(qa[12:]))
    verbs = sorted({v for v, _ in WORDS})
    header = "gif_name\tquestion\ta1\ta2\ta3\ta4\ta5\tanswer\tvid_id\tkey"
    rows = [header] + [
        f"{key}\twhat does it do first?\t"
        + "\t".join(verbs + ["wait"])
        + f"\t{verbs.index(v)}\t{i}\t{i}"
        for i, (key, v, _, _) in enumerate(videos)
    ]
    (root / "mc_train.csv").write_text("\n".join(rows[:13]) + "\n")
    (root / "mc_val.csv").write_text("\n".join([header, *rows[13:]]) + "\n")
    kin = ["label,youtube_id,time_start,time_end,split"] + [
        f"{noun},{key},{first['start']},{first['end']},{'train' if i < 12 else 'val'}"
        for i, (key, _, noun, first) in enumerate(videos)
    ]
    (root / "labels.csv").write_text("\n".join(kin) + "\n")
    return out


def config(data, model: str, task: str, run: Path, *extra: str) -> FinetuneConfig:
    files = {
        "qa": ("msrvtt-qa", ["qa_train.json"], ["qa_val.json"]),
        "mc": ("tgif-qa", ["mc_train.csv"], ["mc_val.csv"]),
        "classify": ("kinetics", ["labels.csv"], []),
    }[task]
    fmt, train, val = files
    root = data["root"]
    return load_config(
        FinetuneConfig,
        None,
        [
            f"task={task}",
            f"model={data[model]}",
            f"output_dir={run}",
            f"data.shards={data['shards']}",
            f"data.format={fmt}",
            f"data.train=[{','.join(str(root / f) for f in train)}]",
            f"data.val=[{','.join(str(root / f) for f in val)}]",
            "data.batch_size=4",
            "optim.max_steps=6",
            "optim.warmup_steps=1",
            "optim.lr=1e-3",
            "eval_every=3",
            "checkpoint_every=0",
            "progress=false",
            *extra,
        ],
    )


def task_of(cfg: FinetuneConfig):
    import importlib

    from pipeline.finetune_config import TASKS

    entry = TASKS.get(cfg.task)
    return getattr(importlib.import_module(entry.module), entry.task_class)(cfg)


@pytest.mark.parametrize("model", MODELS.names())
@pytest.mark.parametrize(
    "task", ["qa", "qa-masked_lm", "qa-windows", "mc", "classify", "classify-probe"]
)
def test_heads_shapes_gradients_and_save_load(data, tmp_path, model, task):
    torch.manual_seed(0)
    extra = {
        "classify": ["head.mode=full"],
        "classify-probe": ["head.mode=probe"],  # BatchNorm: its running statistics round-trip
        "qa-masked_lm": ["head.reader=masked_lm"],
        # the windowed reader: masked-LM where the model's MLM sees the video, else classifier
        "qa-windows": [
            f"head.reader={'masked_lm' if model_class(model).masked_lm_sees_video else 'classifier'}",
            "head.window_clips=2",
        ],
    }
    extra, task = extra.get(task, []), task.split("-")[0]
    cfg = config(data, model, task, tmp_path / "run", *extra)
    if extra and "masked_lm" in extra[0] and not model_class(model).masked_lm_sees_video:
        with pytest.raises(ConfigError, match="never sees the video"):
            task_of(cfg)  # CBT: refused before any work
        return
    t = task_of(cfg)
    assert len(t.train_examples) >= 8 and t.val_examples
    net = t.build_model()
    batch = next(iter(t.train_batches(0, 1, 0)))
    batch.pop("epoch")
    if "answer_slot" in batch:  # the slot-only MLM head equals the full one at the slot
        net.eval()
        with torch.no_grad():
            full = net.backbone.masked_text_logits(batch)
            slot = net.backbone.masked_slot_logits(batch, batch["answer_slot"])
        torch.testing.assert_close(slot, full[torch.arange(len(full)), batch["answer_slot"]])
        if "window_index" in batch:  # one pass gives what the two calls give
            with torch.no_grad():
                both = net.backbone.masked_slot_and_alignment(batch, batch["answer_slot"])
            torch.testing.assert_close(both[0], slot)
            torch.testing.assert_close(both[1], net.backbone.alignment_logits(batch))
        net.train()
    if "window_index" in batch:  # rows are windows of the 4 questions' clips
        assert batch["window_index"].shape[0] == 4 and batch["text_ids"].shape[0] > 4
        assert t.batch_size(batch) == 4
    outputs = net(batch)
    width = {
        "qa": len(t.state.get("answers", [])),
        "mc": 5,
        "classify": len(t.state.get("labels", [])),
    }
    assert outputs["logits"].shape == (4, width[task])
    t.loss(net, batch)["loss"].backward()
    missing = [
        n
        for n, p in net.named_parameters()
        if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    # Parameters that the head's path never reaches (e.g. VideoBERT's MLM decoders, the
    # two-stream clip head) legitimately stay without gradient: only the head must all learn.
    assert not [n for n in missing if n.startswith("head.")], missing
    if "head.mode=probe" in extra:  # frozen: nothing of the backbone learns
        assert all(p.grad is None for p in net.backbone.parameters())
        assert net.head.norm.num_batches_tracked.item() > 0  # its statistics moved: saved below
    else:
        assert not all(p.grad is None for p in net.backbone.parameters())
    (tmp_path / "run" / "model").mkdir(parents=True)
    t.export(net, tmp_path / "run" / "model")
    loaded_task, loaded = load_finetuned(tmp_path / "run")
    net.eval()
    assert t.predict(net, t.val_examples) == loaded_task.predict(loaded, loaded_task.val_examples)


def test_windowed_qa_covers_every_clip_and_weighs_windows_by_alignment(data, tmp_path):
    window = ["head.reader=masked_lm", "head.window_clips=3", "head.window_stride=2"]
    t = task_of(config(data, "videobert", "qa", tmp_path / "run", *window))
    assert max(len(e.feats) for e in t.val_examples) > 3  # the case being tested
    for e in t.val_examples:
        spans = [w.extra.get("window", (0, len(e.feats))) for w in t.windows(e)]
        assert set().union(*(range(a, b) for a, b in spans)) == set(range(len(e.feats)))
        assert {b - a for a, b in spans} == {min(3, len(e.feats))} and spans[-1][1] == len(e.feats)
        for w, (a, b) in zip(t.windows(e), spans, strict=True):
            np.testing.assert_array_equal(w.feats, e.feats[a:b])
    torch.manual_seed(0)
    net = t.build_model().eval()
    batch = t.batch(t.val_examples[:3], train=False)
    with torch.no_grad():
        out, read = net(batch), net.head.reader(net.backbone, batch)
    for b, rows in enumerate(batch["window_index"].tolist()):
        rows = [r for r in rows if r >= 0]
        weights = read["alignment"][rows].softmax(0)  # [M]
        torch.testing.assert_close(out["window_weights"][b, : len(rows)], weights)
        mixture = (weights[:, None] * read["logits"][rows].softmax(-1)).sum(0)  # [K]
        torch.testing.assert_close(out["logits"][b], mixture.log())
    # Video hidden, every window is the same row, so blind reads one row per question: the
    # same scores as each of its windows
    t = task_of(config(data, "videobert", "qa", tmp_path / "blind", *window, "blind=true"))
    net = t.build_model().eval()
    questions = t.val_examples[:3]
    batch = t.batch(questions, train=False)
    assert batch["window_index"].tolist() == [[0], [1], [2]]
    with torch.no_grad():
        out = net(batch)
        for b, e in enumerate(questions):
            windows = t.windows(e)
            rows = t.collate(windows, [t.prompt(e.item.question)[0]] * len(windows))
            rows["answer_slot"] = batch["answer_slot"][b].repeat(len(windows))
            rows["window_index"] = torch.arange(len(windows))[None]
            read = net.head.reader(net.backbone, rows)["logits"].log_softmax(-1)  # [M, K]
            torch.testing.assert_close(read, out["logits"][b].expand_as(read))
    # ... and its prediction names that row, the whole (hidden) video
    predicted = [p["window"] for p in t.predict(net, questions)]
    assert predicted == [[0, len(e.feats)] for e in questions]


def test_probe_freezes_the_backbone(data, tmp_path):
    t = task_of(config(data, "cbt", "classify", tmp_path / "run", "head.mode=probe"))
    net = t.build_model()
    assert all(not p.requires_grad for p in net.backbone.parameters())
    assert all(p.requires_grad for p in net.head.parameters())
    # MAE's linear-probe head: each pooled feature standardised over the batch, no affine
    net.train()
    net.backbone.eval()  # no dropout: the two passes below see the same features
    batch = next(iter(t.train_batches(0, 1, 0)))
    pooled = net.backbone.encode(batch)["pooled"].detach()  # [B, D]
    seen = {}
    net.head.linear.register_forward_hook(lambda m, args, out: seen.setdefault("x", args[0]))
    net(batch)
    expected = (pooled - pooled.mean(0)) / (pooled.var(0, unbiased=False) + 1e-6).sqrt()
    torch.testing.assert_close(seen["x"], expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ConfigError, match="needs >= 2"):
        config(data, "cbt", "classify", tmp_path / "one", "head.mode=probe", "data.batch_size=1")


def test_blind_hides_every_clip(data, tmp_path):
    t = task_of(config(data, "videobert", "qa", tmp_path / "run", "blind=true"))
    batch = next(iter(t.train_batches(0, 1, 0)))
    assert not batch["video_mask"].any() and not batch["video_feats"].any()
    assert (batch["video_tokens"] == -1).all()


def test_init_modes_differ_only_where_they_should(data, tmp_path):
    runs = {
        m: task_of(config(data, "cbt", "qa", tmp_path / m, f"init={m}"))
        for m in ("pretrained", "text", "random")
    }
    nets = {m: t.backbone() for m, t in runs.items()}
    pre, text, rand = (nets[m].state_dict() for m in ("pretrained", "text", "random"))
    key = "text.bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(pre[key], text[key]) and not torch.equal(pre[key], rand[key])
    assert not torch.equal(pre["clip_projection.weight"], text["clip_projection.weight"])


def test_vlpipe_finetune_and_evaluate_write_their_files(data, tmp_path):
    from vlpipe.cli import main

    run = tmp_path / "qa"
    root = data["root"]
    args = [
        "finetune",
        "--config",
        str(REPO / "configs/finetune/qa.yaml"),
        f"model={data['cbt']}",
        f"output_dir={run}",
        f"data.shards={data['shards']}",
        f"data.train=[{root / 'qa_train.json'}]",
        f"data.val=[{root / 'qa_val.json'}]",
        "data.batch_size=4",
        "optim.max_steps=6",
        "optim.warmup_steps=1",
        "eval_every=3",
        "progress=false",
    ]
    assert main(args) == 0
    for step in (3, 6):
        metrics = json.loads((run / "eval" / f"step-{step}" / "metrics.json").read_text())
        assert {"accuracy", "majority_accuracy"} <= set(metrics)
        assert len(list(read_jsonl(run / "eval" / f"step-{step}" / "predictions.jsonl"))) == 4
    best = json.loads((run / "model" / "vlpipe_step.json").read_text())
    evals = [r for r in read_jsonl(run / "metrics.jsonl") if "eval/accuracy" in r]
    assert best["eval/accuracy"] == max(r["eval/accuracy"] for r in evals)
    assert (
        main(
            [
                "evaluate",
                "qa",
                "--model",
                str(run),
                "--shards",
                str(data["shards"]),
                "--annotations",
                str(root / "qa_val.json"),
            ]
        )
        == 0
    )
    assert json.loads((run / "eval" / "test" / "metrics.json").read_text())["questions"] == 4


def test_bad_annotations_are_listed_and_the_run_goes_on(data, tmp_path):
    root = data["root"]
    rows = json.loads((root / "qa_train.json").read_text())
    rows += [
        {"question": "what?", "answer": "spin", "video_id": "no-such-video", "id": 100},
        {"question": "", "answer": "spin", "video_id": rows[0]["video_id"], "id": 101},
        {"question": "again?", "answer": "spin", "video_id": rows[0]["video_id"], "id": 0},
    ]
    bad = tmp_path / "bad_qa.json"
    bad.write_text(json.dumps(rows))
    cfg = config(data, "cbt", "qa", tmp_path / "run", f"data.train=[{bad}]")
    t = task_of(cfg)
    failures = list(read_jsonl(tmp_path / "run" / "failures.jsonl"))
    reasons = " ".join(f["reason"] for f in failures)
    assert len(failures) == 3, failures
    assert "no-such-video" in reasons and "empty" in reasons and "duplicate" in reasons
    assert len(t.train_examples) == 12
    wrong = tmp_path / "wrong.json"
    wrong.write_text("label,youtube_id\nx,y\n")
    with pytest.raises(ValueError, match="MSRVTT-QA"):
        task_of(config(data, "cbt", "qa", tmp_path / "run2", f"data.train=[{wrong}]"))
    with pytest.raises(ConfigError, match="data.format"):
        task_of(config(data, "cbt", "qa", tmp_path / "run3", "data.format=nope"))


@pytest.mark.slow
def test_kill_and_resume_follows_the_same_curve(data, tmp_path):
    root = data["root"]
    common = [
        "finetune",
        "--config",
        str(REPO / "configs/finetune/qa.yaml"),
        f"model={data['videobert']}",
        f"data.shards={data['shards']}",
        f"data.train=[{root / 'qa_train.json'}]",
        f"data.val=[{root / 'qa_val.json'}]",
        "data.batch_size=4",
        "optim.max_steps=24",
        "optim.warmup_steps=2",
        "checkpoint_every=8",
        "eval_every=8",
        "progress=false",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}

    def losses(run: Path) -> list[float]:
        return [r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]

    ref = tmp_path / "ref"
    r = subprocess.run(
        [sys.executable, "-m", "vlpipe", *common, f"output_dir={ref}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "run"
    p = subprocess.Popen(
        [sys.executable, "-m", "vlpipe", *common, f"output_dir={run}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while (
        time.time() < deadline and len(losses(run) if (run / "metrics.jsonl").exists() else []) < 12
    ):
        time.sleep(0.01)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert (run / "checkpoints" / "step-8").exists()
    r = subprocess.run(
        [sys.executable, "-m", "vlpipe", *common, f"output_dir={run}", "--resume"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    np.testing.assert_allclose(losses(run), losses(ref), rtol=1e-5)

    def evals(d: Path) -> list[float]:
        return [r["eval/accuracy"] for r in read_jsonl(d / "metrics.jsonl") if "eval/accuracy" in r]

    assert evals(run) == evals(ref)


@pytest.mark.parametrize("model", MODELS.names())
def test_zero_shot_classification_on_a_label_file(data, tmp_path, model):
    from vlpipe.cli import main

    templates = tmp_path / "templates.txt"
    templates.write_text("# one per line\na video of a {label}\nhere is the {label}\n")
    out = tmp_path / "zs.json"
    args = ["evaluate", "zeroshot", "--model", str(data[model]), "--shards", str(data["shards"])]
    args += ["--labels", str(data["root"] / "labels.csv"), "--templates", str(templates)]
    assert main([*args, "--split", "val", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["clips"] == 4 and result["classes"] >= 2
    methods = (
        {"alignment", "masked-lm"}
        if MODELS.get(model).module != "pipeline.models.cbt"
        else {"alignment"}
    )
    assert set(result["by_method"]) == methods
    for rows in result["by_method"].values():
        assert {"top1", "top5", "mean_class_accuracy", "top1_ci"} <= set(rows["cross_modal"])
        assert rows["chance"]["top1"] == 100 / result["classes"]
    bad = tmp_path / "bad.txt"
    bad.write_text("no placeholder here\n")
    assert main([*args, "--templates", str(bad)]) == 2


def test_masked_lm_reader_prompt_and_scores(data, tmp_path):
    """The [MASK] slot of the template, the question cut to fit, and an answer's score = the mean
    of the masked-LM logits of its WordPiece tokens at that slot (designed logits)."""
    cfg = config(
        data, "videobert", "qa", tmp_path / "run", "head.reader=masked_lm", "data.max_text_tokens=8"
    )
    t = task_of(cfg)
    tok = t.tokenizer
    ids, slot = t.prompt("what does the red square do?")
    # "question : <question cut> answer : [MASK] ." is 8 tokens: 2 + 2 + 2 + 1 + 1.
    assert len(ids) == 8 and ids[slot] == tok.mask_token_id and slot == 6
    assert tok.convert_ids_to_tokens(ids) == [
        "question", ":", "what", "does", "answer", ":", "[MASK]", ".",
    ]  # fmt: skip
    from finetune.qa import MaskedAnswerHead

    before = t.prompt("spin?")  # short: nothing cut
    assert tok.decode(before[0]) == "question : spin? answer : [MASK]."
    head = MaskedAnswerHead([[5], [7, 9], [11, 12, 13]])

    class Designed(torch.nn.Module):
        masked_slot_logits = VLPreTrainedModel.masked_slot_logits  # the contract's default

        def masked_text_logits(self, batch):
            out = torch.zeros(2, 4, 20)
            out[0, 1] = torch.arange(20.0)  # row 0 reads slot 1: logit of token k is k
            out[1, 3] = -torch.arange(20.0)  # row 1 reads slot 3: logit of token k is -k
            out[1, 1] = 100.0  # not row 1's slot: must not be read
            return out

    scores = head(Designed(), {"answer_slot": torch.tensor([1, 3])})["logits"]
    expected = torch.tensor([[5.0, 8.0, 12.0], [-5.0, -8.0, -12.0]])
    assert torch.equal(scores, expected)
    # The [MASK] may also come first, and a template without it is refused before any work.
    t.settings.template = "[MASK] is the answer to {question}"
    ids, slot = t.prompt("what spins?")
    assert slot == 0 and ids[0] == tok.mask_token_id
    with pytest.raises(ConfigError, match="one \\[MASK\\]"):
        config(data, "videobert", "qa", tmp_path / "r2", "head.template='{question} answer'")
