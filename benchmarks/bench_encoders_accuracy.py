"""Accuracy from pixels on the sample corpus: verb and noun of held-out clips for each encoder, with
and without each reducer, SPT + LSA on and off, against the S3D-feature baseline; a plot of accuracy
vs compute (GMAC per clip).

    python benchmarks/bench_encoders_accuracy.py --output out/bench_encoders_accuracy
    python benchmarks/bench_encoders_accuracy.py --seeds 0 1 2   # about 25 min a seed on 1 thread
    python benchmarks/bench_encoders_accuracy.py --only vivit_mini video_swin_mini   # a subset

Data: data/sample_corpus (53 train / 13 held-out videos, labels.json), decoded once with
`data_prep.video.iter_clips` (20 fps, 1.5 s clips, short side resized and centre-cropped to
--size), `--frames` frames per clip sampled uniformly (cached in the output directory). A clip
inside an action segment is labelled with that segment's verb and noun (5 each; chance 20%);
pauses are left out.

Each encoder is trained from random init (no pretrained weights exist offline) with two linear
heads (verb, noun), AdamW, warm-up then cosine, the same recipe for all; accuracy is taken after
the last epoch (no model selection on held-out data). ToMe is also applied *without retraining* to
the trained plain ViViTs (the r sweep of bench_encoders.py). Baseline: frozen random-init S3D
features (what prep writes today without a checkpoint) + a linear probe, on the same clips.

Results are appended to results.jsonl as they finish (a rerun skips what is done) and summarised
as a table and accuracy_vs_gmac.png. This is CPU-frugal by design: mini encoders, small frames,
few epochs; the figures describe this small synthetic corpus, not real video.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_encoders import gmac_per_clip  # noqa: E402
from benchmarks.machine import cpu_name  # noqa: E402
from data_prep.video import iter_clips  # noqa: E402
from pipeline.encoders import build_encoder  # noqa: E402
from pipeline.encoders.base import sample_frame_indices  # noqa: E402

TL = ["tokenlearner.enabled=true", "tokenlearner.num_tokens=8"]
CONFIGS: list[tuple[str, str, list[str]]] = [  # (label, encoder, overrides); trained from pixels
    ("vivit_mini", "vivit_mini", []),
    ("vivit_mini + TL 8 @ 1/2", "vivit_mini", [*TL, "tokenlearner.placement=0.5"]),
    ("vivit_mini + SPT + LSA", "vivit_mini", ["spt=true", "lsa=true"]),
    ("vivit_factorised_mini", "vivit_factorised_mini", []),
    (
        "vivit_factorised_mini + TL 8 @ 1/2",
        "vivit_factorised_mini",
        [*TL, "tokenlearner.placement=0.5"],
    ),
    ("vivit_factorised_mini + SPT + LSA", "vivit_factorised_mini", ["spt=true", "lsa=true"]),
    ("video_swin_mini", "video_swin_mini", []),
    ("video_swin_mini + TL 8 @ output", "video_swin_mini", [*TL, "tokenlearner.placement=1.0"]),
    ("video_swin_mini + SPT + LSA", "video_swin_mini", ["spt=true", "lsa=true"]),
    ("video_swin_mini + V2", "video_swin_mini", ["v2=true"]),
]
TOME_AFTER = {"vivit_mini": (8, 16, 24), "vivit_factorised_mini": (4, 8)}  # r, no retraining
TOME_SCOPE = {"vivit_mini": "clip", "vivit_factorised_mini": "frame"}


# --- data ------------------------------------------------------------------------------------


def load_clips(corpus: Path, size: int, frames: int, cache: Path) -> dict[str, np.ndarray]:
    """{"frames" uint8 [M, frames, size, size, 3], "verb" [M], "noun" [M], "heldout" bool [M],
    "video" [M]} for every clip inside an action segment; decoded once, then read from `cache`."""
    if cache.is_file():
        with np.load(cache) as data:
            return {k: data[k] for k in data.files}
    labels = json.loads((corpus / "labels.json").read_text())
    verbs, nouns = labels["verbs"], labels["nouns"]
    out: dict[str, list] = {"frames": [], "verb": [], "noun": [], "heldout": [], "video": []}
    start = time.perf_counter()
    for video_id, video in sorted(labels["videos"].items()):
        for clip in iter_clips(corpus / video["file"], fps=20.0, clip_seconds=1.5, size=size):
            middle = (clip.start + clip.end) / 2
            segment = next((s for s in video["segments"] if s["start"] <= middle < s["end"]), None)
            if segment is None or clip.num_real_frames < clip.frames.shape[0]:
                continue  # a pause between actions, or a padded last clip
            keep = sample_frame_indices(clip.frames.shape[0], frames).numpy()
            out["frames"].append(clip.frames[keep])
            out["verb"].append(verbs.index(segment["verb"]))
            out["noun"].append(nouns.index(segment["noun"]))
            out["heldout"].append(video["split"] == "heldout")
            out["video"].append(video_id)
    data = {k: np.asarray(v) for k, v in out.items()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, **data)
    tmp.replace(cache)
    print(f"decoded {len(data['verb'])} clips in {time.perf_counter() - start:.0f} s -> {cache}")
    return data


# --- training from pixels ----------------------------------------------------------------------


def _batches(n: int, batch: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return list(order.split(batch))


def evaluate(encoder, head, frames: torch.Tensor, verb: torch.Tensor, noun: torch.Tensor):
    """Held-out (verb accuracy, noun accuracy, logits [M, 10]) of encoder + head, eval mode."""
    encoder.eval()
    with torch.inference_mode():
        logits = torch.cat(
            [head(encoder(frames[i][:, None]).pooled[:, 0]) for i in _batches(len(verb), 64, None)]
        )
    acc_v = (logits[:, :5].argmax(1) == verb).float().mean().item()
    acc_n = (logits[:, 5:].argmax(1) == noun).float().mean().item()
    return acc_v, acc_n, logits


def train_from_pixels(name: str, overrides: list[str], data: dict, args, seed: int):
    """Train encoder + linear heads on the train clips; returns (encoder, head, train seconds)."""
    settings = [f"frames={args.frames}", f"size={args.size}", f"seed={seed}", *overrides]
    encoder = build_encoder(name, settings)
    torch.manual_seed(seed)
    head = torch.nn.Linear(encoder.feature_dim, 10)
    train = ~data["heldout"]
    frames = torch.from_numpy(data["frames"][train])
    verb, noun = torch.from_numpy(data["verb"][train]), torch.from_numpy(data["noun"][train])
    params = [*encoder.parameters(), *head.parameters()]
    optimiser = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05)
    steps = args.epochs * math.ceil(len(verb) / args.batch)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup)))
        ),
    )
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    encoder.train()
    for _ in range(args.epochs):
        for idx in _batches(len(verb), args.batch, generator):
            logits = head(encoder(frames[idx][:, None]).pooled[:, 0])
            loss = F.cross_entropy(logits[:, :5], verb[idx]) + F.cross_entropy(
                logits[:, 5:], noun[idx]
            )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimiser.step()
            schedule.step()
    return encoder, head, time.perf_counter() - start


# --- the S3D-feature baseline ------------------------------------------------------------------


def s3d_probe(data: dict, args, seed: int) -> tuple[float, float, float]:
    """Frozen random-init S3D features + linear probe: (verb acc, noun acc, GMAC per clip)."""
    encoder = build_encoder("s3d", [f"seed={seed}", "clip_batch=32"])
    frames = torch.from_numpy(data["frames"])
    with torch.inference_mode():
        feats = encoder(frames[:, None]).pooled[:, 0]  # [M, 1024]
    train, held = ~data["heldout"], data["heldout"]
    mean, std = feats[train].mean(0), feats[train].std(0) + 1e-6
    x = (feats - mean) / std
    verb, noun = torch.from_numpy(data["verb"]), torch.from_numpy(data["noun"])
    torch.manual_seed(seed)
    head = torch.nn.Linear(1024, 10)
    optimiser = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-2)
    for _ in range(300):  # full-batch
        logits = head(x[train])
        loss = F.cross_entropy(logits[:, :5], verb[train]) + F.cross_entropy(
            logits[:, 5:], noun[train]
        )
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        logits = head(x[held])
    acc_v = (logits[:, :5].argmax(1) == verb[held]).float().mean().item()
    acc_n = (logits[:, 5:].argmax(1) == noun[held]).float().mean().item()
    return acc_v, acc_n, gmac_per_clip(encoder, args.frames, args.size)


# --- driver -----------------------------------------------------------------------------------


def run(args) -> list[dict]:
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    data = load_clips(
        Path(args.corpus), args.size, args.frames, out / f"clips_{args.frames}x{args.size}.npz"
    )
    held = data["heldout"]
    print(
        f"clips: {int((~held).sum())} train, {int(held.sum())} held-out; {args.frames} x {args.size} px"
    )
    results_path = out / "results.jsonl"
    done = (
        [json.loads(line) for line in results_path.read_text().splitlines()]
        if results_path.exists()
        else []
    )
    have = {(r["label"], r["seed"]) for r in done}

    def record(row: dict) -> None:
        done.append(row)
        with results_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"  {row['label']:<42} seed {row['seed']}: verb {row['verb']:.3f} noun {row['noun']:.3f} "
              f"GMAC {row['gmac']:.4f}" + (f" ({row['train_s']:.0f} s)" if "train_s" in row else "")
              + (f" same prediction {row['same_prediction']}, max |dlogit| {row['max_logit_change']:.3f}"
                 if "same_prediction" in row else ""))  # fmt: skip

    held_frames = torch.from_numpy(data["frames"][held])
    held_verb, held_noun = (
        torch.from_numpy(data["verb"][held]),
        torch.from_numpy(data["noun"][held]),
    )
    for seed in args.seeds:
        label = "S3D features (random init) + linear probe"
        if (label, seed) not in have and (not args.only or "s3d" in args.only):
            v, n, g = s3d_probe(data, args, seed)
            record(
                {"label": label, "encoder": "s3d", "seed": seed, "verb": v, "noun": n, "gmac": g}
            )
        for label, name, overrides in CONFIGS:
            if args.only and name not in args.only:
                continue
            wanted_tome = [
                f"{label} + ToMe r={r} (no retraining)" for r in TOME_AFTER.get(name, ())
            ]
            if (label, seed) in have and all(
                (w, seed) in have for w in wanted_tome if not overrides
            ):
                continue
            torch.set_num_threads(args.threads)
            encoder, head, seconds = train_from_pixels(name, overrides, data, args, seed)
            gmac = gmac_per_clip(encoder, args.frames, args.size)
            v, n, plain_logits = evaluate(encoder, head, held_frames, held_verb, held_noun)
            if (label, seed) not in have:
                record({"label": label, "encoder": name, "seed": seed, "verb": v, "noun": n,
                        "gmac": gmac, "train_s": seconds})  # fmt: skip
            if overrides:
                continue
            for r, tome_label in zip(TOME_AFTER.get(name, ()), wanted_tome, strict=True):
                if (tome_label, seed) in have:
                    continue
                merged = build_encoder(name, [f"frames={args.frames}", f"size={args.size}", "tome.enabled=true",
                                              f"tome.r={r}", f"tome.scope={TOME_SCOPE[name]}"])  # fmt: skip
                merged.load_state_dict(encoder.state_dict())
                v, n, logits = evaluate(merged, head, held_frames, held_verb, held_noun)
                same = [(logits[:, k].argmax(1) == plain_logits[:, k].argmax(1)).float().mean().item()
                        for k in (slice(0, 5), slice(5, 10))]  # fmt: skip
                record({"label": tome_label, "encoder": name, "seed": seed, "verb": v, "noun": n,
                        "gmac": gmac_per_clip(merged, args.frames, args.size),
                        "same_prediction": same,
                        "max_logit_change": (logits - plain_logits).abs().max().item()})  # fmt: skip
    return done


def summarise(rows: list[dict], out: Path) -> None:
    by_label: dict[str, list[dict]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    print(f"\nheld-out accuracy, mean +- sd over seeds (chance 0.20); machine: {cpu_name()}")
    print(f"{'configuration':<46} {'seeds':>5} {'verb':>13} {'noun':>13} {'GMAC/clip':>10}")
    points = []
    for label, group in by_label.items():
        verb = [r["verb"] for r in group]
        noun = [r["noun"] for r in group]
        sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
        gmac = group[0]["gmac"]
        seeds = ",".join(str(r["seed"]) for r in group)
        print(f"{label:<46} {seeds:>5} {statistics.mean(verb):>7.3f}+-{sd(verb):.3f} "
              f"{statistics.mean(noun):>7.3f}+-{sd(noun):.3f} {gmac:>10.4f}")  # fmt: skip
        points.append((label, gmac, statistics.mean(verb), statistics.mean(noun)))
    _plot(points, out / "accuracy_vs_gmac.png")


def _plot(points: list[tuple[str, float, float, float]], path: Path) -> None:
    """Two panels (verb, noun): accuracy vs GMAC per clip, one marker per configuration, colour
    per encoder family, legend below (labels would overlap on the points)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = ["S3D", "vivit_mini", "vivit_factorised", "video_swin"]
    colours = dict(zip(families, ["black", "tab:blue", "tab:orange", "tab:green"], strict=True))
    markers = "osD^vP*Xhp<>"
    fig, axes = plt.subplots(1, 2, figsize=(12, 6.5), sharey=True)
    seen: dict[str, int] = {}
    for label, gmac, verb, noun in points:
        family = next((f for f in families[::-1] if label.startswith(f)), "S3D")
        marker = markers[seen.setdefault(family, 0) % len(markers)]
        seen[family] += 1
        for ax, acc in ((axes[0], verb), (axes[1], noun)):
            ax.scatter(gmac, acc, marker=marker, color=colours[family], s=45, label=label)
    for ax, title in zip(axes, ("verb", "noun"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("GMAC per clip (torch.utils.flop_counter / 2)")
        ax.set_title(f"held-out {title} accuracy (sample corpus)")
        ax.axhline(0.2, color="grey", lw=0.5, ls="--")
        ax.set_ylim(0.0, 1.03)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy, mean over seeds (chance 0.2)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.17, 1, 1))
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="data/sample_corpus")
    parser.add_argument("--output", default="out/bench_encoders_accuracy")
    parser.add_argument("--size", type=int, default=48, help="frame side in px")
    parser.add_argument("--frames", type=int, default=8, help="frames per 1.5 s clip")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=[], help="encoder names (and/or s3d) to run")
    args = parser.parse_args()
    logging.getLogger("pipeline.s3d").setLevel(logging.ERROR)  # the random-init banner, known
    torch.set_num_threads(args.threads)
    rows = run(args)
    summarise(rows, Path(args.output))


if __name__ == "__main__":
    main()
