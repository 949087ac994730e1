"""Loader samples/s from shards vs the samples/s the training loop consumes.

Builds prep-style shards (real webdataset tars, 1024-d features, ASR sentences) and a visual
vocabulary, then measures (1) the SegmentStream + DataLoader alone and (2) VideoBERT training
steps on the same batches, in the same run. Target: loader >= 5x the training rate.

    python benchmarks/bench_loader.py [--quick] [--batch-size 32] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks.machine import cpu_name  # noqa: E402


def write_shards(root: Path, videos: int, clips: int, per_shard: int = 64) -> None:
    import webdataset as wds

    from pipeline.shards import npy_bytes

    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    records = []
    for s in range(0, videos, per_shard):
        name = f"shard-000-{s // per_shard:06d}.tar"
        keys = []
        with wds.TarWriter(str(root / name)) as tw:
            for v in range(s, min(videos, s + per_shard)):
                key = f"v{v:06d}-00000000"
                sents = [
                    {
                        "text": "now let me show you how to spin the green square today",
                        "start": i * 4.5,
                        "end": i * 4.5 + 4.5,
                        "clips": [3 * i, 3 * i + 3],
                        "words": [],
                    }
                    for i in range(clips // 3)
                ]
                tw.write(
                    {
                        "__key__": key,
                        "feat.npy": npy_bytes(rng.normal(size=(clips, 1024)).astype(np.float16)),
                        "asr.json": json.dumps(
                            {"source": "x", "model": "", "language": "en", "sentences": sents}
                        ).encode(),
                        "clips.json": b"{}",
                        "meta.json": json.dumps({"extraction": {}, "weights": "x"}).encode(),
                    }
                )
                keys.append(key)
        records.append({"name": name, "samples": len(keys), "keys": keys, "bytes": 0, "sha256": ""})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def main() -> None:
    import torch

    from data_prep.cluster import run_cluster
    from pipeline.cluster_config import ClusterConfig
    from pipeline.config import load_config
    from pipeline.models import build_model, build_objective
    from pipeline.segments import SegmentStream
    from pretrain.train import default_text_model, load_vocabulary

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_loader_"))
    write_shards(tmp / "shards", videos=128 if args.quick else 512, clips=24)
    run_cluster(
        load_config(ClusterConfig, None, ["depth=2", "k=8", "progress=false"]),
        tmp / "shards",
        tmp / "vocab",
    )
    text_model = default_text_model()
    stream = SegmentStream(
        str(tmp / "shards"), text_model, args.batch_size, vocab_dir=str(tmp / "vocab")
    )
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=args.workers)
    n_batches = 10 if args.quick else 40
    it = iter(loader)
    next(it)  # worker start-up and tokenizer load are not throughput
    t0 = time.perf_counter()
    batches = [next(it) for _ in range(n_batches)]
    load_rate = n_batches * args.batch_size / (time.perf_counter() - t0)

    model = build_model("videobert", text_model, load_vocabulary(str(tmp / "vocab")))
    objective = build_objective("videobert")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    steps = 3 if args.quick else 8

    def step(batch):
        loss = objective(model, batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad()

    step(batches[0])  # warm-up
    t0 = time.perf_counter()
    for b in batches[1 : 1 + steps]:
        step(b)
    train_rate = steps * args.batch_size / (time.perf_counter() - t0)
    print(
        f"machine: {cpu_name()}, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}; loader workers {args.workers}"
    )
    print(f"loader   {load_rate:8.1f} segments/s (batch {args.batch_size})")
    print(f"training {train_rate:8.1f} segments/s (VideoBERT, MiniLM-L6 text tower, CPU)")
    print(f"ratio loader/training = {load_rate / train_rate:.1f}x (target >= 5x)")


if __name__ == "__main__":
    main()
