"""Training-step time of VideoBERT against HuggingFace BertForMaskedLM of the same size.

One step = objective forward + backward + AdamW step. Both models get the same packed batch
(B rows of N = 128 tokens: [CLS] 45 WordPiece [>] 80 clips [SEP], shorter rows padded) and the
same attention mask; the baseline sees the ids folded into its text vocabulary and 15 % labels.
Clip subsampling is off (max_subsample=1) so every text-video row really is N tokens long.

Two baselines: stock `BertForMaskedLM(labels=...)`, which decodes all B x N positions, and the
same model decoding only the labelled positions (what VideoBERTObjective does), so the second
ratio isolates our packing, three-table embedding and extra heads. Prints ratios (ours /
baseline, lower is better; target <= 1.15) and tokens/s. With CUDA it also measures a bf16
(autocast) bert-base-sized VideoBERT at N = 512: tokens/s and MFU against --peak-tflops.

    python benchmarks/bench_videobert_step.py [--quick] [--threads 1] [--peak-tflops 989]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from transformers import BertConfig, BertForMaskedLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import cpu_name  # noqa: E402
from pipeline.models.videobert import (  # noqa: E402
    VideoBERTConfig,
    VideoBERTForPretraining,
    VideoBERTObjective,
)

VISUAL_WORDS = 20736  # 12^4, methods.md 1.1
TEXT_VOCAB = 30522  # bert-base-uncased WordPiece


def bert_config(layers: int, width: int, max_positions: int = 512) -> BertConfig:
    return BertConfig(
        vocab_size=TEXT_VOCAB,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=width // 64,
        intermediate_size=4 * width,
        max_position_embeddings=max_positions,
    )


def segment_batch(batch: int, text_len: int, clips: int, device: str) -> dict[str, torch.Tensor]:
    """Full rows: every row has text_len WordPieces and `clips` clips, one video per row."""
    return {
        "text_ids": torch.randint(1000, TEXT_VOCAB, (batch, text_len), device=device),
        "text_mask": torch.ones(batch, text_len, dtype=torch.bool, device=device),
        "video_tokens": torch.randint(0, VISUAL_WORDS, (batch, clips), device=device),
        "video_mask": torch.ones(batch, clips, dtype=torch.bool, device=device),
        "video_ids": torch.arange(batch, device=device),
    }


def videobert(config: BertConfig, device: str) -> VideoBERTForPretraining:
    vb_config = VideoBERTConfig(text_config=config.to_dict(), num_visual_words=VISUAL_WORDS)
    return VideoBERTForPretraining(vb_config).to(device).train()


def step_fn(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
    params = [p for p in model.parameters() if p.requires_grad]
    fused = params[0].is_cuda  # one kernel for all parameters on the GPU
    optimizer = torch.optim.AdamW(params, lr=1e-5, foreach=not fused, fused=fused)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn().backward()
        optimizer.step()

    return step


def time_interleaved(steps: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median seconds per step; the contenders alternate so machine load hits them alike."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for step in steps.values():  # warm-up: allocator, AdamW state
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def compare_on_cpu(layers: int, width: int, batch: int, repeats: int) -> None:
    torch.manual_seed(0)
    config = bert_config(layers, width)
    ours = videobert(config, "cpu")
    objective = VideoBERTObjective(max_subsample=1)
    data = segment_batch(batch, 45, 80, "cpu")  # 1 + 45 + 1 + 80 + 1 = 128 tokens

    # The baseline gets the same packed rows: ids folded into WordPiece, 15 % labels.
    packed = ours.pack_inputs(
        data["text_ids"], data["text_mask"], data["video_tokens"], data["video_mask"]
    )
    ids = packed.input_ids % TEXT_VOCAB
    labels = torch.where((torch.rand(ids.shape) < 0.15) & packed.attention_mask.bool(), ids, -100)
    baseline = BertForMaskedLM(config).train()

    def stock_loss() -> torch.Tensor:
        return baseline(
            input_ids=ids,
            attention_mask=packed.attention_mask,
            token_type_ids=packed.token_type_ids,
            labels=labels,
        ).loss

    chosen = labels != -100

    def masked_only_loss() -> torch.Tensor:
        hidden = baseline.bert(
            input_ids=ids,
            attention_mask=packed.attention_mask,
            token_type_ids=packed.token_type_ids,
        ).last_hidden_state
        return F.cross_entropy(baseline.cls(hidden[chosen]), labels[chosen])

    seconds = time_interleaved(
        {
            "videobert": step_fn(ours, lambda: objective(ours, data)["loss"]),
            "bert_mlm": step_fn(baseline, stock_loss),
            "bert_mlm_masked_only": step_fn(baseline, masked_only_loss),
        },
        repeats,
    )
    tokens = ids.numel()
    print(f"\n{layers} layers x {width}, batch {batch} x seq {ids.shape[1]} ({tokens} tokens)")
    for name, sec in seconds.items():
        print(f"  {name:22s} {sec * 1e3:8.1f} ms/step  {tokens / sec:9.0f} tokens/s")
    print(
        f"  ratio videobert / bert_mlm             = {seconds['videobert'] / seconds['bert_mlm']:.3f}"
    )
    print(
        "  ratio videobert / bert_mlm_masked_only = "
        f"{seconds['videobert'] / seconds['bert_mlm_masked_only']:.3f}  (target <= 1.15)"
    )


def training_flops(config: BertConfig, batch: int, seq: int, masked: int, visual: int) -> float:
    """Matmul FLOPs of one training step (forward x 3): encoder, attention, pooler, heads."""
    d, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_token = layers * (2 * (4 * d * d + 2 * d * inner) + 4 * seq * d)  # QKVO+FFN, QK^T+AV
    heads = masked * 2 * (d * d + d * config.vocab_size) + visual * 2 * (d * d + d * VISUAL_WORDS)
    return 3.0 * (batch * seq * per_token + batch * 2 * d * d + 2 * d * batch + heads)


def measure_long_sequences(
    batch: int,
    repeats: int,
    peak_tflops: float,
    device: str = "cuda",
    layers: int = 12,
    width: int = 768,
) -> None:
    """bf16 autocast bert-base-sized VideoBERT at N = 512 on the GPU: tokens/s and MFU."""
    torch.manual_seed(0)
    config = bert_config(layers, width)
    model = videobert(config, device)
    objective = VideoBERTObjective(max_subsample=1, p_text_only=0.0, p_video_only=0.0)
    data = segment_batch(batch, 128, 381, device)  # 1 + 128 + 1 + 381 + 1 = 512 tokens

    def loss() -> torch.Tensor:
        with torch.autocast(device, dtype=torch.bfloat16):
            return objective(model, data)["loss"]

    seconds = time_interleaved({"videobert_bf16": step_fn(model, loss)}, repeats)["videobert_bf16"]
    # Expected decoded slots: 15 % of text and clips, on the aligned half of the rows only.
    aligned = 1.0 - objective.negative_fraction
    flops = training_flops(
        config, batch, 512, int(0.15 * aligned * batch * 128), int(0.15 * aligned * batch * 381)
    )
    tokens = batch * 512
    name = torch.cuda.get_device_name() if device == "cuda" else device
    print(f"\n{name}: bf16 autocast, {layers} x {width}, batch {batch} x 512")
    print(f"  {seconds * 1e3:.1f} ms/step  {tokens / seconds:.0f} tokens/s")
    print(
        f"  {flops / seconds / 1e12:.1f} TFLOP/s = MFU {flops / seconds / 1e12 / peak_tflops:.1%}"
        f" of {peak_tflops:.0f} TFLOP/s peak"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="MiniLM size, batch 4, 3 repeats")
    # One thread by default: on a shared box, idle OpenMP workers spin against other jobs and
    # swamp the difference being measured (10x slower steps seen on 2 shared cores).
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--batch", type=int, default=None, help="CPU batch (16; 4 with --quick)")
    parser.add_argument("--gpu-batch", type=int, default=32)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="H100 SXM bf16 dense")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batch = args.batch or (4 if args.quick else 16)
    print(
        f"machine: {cpu_name()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, transformers {transformers.__version__}"
    )
    repeats = 3 if args.quick else 7
    compare_on_cpu(6, 384, batch, repeats)
    if not args.quick:
        compare_on_cpu(12, 768, batch, repeats)
    if torch.cuda.is_available():
        measure_long_sequences(args.gpu_batch, repeats, args.peak_tflops)
    else:
        print("\nno CUDA device: skipped the bf16 seq-512 tokens/s and MFU measurement")


if __name__ == "__main__":
    main()
