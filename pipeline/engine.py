"""One training engine for every task: pretraining objectives and fine-tuning heads alike.

    result = train(task, cfg, resume=False)    # cfg: an EngineConfig (+ the task's sections)

A `Task` says what is specific to it: how to build its model, its stream of training batches,
its loss (a dict of named terms with "loss") and, optionally, its evaluation on held-out data
and the metric that picks the best step. The engine owns everything general:

* Accelerate: one process, or several under `torchrun` / `accelerate launch` (gloo on CPU, DDP or
  FSDP on GPUs from the Accelerate config); mixed precision, accumulation, clipping, warm-up and
  decay; seeds and deterministic algorithms;
* `checkpoints/step-N` written with `save_state` into a temporary directory and renamed, the last
  K kept; `--resume` restores model, optimizer, scheduler and RNG states and asks the task for
  the data stream from the same position, so a resumed run follows the uninterrupted one;
* `metrics.jsonl` (one line per optimizer step, and one per evaluation), TensorBoard, samples/s,
  tokens/s and MFU; a progress bar on a terminal, a log line every `log_every` steps otherwise;
* evaluation every `eval_every` steps and at the end, in a forked RNG so it never changes what
  training draws; with `task.best_metric`, the best step on that (validation) metric is the one
  exported; `config.yaml` (resolved config + git revision) and `model/` at the end;
* `ranks.json`: every process's parameter checksum at the end, so a data-parallel run shows
  that its processes trained one model (an error is logged when they differ).

The model and the loss are wrapped in one module so DDP/FSDP see a single `forward` and the
loop below stays one screen long.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.config import flat_dict, save_config, to_dict
from pipeline.io import append_jsonl, atomic_write_json, read_jsonl, umask_modes
from pipeline.train_config import EngineConfig

log = logging.getLogger("vlpipe.train")


class Task(ABC):
    """What a kind of training run (a pretraining objective, a fine-tuning head) provides."""

    name: str = "task"
    # An evaluation key (e.g. "val/accuracy") whose best value picks the exported step; None:
    # the last step is exported. `greater_is_better` says which way is best.
    best_metric: str | None = None
    greater_is_better: bool = True

    @abstractmethod
    def build_model(self) -> nn.Module:
        """The trainable model (built on every process, with the seed already set)."""

    @abstractmethod
    def train_batches(self, rank: int, world: int, skip_batches: int) -> Iterable[dict]:
        """This process's endless stream of training batches (dicts of tensors; an "epoch" int
        is logged), starting after the first `skip_batches` micro-batches (resume)."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """{"loss": scalar with graph, other named terms (logged)}. `model` may be DDP-wrapped."""

    @abstractmethod
    def export(self, model: nn.Module, out: Path) -> None:
        """Write everything a later stage needs into the (empty) directory `out`."""

    def parameter_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups; default: every trainable parameter at `lr`."""
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]

    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        """Metrics on held-out data (model in eval mode, no grad); {} when the task has none."""
        return {}

    def batch_size(self, batch: dict[str, Any]) -> int:
        return len(batch["keys"]) if "keys" in batch else 0

    def batch_tokens(self, batch: dict[str, Any]) -> int:
        return 0


class TaskModule(nn.Module):
    """model + the task's loss as one module: DDP/FSDP see `forward` (gradient sync hooks)."""

    def __init__(self, task: Task, model: nn.Module) -> None:
        super().__init__()
        self.task, self.model = task, model

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.task.loss(self.model, batch)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # every record logged
    best: dict[str, Any] | None = None  # the evaluation record of the exported step


def train(task: Task, cfg: EngineConfig, resume: bool = False) -> TrainResult:
    """Run (or resume) `task` with the engine settings `cfg`; returns where and what it ended."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    run_dir = Path(cfg.output_dir)
    accelerator = Accelerator(
        # Accelerate picks gloo multi-process CPU training under torchrun only with cpu=True.
        cpu=not torch.cuda.is_available(),
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.optim.grad_accum,
        log_with="tensorboard",
        project_dir=str(run_dir),
        # A head may get no loss in some step (regimes are drawn per batch).
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    set_seed(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    model = task.build_model()
    module = TaskModule(task, model)
    optimizer = torch.optim.AdamW(
        task.parameter_groups(model, cfg.optim.lr),
        lr=cfg.optim.lr,
        betas=tuple(cfg.optim.betas),
        weight_decay=cfg.optim.weight_decay,
        # One fused kernel over all parameters (CPU and CUDA): same update, and on the demo's
        # pretraining (2 CPU cores) 0.03 s a step instead of the foreach default's 0.12 s of
        # about 1 s (benchmarks/bench_demo_step.py).
        fused=True,
    )
    scheduler = get_scheduler(
        cfg.optim.schedule, optimizer, cfg.optim.warmup_steps, cfg.optim.max_steps
    )
    # The data stream is not prepared: tasks split it by rank themselves, with exact resume.
    module, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)
    state = _start(accelerator, run_dir, cfg, resume)
    step = state["step"]
    loader = task.train_batches(
        accelerator.process_index, accelerator.num_processes, step * cfg.optim.grad_accum
    )
    meter = _Meter(accelerator, sum(p.numel() for p in model.parameters()), cfg)
    progress = _Progress(accelerator, cfg, step)
    module.train()
    for batch in loader:
        if step >= cfg.optim.max_steps:
            break
        epoch = batch.pop("epoch", None)
        batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with accelerator.accumulate(module):
            losses = module(batch)
            accelerator.backward(losses["loss"])
            if accelerator.sync_gradients and cfg.optim.clip_grad > 0:
                accelerator.clip_grad_norm_(module.parameters(), cfg.optim.clip_grad)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        meter.add(losses, task.batch_size(batch), task.batch_tokens(batch))
        if not accelerator.sync_gradients:
            continue
        step += 1
        record = meter.record(step, epoch, scheduler.get_last_lr()[0])
        _log(accelerator, run_dir, record, cfg, step)
        progress.update(step, record)
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.optim.max_steps:
            _evaluate(accelerator, task, module, run_dir, step, state)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.optim.max_steps:
            _save_checkpoint(accelerator, run_dir, step, cfg.keep_checkpoints, state)
    progress.close()
    _check_ranks_agree(accelerator, accelerator.unwrap_model(module).model, run_dir, step)
    accelerator.wait_for_everyone()
    if (task.best_metric is None or state["best"] is None) and accelerator.is_main_process:
        _export(task, accelerator.unwrap_model(module).model, run_dir, {"step": step})
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(run_dir, step, state["evaluations"], state["best"])


# ---------------------------------------------------------------------------------- helpers


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = sorted(
        (p for p in (run_dir / "checkpoints").glob("step-*") if (p / "vlpipe_state.json").exists()),
        key=lambda p: int(p.name.split("-")[1]),
    )
    return ckpts[-1] if ckpts else None


def _start(accelerator, run_dir: Path, cfg: EngineConfig, resume: bool) -> dict[str, Any]:
    """Restore the latest checkpoint (resume) and prepare the run directory's logs."""
    state: dict[str, Any] = {"step": 0, "best": None, "evaluations": []}
    ckpt = latest_checkpoint(run_dir) if resume else None
    if resume and ckpt is None:
        log.warning("--resume: no checkpoint in %s, starting from scratch", run_dir)
    if ckpt is not None:
        accelerator.load_state(str(ckpt))
        state.update(json.loads((ckpt / "vlpipe_state.json").read_text()))
        state.setdefault("evaluations", [])
        accelerator.print(f"resumed from {ckpt} at step {state['step']}")
    metrics = run_dir / "metrics.jsonl"
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml", {"world_size": accelerator.num_processes})
        # Drop what was logged after the checkpoint we resume from (everything, from scratch).
        kept = [r for r in read_jsonl(metrics) if r["step"] <= state["step"]] if ckpt else []
        metrics.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
    # TensorBoard hparams take scalars only: lists and None go in as their text.
    hparams = {
        k: v if isinstance(v, int | float | str | bool) else str(v)
        for k, v in flat_dict(to_dict(cfg)).items()
    }
    accelerator.init_trackers("tensorboard", config=hparams)
    return state


class _Meter:
    """Sums the loss terms of the micro-batches of one optimizer step; NaN terms (e.g. an
    accuracy over no eligible rows) are left out of their mean rather than poisoning it."""

    def __init__(self, accelerator, n_params: int, cfg: EngineConfig) -> None:
        self.accelerator, self.n_params, self.cfg = accelerator, n_params, cfg
        self._reset()

    def _reset(self) -> None:
        self.t0, self.samples, self.tokens = time.perf_counter(), 0, 0
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, losses: dict[str, torch.Tensor], samples: int, tokens: int) -> None:
        self.samples += samples
        self.tokens += tokens
        for k, v in losses.items():
            value = float(v.detach())
            if not math.isnan(value):
                self.sums[k] = self.sums.get(k, 0.0) + value
                self.counts[k] = self.counts.get(k, 0) + 1
            else:
                self.sums.setdefault(k, 0.0)
                self.counts.setdefault(k, 0)

    def record(self, step: int, epoch: int | None, lr: float) -> dict[str, Any]:
        """This step's record, averaged over micro-batches and processes (one all-reduce)."""
        dt = max(time.perf_counter() - self.t0, 1e-9)
        names = sorted(self.sums)
        local = torch.tensor(
            [self.sums[k] for k in names]
            + [self.counts[k] for k in names]
            + [self.samples, self.tokens],
            dtype=torch.float64,
            device=self.accelerator.device,
        )
        total = self.accelerator.reduce(local, reduction="sum").tolist()
        n = len(names)
        record: dict[str, Any] = {
            k: total[i] / total[n + i] if total[n + i] else float("nan")
            for i, k in enumerate(names)
        }
        samples, tokens = total[-2], total[-1]
        record.update(step=step, lr=lr, samples_per_s=samples / dt)
        if epoch is not None:
            record["epoch"] = epoch
        if tokens:
            record["tokens_per_s"] = tokens / dt
            if self.cfg.peak_tflops > 0:
                # 6 N FLOPs per token for forward + backward (Kaplan et al.), attention ignored.
                world = self.accelerator.num_processes
                peak = self.cfg.peak_tflops * 1e12 * world
                record["mfu"] = 6 * self.n_params * tokens / dt / peak
        self._reset()
        return record


class _Progress:
    """A tqdm bar when stderr is a terminal; otherwise a log line every `log_every` steps, so
    a log file shows signs of life (step, losses, speed, time left)."""

    def __init__(self, accelerator, cfg: EngineConfig, step: int) -> None:
        self.cfg, self.t0, self.step0 = cfg, time.perf_counter(), step
        self.bar = None
        self.active = accelerator.is_main_process
        if self.active and cfg.progress and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.optim.max_steps, initial=step, unit="step", desc="train")

    def update(self, step: int, record: dict[str, Any]) -> None:
        if not self.active:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{record['loss']:.3f}")
            return
        if step % self.cfg.log_every and step != self.cfg.optim.max_steps:
            return
        rate = (time.perf_counter() - self.t0) / max(step - self.step0, 1)
        left = rate * (self.cfg.optim.max_steps - step)
        terms = " ".join(
            f"{k} {v:.3f}"
            for k, v in record.items()
            if k not in ("step", "epoch", "lr", "samples_per_s", "tokens_per_s", "mfu")
        )
        log.info(
            "step %d/%d  %s  lr %.2e  %.1f samples/s  %.0f s left",
            step,
            self.cfg.optim.max_steps,
            terms,
            record["lr"],
            record["samples_per_s"],
            left,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _log(accelerator, run_dir: Path, record: dict[str, Any], cfg: EngineConfig, step: int) -> None:
    if not accelerator.is_main_process:
        return
    append_jsonl(run_dir / "metrics.jsonl", record)
    if step % cfg.log_every == 0 or step == cfg.optim.max_steps:
        accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)


def _evaluate(accelerator, task: Task, module, run_dir: Path, step: int, state: dict) -> None:
    """Evaluate (every process, the same held-out data), log it, export a new best step."""
    model = accelerator.unwrap_model(module).model
    was_training = model.training
    model.eval()
    # A forked RNG: evaluation draws nothing from the stream training continues with.
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        metrics = task.evaluate(model, step)
    model.train(was_training)
    if not metrics:
        return
    record = {"step": step, **{f"eval/{k}": v for k, v in metrics.items()}}
    state["evaluations"].append(record)
    improved = False
    if task.best_metric is not None:
        value = metrics[task.best_metric]
        best = state["best"]
        sign = 1 if task.greater_is_better else -1
        improved = best is None or sign * value > sign * best[f"eval/{task.best_metric}"]
        if improved:
            state["best"] = record
    if accelerator.is_main_process:
        append_jsonl(run_dir / "metrics.jsonl", record)
        accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        log.info("eval at step %d: %s%s", step, shown, " (best so far)" if improved else "")
        if improved:
            _export(task, model, run_dir, record)
    accelerator.wait_for_everyone()


def param_checksum(model: nn.Module) -> list[float]:
    """[sum, sum of squares, sum weighted by position] over every parameter, in float64: equal
    on two processes only if they hold the same weights (up to a collision nobody plants)."""
    sums = torch.zeros(3, dtype=torch.float64)
    for p in model.parameters():
        x = p.detach().double().flatten().cpu()
        sums += torch.stack(
            [x.sum(), (x * x).sum(), (x * torch.arange(1, x.numel() + 1, dtype=x.dtype)).sum()]
        )
    return sums.tolist()


def _check_ranks_agree(accelerator, model: nn.Module, run_dir: Path, step: int) -> None:
    """Data parallel training keeps one model: every process must end with the same weights.

    Each process's `param_checksum` is gathered into run_dir/ranks.json; a difference (the
    model left out of `prepare`, a parameter outside DDP's buckets, a process that skipped an
    optimizer step) is logged as an error. FSDP shards the weights, so it is not compared."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return
    local = torch.tensor([param_checksum(model)], dtype=torch.float64, device=accelerator.device)
    every = accelerator.gather(local).cpu().tolist()  # [world, 3]
    identical = all(row == every[0] for row in every)
    if accelerator.is_main_process:
        atomic_write_json(
            run_dir / "ranks.json",
            {
                "step": step,
                "world_size": len(every),
                "param_checksums": every,
                "identical": identical,
            },
        )
        if not identical:
            log.error(
                "the %d processes hold DIFFERENT weights at step %d (checksums %s): gradients "
                "were not synchronised; the exported model is process 0's",
                len(every),
                step,
                every,
            )


def _export(task: Task, model: nn.Module, run_dir: Path, record: dict[str, Any]) -> None:
    """task.export into a temporary directory, renamed to run_dir/model (atomic)."""
    out = run_dir / "model"
    tmp = run_dir / "model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    task.export(model, tmp)
    atomic_write_json(tmp / "vlpipe_step.json", record)
    umask_modes(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def _save_checkpoint(accelerator, run_dir: Path, step: int, keep: int, state: dict) -> None:
    """save_state into a temporary directory, then rename: a crash never leaves half a ckpt."""
    ckpt_root = run_dir / "checkpoints"
    final = ckpt_root / f"step-{step}"
    tmp = ckpt_root / f".tmp-step-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(tmp / "vlpipe_state.json", {**state, "step": step})
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        ckpts = sorted(ckpt_root.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
        for old in ckpts[: max(0, len(ckpts) - keep)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
