"""Captioning head (finetune/caption.py) on real prep-schema shards and annotation files in their
distributed formats (YouCook2 segments, MSR-VTT videos with several references): shapes,
gradients, padding kept out of the loss, HF `generate` with the transformers 5.23 cache
workaround (equal without cache, greedy and beam), export / load round trip, a run through the
engine (loss falls, eval files, checkpoint resume) and `vlpipe evaluate caption`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from corpus import write_corpus, write_pretrained_runs

from finetune.caption import CaptionTask
from finetune.task import load_finetuned
from pipeline.config import ConfigError, load_config
from pipeline.engine import train
from pipeline.finetune_config import FinetuneConfig
from pipeline.io import read_jsonl
from pipeline.models import MODELS
from pipeline.shards import decode_sample, shard_urls

REPO = Path(__file__).resolve().parent.parent
PAST = {"spin": "spins", "jump": "jumps", "shake": "shakes", "slide": "slides"}


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_bert) -> dict[str, Path]:
    """Shards, a pretrained-looking run per registered model, YouCook2 and MSR-VTT captions."""
    root = tmp_path_factory.mktemp("caption")
    shards = write_corpus(root / "shards", shards=2, per_shard=8)
    out: dict[str, Path] = {"shards": shards, "root": root}
    out.update(write_pretrained_runs(root, tiny_bert))
    database, videos, sentences = {}, [], []
    for url in shard_urls(shards):
        for raw in wds.WebDataset(url, shardshuffle=False, empty_check=False):
            sample = decode_sample(raw)
            key, narration = sample["__key__"], sample["asr.json"]["sentences"]
            split = "training" if len(database) < 12 else "validation"
            anns = []
            for i, s in enumerate(narration):
                verb, noun = s["text"].split()[-3], s["text"].split()[-1]
                anns.append(
                    {
                        "segment": [s["start"], s["end"]],
                        "id": i,
                        "sentence": f"the {noun} {PAST[verb]}",
                    }
                )
            database[key] = {"subset": split, "annotations": anns}
            videos.append({"video_id": key, "split": "train" if split == "training" else "val"})
            verb, noun = narration[0]["text"].split()[-3], narration[0]["text"].split()[-1]
            for phrase in (f"the {noun} {PAST[verb]}", f"a {noun} {PAST[verb]}", f"{verb} {noun}"):
                sentences.append({"caption": phrase, "video_id": key, "sen_id": len(sentences)})
    (root / "youcook2.json").write_text(json.dumps({"database": database}))
    (root / "msrvtt.json").write_text(json.dumps({"videos": videos, "sentences": sentences}))
    return out


def config(data, model: str, run: Path, *extra: str, fmt: str = "youcook2") -> FinetuneConfig:
    file = data["root"] / ("youcook2.json" if fmt == "youcook2" else "msrvtt.json")
    return load_config(
        FinetuneConfig,
        REPO / "configs" / "finetune" / "caption.yaml",
        [
            "task=caption",
            f"model={data[model]}",
            f"output_dir={run}",
            f"data.shards={data['shards']}",
            f"data.format={fmt}",
            f"data.train=[{file}]",
            "data.batch_size=4",
            "head.max_length=6",
            "head.java_metrics=false",
            "optim.max_steps=6",
            "optim.warmup_steps=1",
            "optim.lr=1e-3",
            "eval_every=3",
            "checkpoint_every=0",
            "progress=false",
            *extra,
        ],
    )


def first_batch(task: CaptionTask) -> dict:
    batch = next(iter(task.train_batches(0, 1, 0)))
    batch.pop("epoch")
    return batch


@pytest.mark.parametrize("model", MODELS.names())
def test_shapes_gradients_and_save_load(data, tmp_path, model):
    torch.manual_seed(0)
    task = CaptionTask(config(data, model, tmp_path / "run"))
    net = task.build_model()
    batch = first_batch(task)
    logits = net(batch)["logits"]
    B, N = batch["caption_ids"].shape
    assert logits.shape == (B, N - 1, task.tokenizer.vocab_size)
    task.loss(net, batch)["loss"].backward()
    missing = [
        n for n, p in net.head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert not missing, missing
    (tmp_path / "run" / "model").mkdir(parents=True)
    task.export(net, tmp_path / "run" / "model")
    loaded_task, loaded = load_finetuned(tmp_path / "run")
    net.eval()
    before = task.predict(net, task.val_examples[:3])
    assert before == loaded_task.predict(loaded, loaded_task.val_examples[:3])
    # One caption per YouCook2 segment (the first validation video has 3 narrated actions).
    assert len({p["id"] for p in before}) == 3 and all(len(p["references"]) == 1 for p in before)


def test_decoder_starts_from_the_text_tower(data, tmp_path):
    task = CaptionTask(config(data, "cbt", tmp_path / "run", "head.decoder_layers=2"))
    net = task.build_model()
    tower, decoder = net.backbone.text.bert.state_dict(), net.head.decoder.state_dict()
    for key in ("embeddings.word_embeddings.weight", "encoder.layer.1.output.dense.weight"):
        assert torch.equal(decoder[f"bert.{key}"], tower[key])
    assert "bert.encoder.layer.2.output.dense.weight" not in decoder  # 2 of the 6 layers
    assert torch.equal(decoder["cls.predictions.bias"], net.backbone.text.mlm_head.bias)
    # The MLM decoder is tied to the word embeddings and saved once.
    head = net.head.decoder
    assert head.cls.predictions.decoder.weight is head.bert.embeddings.word_embeddings.weight
    assert "cls.predictions.decoder.weight" not in decoder
    videobert = CaptionTask(config(data, "videobert", tmp_path / "vb")).build_model()
    transform = videobert.head.decoder.cls.predictions.transform.dense.weight
    assert torch.equal(transform, videobert.backbone.text_head_transform.dense.weight)


def test_captions_longer_than_the_positions_fail_before_any_work(data, tmp_path):
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="head.max_length.*128"):
        CaptionTask(config(data, "cbt", tmp_path / "run", "head.max_length=200"))
    assert not (tmp_path / "run").exists()


def test_padding_is_never_in_the_loss(data, tmp_path):
    """Loss of a padded batch == the token-weighted mean of its rows alone; pad ids irrelevant.
    Fails if padded positions were scored (UniVL pads with 0 and ignores -1)."""
    torch.manual_seed(0)
    task = CaptionTask(config(data, "videobert", tmp_path / "run", fmt="msrvtt-captions"))
    net = task.build_model().eval()  # no dropout: rows alone and together compare exactly
    long = next(e for e in task.train_examples if len(e.item.caption.split()) == 3)
    short = next(e for e in task.train_examples if len(e.item.caption.split()) == 2)
    both = task.batch([long, short], train=True)
    assert (both["caption_labels"][1] == -100).sum() == 1  # one padded slot in the short row
    with torch.no_grad():
        together = task.loss(net, both)["loss"]
        alone = [task.loss(net, task.batch([e], train=True))["loss"] for e in (long, short)]
        tokens = [
            (task.batch([e], train=True)["caption_labels"] != -100).sum() for e in (long, short)
        ]
        expected = (alone[0] * tokens[0] + alone[1] * tokens[1]) / (tokens[0] + tokens[1])
        torch.testing.assert_close(together, expected, rtol=1e-5, atol=1e-6)
        both["caption_ids"][1, -1] = 1996  # "the" where the padding was
        torch.testing.assert_close(task.loss(net, both)["loss"], together)


def test_generate_with_the_cache_workaround(data, tmp_path):
    """What finetune.caption relies on in transformers 5.23: generate with the explicit
    EncoderDecoderCache equals generate without a cache (greedy, beam, no-repeat n-gram),
    greedy equals argmax over full forward passes, and beam search over a batch equals beam
    search per video (the video states are expanded by generate, not by us)."""
    torch.manual_seed(0)
    task = CaptionTask(config(data, "cbt", tmp_path / "run", "head.max_length=5"))
    net = task.build_model().eval()
    with torch.no_grad():  # make the video matter to an untrained decoder
        for layer in net.head.decoder.bert.encoder.layer:
            layer.crossattention.output.dense.weight.mul_(20)
    examples = task.val_examples[:3]
    batch = task.batch(examples, train=False)
    head, backbone = net.head, net.backbone
    settings = task.settings
    with torch.no_grad():
        for beams, ngram in ((1, 0), (3, 2)):
            gc = head.generation_config(
                dataclasses.replace(settings, num_beams=beams, no_repeat_ngram_size=ngram)
            )
            cached = head.generate(backbone, batch, gc)
            assert torch.equal(cached, head.generate(backbone, batch, gc, use_cache=False))
            if beams > 1:
                rows = [
                    head.generate(backbone, task.batch([e], train=False), gc)[0] for e in examples
                ]
                for row, out in zip(rows, cached, strict=True):
                    assert torch.equal(out[: len(row)], row)
            if beams == 1:
                greedy = cached
        assert len({tuple(r.tolist()) for r in greedy}) > 1  # the videos matter
        states, mask = head.memory(backbone, batch)
        ids = torch.full((len(examples), 1), head.bos_id)
        for _ in range(greedy.shape[1]):
            logits = head.decoder(
                input_ids=ids,
                encoder_hidden_states=states,
                encoder_attention_mask=mask,
                use_cache=False,
            ).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], 1)
        done = torch.zeros(len(examples), dtype=torch.bool)
        for t in range(greedy.shape[1]):  # after [SEP], generate pads
            expected = torch.where(done, head.pad_id, ids[:, t + 1])
            assert torch.equal(greedy[:, t], expected)
            done |= ids[:, t + 1] == head.eos_id


def test_transcript_is_a_second_input(data, tmp_path):
    task = CaptionTask(config(data, "videobert", tmp_path / "run", "head.use_transcript=true"))
    e = task.train_examples[0]
    text = task.tokenizer.decode(e.extra["text"])
    # The narration sentence of the segment, and only it ("... to slide the triangle").
    assert text.count("now let me") == 1 and text.split()[-1] == e.item.caption.split()[1]
    net = task.build_model()
    batch = first_batch(task)
    states, mask = net.head.memory(net.backbone, batch)
    T, L = batch["video_mask"].shape[1], batch["text_mask"].shape[1]
    assert states.shape[:2] == (4, T + L) and mask[:, T:].any()
    task.loss(net, batch)["loss"].backward()
    assert all(p.grad.abs().sum() > 0 for p in net.head.text_proj.parameters())


def test_prompt_is_the_text_beside_every_video(data, tmp_path):
    """VideoBERT's fill-in template (methods.md 1.7): the same text for every segment, its
    outputs in the decoder's memory, saved with the run and used again by evaluation."""
    prompt = "now let's [MASK] the [MASK] to the [MASK], and then [MASK] the [MASK]."
    task = CaptionTask(config(data, "videobert", tmp_path / "run", f"head.prompt={prompt!r}"))
    ids = task.tokens(prompt)
    assert ids.count(task.tokenizer.mask_token_id) == 5
    assert all(e.extra["text"] == ids for e in [*task.train_examples, *task.val_examples])
    net = task.build_model()
    batch = first_batch(task)
    assert (batch["text_ids"] == torch.tensor(ids)).all() and batch["text_mask"].all()
    states, mask = net.head.memory(net.backbone, batch)
    T = batch["video_mask"].shape[1]
    assert states.shape[:2] == (4, T + len(ids)) and mask[:, T:].all()
    task.loss(net, batch)["loss"].backward()
    assert all(p.grad.abs().sum() > 0 for p in net.head.text_proj.parameters())
    (tmp_path / "run" / "model").mkdir(parents=True)
    task.export(net, tmp_path / "run" / "model")
    loaded_task, _ = load_finetuned(tmp_path / "run")
    assert all(e.extra["text"] == ids for e in loaded_task.val_examples)
    with pytest.raises(ConfigError, match="use one"):
        config(data, "videobert", tmp_path / "r2", "head.prompt=x", "head.use_transcript=true")
    with pytest.raises(ConfigError, match="head.prompt: 17 WordPiece tokens, more than data.max"):
        CaptionTask(config(data, "videobert", tmp_path / "r3", f"head.prompt={prompt!r}",
                           "data.max_text_tokens=16"))  # fmt: skip


def test_blind_memory_carries_nothing_of_the_video(data, tmp_path):
    task = CaptionTask(config(data, "cbt", tmp_path / "run", "blind=true"))
    net = task.build_model().eval()
    with torch.no_grad():
        states, mask = net.head.memory(net.backbone, task.batch(task.val_examples[:3], False))
    assert (mask[:, 0] == 1).all() and not mask[:, 1:].any()  # one input-independent slot
    torch.testing.assert_close(states[:, 0], states[:1, 0].expand(3, -1))


def test_engine_run_evaluate_and_resume(data, tmp_path):
    from vlpipe.cli import main

    run = tmp_path / "run"
    torch.manual_seed(0)
    cfg = config(
        data,
        "videobert",
        run,
        "optim.max_steps=6",
        "checkpoint_every=3",
        "eval_every=0",  # at the end only
        "data.batch_size=6",
        fmt="msrvtt-captions",
    )
    result = train(CaptionTask(cfg), cfg)
    losses = [r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert np.mean(losses[-2:]) < np.mean(losses[:2])
    for step in (6,):
        out = run / "eval" / f"step-{step}"
        predictions = list(read_jsonl(out / "predictions.jsonl"))
        assert len(predictions) == 4  # one per validation video, with its 3 references
        assert all(len(p["references"]) == 3 and p["segment"] is None for p in predictions)
        metrics = json.loads((out / "metrics.json").read_text())
        assert {"BLEU-4", "ROUGE-L", "CIDEr"} <= set(metrics) and metrics["ptb_tokenized"] == 0
    assert result.best is not None and (run / "model" / "head.safetensors").exists()
    # Resuming from the step-3 checkpoint (tied decoder weights saved once) replays the curve.
    train(CaptionTask(cfg), cfg, resume=True)
    resumed = [r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    np.testing.assert_allclose(resumed, losses, rtol=1e-5)
    args = ["evaluate", "caption", "--model", str(run), "--shards", str(data["shards"])]
    args += ["--annotations", str(data["root"] / "msrvtt.json"), "--split", "val"]
    assert main(args) == 0
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert metrics["segments"] == 4 and "CIDEr" in metrics


@pytest.mark.parametrize("model", ["videobert", "vilbert"])
def test_masked_lm_decoder_rows_gradients_and_save_load(data, tmp_path, model):
    """head.decoder=masked_lm: one row per caption prefix, `w1 .. wk [MASK]` -> w(k+1) or [SEP],
    read at the [MASK] by the backbone's own MLM head; no head parameter, so the gradient is the
    backbone's; the exported run writes the same captions."""
    torch.manual_seed(0)
    run = tmp_path / "run"
    task = CaptionTask(config(data, model, run, "head.decoder=masked_lm", fmt="msrvtt-captions"))
    net = task.build_model()
    assert not list(net.head.parameters())
    examples = task.train_examples[:3]
    batch = task.batch(examples, train=True)
    tok = task.tokenizer
    words = [task.tokens(e.item.caption) for e in examples]
    assert task.batch_size(batch) == 3 and len(batch["caption_slot"]) == sum(
        len(w) + 1 for w in words
    )
    row = 0
    for w in words:
        for k, label in enumerate([*w, tok.sep_token_id]):
            text = batch["text_ids"][row][batch["text_mask"][row]].tolist()
            assert text == [*w[:k], tok.mask_token_id] and batch["caption_slot"][row] == k
            assert batch["caption_labels"][row] == label
            row += 1
    logits = net(batch)["logits"]
    assert logits.shape == (row, tok.vocab_size)
    task.loss(net, batch)["loss"].backward()
    trained = [p.grad is not None and p.grad.abs().sum() > 0 for p in net.backbone.parameters()]
    assert sum(trained) > len(trained) // 2
    (run / "model").mkdir(parents=True)
    task.export(net, run / "model")
    loaded_task, loaded = load_finetuned(run)
    assert isinstance(loaded.head, type(net.head))
    net.eval()
    before = task.predict(net, task.val_examples[:3])
    assert before == loaded_task.predict(loaded, loaded_task.val_examples[:3])


def test_masked_lm_generate_is_the_argmax_of_the_slot(data, tmp_path):
    """HF generate through SlotWriter: greedy == argmax of `masked_slot_logits` at the [MASK]
    after each prefix; beam search over a batch == beam search per video (generate expands the
    clips across beams); the video changes the captions."""
    torch.manual_seed(0)
    task = CaptionTask(config(data, "videobert", tmp_path / "run", "head.decoder=masked_lm",
                              "head.max_length=5"))  # fmt: skip
    net = task.build_model().eval()
    with torch.no_grad():  # make the clips matter to an untrained model
        net.backbone.visual_word_embeddings.weight.mul_(30)
        for layer in net.backbone.bert.encoder.layer:
            layer.attention.output.dense.weight.mul_(20)
    examples = task.val_examples[:3]
    batch = task.batch(examples, train=False)
    head, backbone, settings = net.head, net.backbone, task.settings
    with torch.no_grad():
        greedy = head.generate(backbone, batch, head.generation_config(settings))
        ids = torch.full((len(examples), 1), head.bos_id)
        for _ in range(greedy.shape[1]):
            text = torch.cat([ids[:, 1:], torch.full((len(examples), 1), head.mask_id)], 1)
            rows = {**batch, "text_ids": text, "text_mask": torch.ones_like(text, dtype=torch.bool)}
            slot = torch.full((len(examples),), text.shape[1] - 1)
            next_id = backbone.masked_slot_logits(rows, slot).argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_id], 1)
        done = torch.zeros(len(examples), dtype=torch.bool)
        for t in range(greedy.shape[1]):  # after [SEP], generate pads
            assert torch.equal(greedy[:, t], torch.where(done, head.pad_id, ids[:, t + 1]))
            done |= ids[:, t + 1] == head.eos_id
        gc = head.generation_config(dataclasses.replace(settings, num_beams=3))
        beams = head.generate(backbone, batch, gc)
        for e, out in zip(examples, beams, strict=True):
            alone = head.generate(backbone, task.batch([e], train=False), gc)[0]
            assert torch.equal(out[: len(alone)], alone)
        assert len({tuple(r.tolist()) for r in greedy}) > 1  # the videos matter


def test_masked_lm_decoder_needs_a_masked_lm_that_sees_the_video(data, tmp_path):
    with pytest.raises(ConfigError, match="never sees the video"):
        CaptionTask(config(data, "cbt", tmp_path / "run", "head.decoder=masked_lm"))
    with pytest.raises(ConfigError, match="decoder=cross_attention"):
        config(data, "videobert", tmp_path / "r2", "head.decoder=masked_lm", "head.prompt=x")
    assert not (tmp_path / "run").exists()
