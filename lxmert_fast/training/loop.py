"""The task-agnostic DeepSpeed training loop (pretraining and fine-tuning share it).

The task supplies `make_batch(MicroBatch) -> dict` (runs in DataLoader workers; deterministic in
the micro-batch alone) and `forward(engine, batch) -> (loss, {task: loss}, {task: present})`
(training/step.py: `present` is a 0-d device tensor, 1 where the micro-batch has labels for the
task). Per micro-batch the loss row [loss, (task loss, present)...] stays on the device: the
forward and backward never wait for the device. Every `log_every` steps, and before a checkpoint,
an evaluation or the end, the rows of the pending steps are gathered from every rank (one
all_gather) and read by the host once; the loop then stops with an error naming the step and
rank(s) on a NaN/inf loss (before any checkpoint holds it) and logs one line per step. The data
position is a function of the step (sampler.py), so resuming is starting the loop at the
checkpoint's step.
"""
import math
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch

from . import dist_watch, env
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
    log_every: int = 1            # read the losses on the host every N steps (one line each)

    def __post_init__(self):
        for name in ("total_steps", "save_steps", "log_every"):
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


class _Steps(torch.utils.data.Sampler):
    """This rank's micro-batches of steps [start, end), computed as the loader asks for them:
    nothing per step of the run is held in memory."""

    def __init__(self, sampler: ResumableBatchSampler, start: int, end: int):
        self.sampler, self.start, self.end = sampler, start, end

    def __iter__(self):
        return self.sampler.iter_from(self.start, self.end)

    def __len__(self) -> int:
        return (self.end - self.start) * self.sampler.grad_accum


def batches(sampler: ResumableBatchSampler, make_batch, start: int, end: int, num_workers: int,
            pin_memory: bool = False):
    """Iterator of (MicroBatch, batch) for steps [start, end) of this rank, in order; pinned
    host memory when the batches go to a GPU (non-blocking copies)."""
    # A private generator: creating the iterator must not draw from the global torch RNG (it
    # is part of the checkpointed state: dropout after a resume must continue unchanged).
    generator = torch.Generator().manual_seed(sampler.seed * 1_000_003 + sampler.rank)
    return iter(torch.utils.data.DataLoader(
        _MicroBatchData(make_batch), sampler=_Steps(sampler, start, end), batch_size=None,
        num_workers=num_workers, persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers else None, generator=generator,
        pin_memory=pin_memory))


def _grad_norm_before_step(engine):
    """Stage-0 fp32 engines clip without recording the norm: compute it (grads are reduced); a
    device tensor, read at the next flush."""
    if engine.zero_optimization() or engine.fp16_enabled() or engine.bfloat16_enabled():
        return None
    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads).detach() if grads else None


def loss_row(loss, losses: dict, present: dict, task_names: Sequence[str]) -> torch.Tensor:
    """(1 + 2 * tasks,) float64 on the loss's device: [loss, (task loss x present, present)...];
    a task missing from `losses` is (0, 0), one missing from `present` counts as present."""
    zero = loss.detach().new_zeros((), dtype=torch.float64)
    values = [loss.detach().double()]
    for name in task_names:
        if name not in losses:
            values += [zero, zero]
        elif name not in present:
            values += [losses[name].detach().double(), zero + 1.0]
        else:
            flag = present[name].to(torch.float64)
            values += [losses[name].detach().double() * flag, flag]
    return torch.stack(values)


def micro_step(engine, forward, batch, task_names: Sequence[str]) -> torch.Tensor:
    """Forward and backward of one micro-batch (already on the device) -> its loss row, on the
    device: what train.py runs, and what tests/training/test_step_sync.py checks for syncs."""
    loss, losses, present = forward(engine, batch)
    engine.backward(loss)
    return loss_row(loss, losses, present, task_names)


@dataclass
class _Pending:
    step: int                  # 1-based
    epoch: int
    row: torch.Tensor          # (1 + 2 * tasks,) summed over the micro-batches, on the device
    lr: float
    grad_norm: object          # None, float or device tensor
    skipped_steps: int


def _reduce(rows: torch.Tensor, micro: int, task_names: Sequence[str], steps: Sequence[int]):
    """rows: (steps, 1 + 2*tasks) this rank's sums -> per step (loss, {task: mean}) over ranks."""
    gathered = env.all_gather_rows(rows.reshape(-1)).cpu()        # one read by the host
    gathered = gathered.reshape(gathered.shape[0], len(steps), -1)   # (world, steps, cols)
    count = float(gathered.shape[0] * micro)
    out = []
    for i, step in enumerate(steps):
        per_rank = gathered[:, i]
        bad = [r for r in range(per_rank.shape[0]) if not math.isfinite(per_rank[r].sum().item())]
        if bad:
            raise NonFiniteLossError(f"non-finite loss at step {step} on rank(s) {bad}: "
                                     f"{per_rank[bad[0], 0].item()}")
        loss = (per_rank[:, 0].sum() / count).item()
        losses = {}
        for j, name in enumerate(task_names):
            present = per_rank[:, 2 + 2 * j].sum().item()
            if present:
                losses[name] = per_rank[:, 1 + 2 * j].sum().item() / present
        out.append((loss, losses))
    return out


class _Logger:
    """The pending steps' rows, flushed to the metrics log (see the module docstring)."""

    def __init__(self, metrics, task_names, micro: int, samples: int):
        self.metrics, self.task_names, self.micro, self.samples = metrics, task_names, micro, \
            samples
        self.pending: List[_Pending] = []
        self.reset_timer()

    def reset_timer(self):
        self.since = time.perf_counter()

    def flush(self):
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        steps = [p.step for p in pending]
        with dist_watch.waiting(f"gathering the losses of steps {steps[0]}-{steps[-1]}"):
            reduced = _reduce(torch.stack([p.row for p in pending]), self.micro, self.task_names,
                              steps)
        now = time.perf_counter()
        seconds = (now - self.since) / len(pending)
        self.since = now
        for p, (loss, losses) in zip(pending, reduced):
            norm = None if p.grad_norm is None else float(p.grad_norm)
            self.metrics.log_step(p.step, p.epoch, loss, losses, p.lr, norm, self.samples,
                                  p.skipped_steps, seconds=seconds)


def train(engine, sampler: ResumableBatchSampler, make_batch, forward, plan: Plan,
          task_names: Sequence[str], checkpointer, metrics, start_step: int = 0,
          evaluate: Callable = None, client_state: Callable[[int], dict] = lambda s: {}) -> int:
    """Run optimizer steps start_step..; return the number of steps done when it stopped."""
    end = plan.stop_at or plan.total_steps
    device, dtype = engine.device, engine_dtype(engine)
    data = batches(sampler, make_batch, start_step, end, plan.num_workers,
                   pin_memory=device.type == "cuda")
    engine.train()
    log = _Logger(metrics, task_names, sampler.grad_accum, sampler.global_batch)
    for step in range(start_step, end):
        lr = engine.get_lr()[0]
        rows = []
        dist_watch.set_step(step + 1)
        for m in range(sampler.grad_accum):
            mb, batch = next(data)
            assert mb.step == step and mb.micro == m, (mb, step, m)
            with dist_watch.waiting(f"training step {step + 1}, micro-batch {m} (forward, "
                                    f"backward, gradient reduction, optimizer step)"):
                rows.append(micro_step(engine, forward, to_device(batch, device, dtype),
                                       task_names))
                if engine.is_gradient_accumulation_boundary():
                    grad_norm = _grad_norm_before_step(engine)
                engine.step()
        if grad_norm is None:
            grad_norm = engine.get_global_grad_norm()
        if isinstance(grad_norm, torch.Tensor):   # a copy: the engine may reuse its tensor
            grad_norm = grad_norm.detach().clone()
        done = step + 1
        log.pending.append(_Pending(done, mb.epoch, torch.stack(rows).sum(0), lr, grad_norm,
                                    engine.skipped_steps))
        save = done % plan.save_steps == 0 or done == end
        run_eval = evaluate is not None and ((plan.eval_steps and done % plan.eval_steps == 0)
                                             or done == plan.total_steps)
        if save or run_eval or done % plan.log_every == 0:
            log.flush()       # a NaN stops the run here, before a checkpoint can hold it
        if save:
            state = dict(client_state(done), sampler=sampler.state_dict(done),
                         epoch=sampler.epoch_of(done))
            checkpointer.save(engine, done, state)
        if run_eval:
            engine.eval()
            with dist_watch.waiting(f"evaluation at step {done}"):
                result = evaluate(engine)
            metrics.log_eval(done, result)
            engine.train()
            log.reset_timer()
    log.flush()
    return end
