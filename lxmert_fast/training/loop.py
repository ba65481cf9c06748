"""The task-agnostic DeepSpeed training loop (pretraining and fine-tuning share it).

The task supplies `make_batch(MicroBatch) -> dict` (runs in DataLoader workers; deterministic in
the micro-batch alone) and `forward(engine, batch) -> (loss, {task: loss})`. Per optimizer step
the loop runs the accumulation micro-batches, gathers [loss, per-task losses] from every rank
(one all_gather), stops with an error naming the step and rank(s) on a NaN/inf loss, logs the
rank-averaged losses, and saves / evaluates / stops on schedule. The data position is a function
of the step (sampler.py), so resuming is starting the loop at the checkpoint's step.
"""
import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from . import env
from .engine import engine_dtype, to_device
from .sampler import MicroBatch, ResumableBatchSampler


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class Plan:
    total_steps: int              # planned steps (defines the LR schedule)
    save_steps: int
    eval_steps: int = 0           # 0: evaluate only at the end
    stop_at: Optional[int] = None  # stop (after a checkpoint) at this step, schedule unchanged
    num_workers: int = 0

    def __post_init__(self):
        for name in ("total_steps", "save_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.eval_steps < 0:
            raise ValueError(f"eval_steps={self.eval_steps} must be >= 0")
        if self.stop_at is not None and not 1 <= self.stop_at <= self.total_steps:
            raise ValueError(f"stop_at={self.stop_at} must be in "
                             f"[1, total_steps={self.total_steps}]")


class _MicroBatchData(torch.utils.data.Dataset):
    """Dataset keyed by MicroBatch: DataLoader workers build whole batches."""

    def __init__(self, make_batch: Callable[[MicroBatch], dict]):
        self.make_batch = make_batch

    def __getitem__(self, mb: MicroBatch):
        return mb, self.make_batch(mb)


def batches(sampler: ResumableBatchSampler, make_batch, start: int, end: int, num_workers: int):
    """Iterator of (MicroBatch, batch) for steps [start, end) of this rank, in order."""
    keys = list(sampler.iter_from(start, end))
    # A private generator: creating the iterator must not draw from the global torch RNG (it
    # is part of the checkpointed state: dropout after a resume must continue unchanged).
    generator = torch.Generator().manual_seed(sampler.seed * 1_000_003 + sampler.rank)
    return iter(torch.utils.data.DataLoader(
        _MicroBatchData(make_batch), sampler=keys, batch_size=None, num_workers=num_workers,
        persistent_workers=False, prefetch_factor=4 if num_workers else None,
        generator=generator))


def _grad_norm_before_step(engine):
    """Stage-0 fp32 engines clip without recording the norm: compute it (grads are reduced)."""
    if engine.zero_optimization() or engine.fp16_enabled() or engine.bfloat16_enabled():
        return None
    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else None


def _reduce(values: torch.Tensor, task_names: Sequence[str], step: int):
    """values: (micro, 1 + 2*tasks) rows [loss, (task_loss, present)...] -> means over ranks."""
    rows = env.all_gather_rows(values.sum(0))                    # (world, 1 + 2*tasks)
    counts = env.all_gather_rows(torch.tensor([float(values.shape[0])], dtype=torch.float64))
    bad = [r for r in range(rows.shape[0]) if not math.isfinite(rows[r].sum().item())]
    if bad:
        raise NonFiniteLossError(f"non-finite loss at step {step + 1} on rank(s) {bad}: "
                                 f"{rows[bad[0], 0].item()}")
    loss = (rows[:, 0].sum() / counts.sum()).item()
    losses = {}
    for i, name in enumerate(task_names):
        present = rows[:, 2 + 2 * i].sum().item()
        if present:
            losses[name] = rows[:, 1 + 2 * i].sum().item() / present
    return loss, losses


def train(engine, sampler: ResumableBatchSampler, make_batch, forward, plan: Plan,
          task_names: Sequence[str], checkpointer, metrics, start_step: int = 0,
          evaluate: Callable = None, client_state: Callable[[int], dict] = lambda s: {}) -> int:
    """Run optimizer steps start_step..; return the number of steps done when it stopped."""
    end = plan.stop_at or plan.total_steps
    device, dtype = engine.device, engine_dtype(engine)
    data = batches(sampler, make_batch, start_step, end, plan.num_workers)
    engine.train()
    metrics.reset_timer()
    for step in range(start_step, end):
        lr = engine.get_lr()[0]
        rows = torch.zeros(sampler.grad_accum, 1 + 2 * len(task_names), dtype=torch.float64)
        for m in range(sampler.grad_accum):
            mb, batch = next(data)
            assert mb.step == step and mb.micro == m, (mb, step, m)
            loss, losses = forward(engine, to_device(batch, device, dtype))
            engine.backward(loss)
            rows[m, 0] = loss.detach().double().item()
            for i, name in enumerate(task_names):
                if name in losses:
                    rows[m, 1 + 2 * i], rows[m, 2 + 2 * i] = losses[name].detach().item(), 1.0
            if engine.is_gradient_accumulation_boundary():
                grad_norm = _grad_norm_before_step(engine)
            engine.step()
        loss, losses = _reduce(rows, task_names, step)
        grad_norm = grad_norm if grad_norm is not None else engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else None
        metrics.log_step(step + 1, mb.epoch, loss, losses, lr, grad_norm, sampler.global_batch,
                         engine.skipped_steps)
        done = step + 1
        if done % plan.save_steps == 0 or done == end:
            state = dict(client_state(done), sampler=sampler.state_dict(done),
                         epoch=sampler.epoch_of(done))
            checkpointer.save(engine, done, state)
        if evaluate is not None and ((plan.eval_steps and done % plan.eval_steps == 0)
                                     or done == plan.total_steps):
            engine.eval()
            metrics.log_eval(done, evaluate(engine))
            engine.train()
            metrics.reset_timer()
    return end
