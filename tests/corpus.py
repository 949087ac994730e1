"""Synthetic prep-schema shards for the loader, pretraining and fine-tuning tests: real
webdataset tars whose clip features cluster by action, with subtitle-style transcripts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import webdataset as wds

from pipeline.shards import npy_bytes

WORDS = [("spin", "square"), ("jump", "circle"), ("shake", "star"), ("slide", "triangle")]
F = 1024


def write_corpus(root: Path, shards: int = 2, per_shard: int = 6, seed: int = 0) -> Path:
    """Prep-style shards: each video has 3 narrated actions; clip features cluster by action.

    Keys are video000-0000abcd, video001-... (meta.json `source` video000.mp4 ...)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(WORDS), F)).astype(np.float32)
    root.mkdir(parents=True)
    manifest = []
    n = 0
    for s in range(shards):
        name = f"shard-000-{s:06d}.tar"
        keys = []
        with wds.TarWriter(str(root / name)) as tw:
            for _ in range(per_shard):
                key = f"video{n:03d}-0000abcd"
                n += 1
                acts = rng.integers(0, len(WORDS), 3)
                feats, sentences, t = [], [], 0
                for a in acts:
                    clips = int(rng.integers(2, 5))
                    feats.append(centres[a] + 0.1 * rng.normal(size=(clips, F)))
                    verb, noun = WORDS[a]
                    sentences.append(
                        {
                            "text": f"now let me show you how to {verb} the {noun}",
                            "start": t * 1.5,
                            "end": (t + clips) * 1.5,
                            "clips": [t, t + clips],
                            "words": [],
                        }
                    )
                    t += clips
                feat = np.concatenate(feats).astype(np.float16)
                clips_json = {
                    "fps": 20,
                    "clip_seconds": 1.5,
                    "clips": [
                        {"start": i * 1.5, "end": i * 1.5 + 1.5, "words": []} for i in range(t)
                    ],
                }
                tw.write(
                    {
                        "__key__": key,
                        "feat.npy": npy_bytes(feat),
                        "thumbs.npy": npy_bytes(np.zeros((t, 8, 8, 3), np.uint8)),
                        "clips.json": json.dumps(clips_json).encode(),
                        "asr.json": json.dumps(
                            {
                                "source": "subtitles",
                                "model": "",
                                "language": "en",
                                "sentences": sentences,
                            }
                        ).encode(),
                        "meta.json": json.dumps(
                            {
                                "source": f"{key}.mp4",
                                "weights": "random-init",
                                "extraction": {"fps": 20.0},
                            }
                        ).encode(),
                    }
                )
                keys.append(key)
        manifest.append(
            {
                "name": name,
                "samples": len(keys),
                "keys": keys,
                "bytes": (root / name).stat().st_size,
                "sha256": "",
            }
        )
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in manifest))
    return root


def write_pretrained_runs(root: Path, tiny_bert: Path) -> dict[str, Path]:
    """A pretrained-looking run directory per registered model (random weights over the tiny
    BERT, its tokenizer, the visual vocabulary where the model has one, vlpipe_pretrain.json
    naming the text model): what fine-tuning's `model=` points at. Returns {name: run dir}."""
    import torch
    from transformers import AutoTokenizer

    from pipeline.models import MODELS, build_model

    centroids = np.random.default_rng(0).normal(size=(6, F)).astype(np.float32)
    runs: dict[str, Path] = {}
    for name, entry in MODELS.items():
        run = root / f"run-{name}"
        settings = entry.settings()
        if name == "vilbert":
            settings.t_biattention_id = [3, 4, 5]
        vocab = centroids if entry.vocabulary != "unused" else None
        torch.manual_seed(0)
        build_model(name, tiny_bert, vocab, settings, feat_dim=F).save_pretrained(run / "model")
        AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(str(run / "model"))
        if vocab is not None:
            (run / "model" / "vocab").mkdir()
            np.save(run / "model" / "vocab" / "centroids.npy", vocab)
        (run / "model" / "vlpipe_pretrain.json").write_text(
            json.dumps({"config": {"model": {"text_model": str(tiny_bert)}}})
        )
        runs[name] = run
    return runs
