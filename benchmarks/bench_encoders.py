"""Visual encoders: compute (GMAC per clip), parameters, inference clips/s and training steps/s for
each encoder and option, with the issue-11 targets measured against a baseline in the same run.

    python benchmarks/bench_encoders.py             # everything (about 20 min on 1 thread, busy host)
    python benchmarks/bench_encoders.py --quick     # shorter timing windows, fewer ToMe r values

Sections:
1. Calibration: torch.utils.flop_counter counts 2 FLOPs per multiply-accumulate, so GMAC = count / 2.
   Video Swin-T / S / B at 32 x 224 x 224 against the published 87.9 / 165.9 / 281.6 "GFLOPs"
   (which are MACs, methods.md 10) and 28 / 50 / 88 M parameters. Counted on the meta device:
   exact shapes, no arithmetic.
2. Every encoder and option at the sample-corpus clip (8 frames, 64 px): GMAC, parameters,
   clips/s (eval, no grad) and training steps/s (AdamW, 8 clips a step), as ratios to the same
   encoder without options.
3. TokenLearner, 8 tokens at half depth, vs no reducer (target: <= 0.6x compute, >= 1.5x clips/s),
   on ViViT-B (8 frames at 112 px: 196 tokens, like ViT-B/16 at 224) and the mini ViViT.
4. ToMe without retraining: clips/s by r on the same ViViT-B; the smallest r reaching 1.5x.

Timing: the baseline and the variant are timed in alternating rounds and the ratio is the median of
the per-round ratios, so load from other processes on the shared cores hits both alike.
Weights are random: throughput does not depend on their values.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import cpu_name  # noqa: E402
from pipeline.encoders import VisualEncoder, build_encoder  # noqa: E402

PUBLISHED = {  # Video-Swin-Transformer README, K400 IN-1K rows: (GFLOPs = GMAC, params M)
    "video_swin_tiny": (87.9, 28),
    "video_swin_small": (165.9, 50),
    "video_swin_base": (281.6, 88),
}
TL8_HALF = ["tokenlearner.enabled=true", "tokenlearner.num_tokens=8", "tokenlearner.placement=0.5"]
SMALL = ["frames=8", "size=64"]
VARIANTS: dict[str, list[tuple[str, list[str]]]] = {
    "s3d": [
        ("tokenlearner 8 @ output", ["tokenlearner.enabled=true", "tokenlearner.placement=1.0"])
    ],
    "video_swin_mini": [
        ("tokenlearner 8 @ output", ["tokenlearner.enabled=true", "tokenlearner.placement=1.0"]),
        ("v2", ["v2=true"]),
        ("spt + lsa", ["spt=true", "lsa=true"]),
    ],
    "vivit_mini": [
        ("tokenlearner 8 @ 1/2", TL8_HALF),
        ("tokenlearner 8 @ 1/2 v1", [*TL8_HALF, "tokenlearner.version=v1"]),
        ("tokenlearner 8 @ 1/2 + fuser", [*TL8_HALF, "tokenlearner.fuser=true"]),
        ("tome r=16 clip", ["tome.enabled=true", "tome.r=16"]),
        ("tome r=4 frame", ["tome.enabled=true", "tome.r=4", "tome.scope=frame"]),
        ("spt + lsa", ["spt=true", "lsa=true"]),
    ],
    "vivit_factorised_mini": [
        ("tokenlearner 8 @ 1/2", TL8_HALF),
        ("tome r=8 frame", ["tome.enabled=true", "tome.r=8", "tome.scope=frame"]),
        ("spt + lsa", ["spt=true", "lsa=true"]),
    ],
}


def gmac_per_clip(encoder: VisualEncoder, frames: int, size: int) -> float:
    """GMAC of one clip [1, 3, frames, size, size] through `encoder.encode`, counted on meta."""
    meta = _meta_copy(encoder)
    x = torch.zeros(1, 3, frames, size, size, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta.encode(x, return_tokens=False)
    return counter.get_total_flops() / 2e9


def _meta_copy(encoder: VisualEncoder) -> VisualEncoder:
    import copy

    clone = copy.deepcopy(encoder)
    return clone.to("meta").eval()


def params_m(encoder: torch.nn.Module) -> float:
    return sum(p.numel() for p in encoder.parameters()) / 1e6


def clip_shape(encoder: VisualEncoder, frames: int, size: int) -> tuple[int, int]:
    s = encoder.settings
    return (s.frames or frames), (s.size or size)


def inference_step(encoder: VisualEncoder, batch: torch.Tensor) -> Callable[[], None]:
    encoder.eval()

    def step() -> None:
        with torch.inference_mode():
            encoder.encode(batch, return_tokens=False)

    return step


def training_step(encoder: VisualEncoder, batch: torch.Tensor) -> Callable[[], None]:
    """One AdamW step of encoder + a linear head on random labels (what from-pixels training does)."""
    encoder.train()
    head = torch.nn.Linear(encoder.feature_dim, 10)
    optimiser = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=1e-4)
    labels = torch.randint(0, 10, (batch.shape[0],))

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        logits = head(encoder.encode(batch, return_tokens=False).pooled)
        torch.nn.functional.cross_entropy(logits, labels).backward()
        optimiser.step()

    return step


def paired_rates(
    base: Callable[[], None], other: Callable[[], None], rounds: int, seconds: float
) -> tuple[float, float, float]:
    """(base calls/s, other calls/s, median per-round ratio other/base), alternating rounds."""
    base(), other()  # warm-up (allocator, kernels)
    base_rates, other_rates = [], []
    for _ in range(rounds):
        base_rates.append(_rate(base, seconds))
        other_rates.append(_rate(other, seconds))
    ratio = statistics.median(o / b for o, b in zip(other_rates, base_rates, strict=True))
    return statistics.median(base_rates), statistics.median(other_rates), ratio


def _rate(fn: Callable[[], None], seconds: float) -> float:
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls / elapsed


def calibration() -> None:
    print("\n1. Calibration: GMAC = flop_counter / 2, Video Swin at 32 x 224 x 224 (meta device)")
    print(
        f"{'encoder':<18} {'GMAC':>8} {'published':>10} {'ratio':>7} {'params M':>9} {'published':>10}"
    )
    for name, (gmac_pub, params_pub) in PUBLISHED.items():
        encoder = build_encoder(name)
        gmac = gmac_per_clip(encoder, 32, 224)
        p = params_m(encoder)
        print(
            f"{name:<18} {gmac:>8.2f} {gmac_pub:>10.1f} {gmac / gmac_pub:>7.4f} {p:>9.2f} {params_pub:>10}"
        )


def options_table(args: argparse.Namespace) -> None:
    print(
        f"\n2. Encoders and options at {args.frames} frames x {args.size} px; {args.clips} clips per "
        "call; ratios vs the same encoder without options, measured in the same run"
    )
    header = f"{'encoder / option':<44} {'GMAC':>7} {'x':>6} {'params M':>9} {'clips/s':>9} {'x':>6} {'train st/s':>11} {'x':>6}"
    print(header)
    for name, variants in VARIANTS.items():
        overrides = SMALL if name.startswith("vivit") else []
        base = build_encoder(name, overrides)
        frames, size = clip_shape(base, args.frames, args.size)
        batch = torch.randn(args.clips, 3, frames, size, size)
        base_gmac = gmac_per_clip(base, frames, size)
        rows = [("(none)", base, base_gmac, None)]
        for label, extra in variants:
            encoder = build_encoder(name, [*overrides, *extra])
            rows.append((label, encoder, gmac_per_clip(encoder, frames, size), extra))
        for label, encoder, gmac, extra in rows:
            if extra is None:  # the baseline row: its own rates, ratio 1 by definition
                encoder_rate = statistics.median(
                    _rate(inference_step(encoder, batch), args.seconds) for _ in range(args.rounds)
                )
                train = training_step(build_encoder(name, overrides), batch)
                train_rate = statistics.median(
                    _rate(train, args.seconds) for _ in range(args.rounds)
                )
                ratio = train_ratio = 1.0
            else:
                _, encoder_rate, ratio = paired_rates(
                    inference_step(base, batch),
                    inference_step(encoder, batch),
                    args.rounds,
                    args.seconds,
                )
                _, train_rate, train_ratio = paired_rates(
                    training_step(build_encoder(name, overrides), batch),
                    training_step(build_encoder(name, [*overrides, *extra]), batch),
                    args.rounds,
                    args.seconds,
                )
            print(
                f"{name + ' / ' + label:<44} {gmac:>7.3f} {gmac / base_gmac:>6.2f} "
                f"{params_m(encoder):>9.2f} {encoder_rate * args.clips:>9.1f} {ratio:>6.2f} "
                f"{train_rate:>11.2f} {train_ratio:>6.2f}"
            )


def token_learner_target(args: argparse.Namespace) -> None:
    print(
        "\n3. TokenLearner, 8 tokens at half depth, vs no reducer (target <= 0.6x GMAC, >= 1.5x clips/s)"
    )
    cases = [
        ("vivit_base", ["frames=8", "size=112", "pool=gap"], 8, 112),
        ("vivit_mini", SMALL, 8, 64),
    ]
    for name, overrides, frames, size in cases:
        base = build_encoder(name, overrides)
        reduced = build_encoder(name, [*overrides, *TL8_HALF])
        clips = args.clips
        batch = torch.randn(clips, 3, frames, size, size)
        g0, g1 = gmac_per_clip(base, frames, size), gmac_per_clip(reduced, frames, size)
        b, o, ratio = paired_rates(
            inference_step(base, batch), inference_step(reduced, batch), args.rounds, args.seconds
        )
        t, h, w = base.grid
        verdict = "PASS" if g1 / g0 <= 0.6 and ratio >= 1.5 else "MISS"
        print(
            f"{name} ({t}x{h}x{w} tokens): GMAC {g0:.3f} -> {g1:.3f} ({g1 / g0:.3f}x); "
            f"clips/s {b * clips:.2f} -> {o * clips:.2f} ({ratio:.2f}x)  {verdict}"
        )


def tome_sweep(args: argparse.Namespace) -> None:
    print("\n4. ToMe without retraining: clips/s by r (merges per block), vs r = 0 in the same run")
    overrides = ["frames=8", "size=112", "pool=cls"]
    base = build_encoder("vivit_base", overrides)
    batch = torch.randn(args.clips, 3, 8, 112, 112)
    g0 = gmac_per_clip(base, 8, 112)
    found = None
    for r in args.tome_r:
        merged = build_encoder("vivit_base", [*overrides, "tome.enabled=true", f"tome.r={r}"])
        merged.load_state_dict(base.state_dict())  # same weights: no retraining
        g = gmac_per_clip(merged, 8, 112)
        _, _, ratio = paired_rates(
            inference_step(base, batch), inference_step(merged, batch), args.rounds, args.seconds
        )
        print(
            f"vivit_base 8x112 (197 tokens) r={r:>3}: GMAC {g:.2f} ({g / g0:.3f}x), clips/s {ratio:.2f}x"
        )
        if found is None and ratio >= 1.5:
            found = r
    print(f"smallest r with >= 1.5x clips/s: {found if found is not None else 'none in the sweep'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short windows, fewer r values")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--clips", type=int, default=8, help="clips per call (minis)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--skip", nargs="*", default=[], choices=["calib", "options", "tl", "tome"])
    args = parser.parse_args()
    args.rounds = 3 if args.quick else 5
    args.seconds = 0.5 if args.quick else 1.5
    args.tome_r = [8, 16] if args.quick else [4, 8, 12, 16, 20]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    logging.getLogger("pipeline.s3d").setLevel(logging.ERROR)  # random-init banner: known here
    print(f"machine: {cpu_name()}; torch {torch.__version__}, {args.threads} thread(s)")
    if "calib" not in args.skip:
        calibration()
    if "options" not in args.skip:
        options_table(args)
    if "tl" not in args.skip:
        token_learner_target(args)
    if "tome" not in args.skip:
        tome_sweep(args)


if __name__ == "__main__":
    main()
