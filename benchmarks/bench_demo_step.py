"""The demo's pretraining step: what grouping rows by length and the fused AdamW each save.

The demo's segments are short and uneven (a few words and 1-4 clips, some rows two segments
joined), so a batch padded to its longest row is mostly padding. `bert_by_length`
(pipeline/models/text.py) runs the rows in groups, each cut to its longest row; how many groups
depends on `RUN_OVERHEAD_TOKENS`, the cost of one more BERT call in padded tokens. The engine's
AdamW is `fused=True`: one kernel over all parameters instead of the foreach default.

This times the real step (objective forward, backward, AdamW) of the demo's pretraining config on
its first batches. The baseline is the code before both changes: one padded BERT call per batch
and the foreach AdamW. Every other setting prints its ratio to that baseline, measured in the
same run, interleaved so that machine load hits all alike. It also prints the share of padding.

    python benchmarks/bench_demo_step.py --demo-out demo_out [--batches 8] [--repeats 3]

Needs a `vlpipe demo` output (its shards, visual words and pretraining config).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_videobert_step import time_interleaved  # noqa: E402
from benchmarks.machine import cpu_name  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.models import text  # noqa: E402
from pipeline.models.text import length_runs  # noqa: E402
from pipeline.train_config import PretrainConfig  # noqa: E402
from pretrain.train import PretrainTask  # noqa: E402

PADDED = 10**9  # an overhead no saving beats: one call per batch


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--demo-out", default="demo_out", help="a vlpipe demo output directory")
    p.add_argument("--model", default="videobert", help="which pretrained run of the demo")
    p.add_argument("--batches", type=int, default=8, help="demo batches per timed pass")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per setting")
    p.add_argument("--overheads", default="16,64,128", help="RUN_OVERHEAD_TOKENS values to try")
    args = p.parse_args()

    out = Path(args.demo_out)
    cfg = load_config(
        PretrainConfig,
        out / f"run-{args.model}" / "config.yaml",
        # The run's paths are relative to where the demo ran: name them from here.
        [f"data.shards={out / 'shards/train'}", f"data.vocab={out / 'vocab'}", "data.heldout=null"]
        + ["data.num_workers=0"],
    )
    task = PretrainTask(cfg)
    batches = []
    for batch in task.train_batches(0, 1, 0):
        batches.append(batch)
        if len(batches) == args.batches:
            break

    # name -> (RUN_OVERHEAD_TOKENS, fused AdamW)
    default = text.RUN_OVERHEAD_TOKENS
    settings = {
        "padded, foreach AdamW (before)": (PADDED, False),
        "padded, fused AdamW": (PADDED, True),
        **{
            f"grouped {v}, fused AdamW{' (default)' if int(v) == default else ''}": (int(v), True)
            for v in args.overheads.split(",")
        },
    }
    models = {}
    for name in settings:
        torch.manual_seed(0)
        models[name] = task.build_model().train()

    # What the packed rows look like: real tokens against one padded call and the groups.
    real = padded = grouped = 0
    for batch in batches:
        packed = next(iter(models.values())).pack_inputs(
            batch["text_ids"], batch["text_mask"], batch["video_tokens"], batch["video_mask"]
        )
        lengths = sorted(packed.attention_mask.sum(1).tolist())
        real += sum(lengths)
        padded += len(lengths) * lengths[-1]
        runs = length_runs(lengths, default)
        grouped += sum((b - a) * lengths[b - 1] for a, b in runs)
    print(f"machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{args.model} demo batches ({cfg.data.batch_size} segments, before negatives):")
    print(f"  real tokens / one padded call: {real / padded:.2f}")
    print(f"  real tokens / grouped (overhead {default}): {real / grouped:.2f}")

    def one_pass(model: torch.nn.Module, overhead: int, fused: bool):
        """One optimizer step per demo batch, BERT grouped with `overhead`."""
        params = [q for q in model.parameters() if q.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-5, fused=fused)

        def run() -> None:
            text.RUN_OVERHEAD_TOKENS = overhead
            for batch in batches:
                optimizer.zero_grad(set_to_none=True)
                task.loss(model, batch)["loss"].backward()
                optimizer.step()

        return run

    passes = {name: one_pass(models[name], *settings[name]) for name in settings}
    times = {n: t / len(batches) for n, t in time_interleaved(passes, args.repeats).items()}
    text.RUN_OVERHEAD_TOKENS = default
    base = next(iter(times.values()))
    print(f"{'setting':40s} s/step  ratio to before (lower is faster)")
    for name, sec in times.items():
        print(f"  {name:38s} {sec:6.3f}  {sec / base:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
