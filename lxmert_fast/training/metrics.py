"""Run metrics: `metrics.jsonl` (one JSON line per optimizer step, plus eval lines), TensorBoard
scalars and a tqdm progress bar, all on rank 0.

Train lines: {"step", "epoch", "loss", "losses": {task: value}, "lr", "grad_norm",
"samples_per_s", "skipped_steps"}; eval lines: {"step", "eval": {name: value}}. On --resume the
file keeps only the lines up to the resumed step (a killed run may have logged further) and the
TensorBoard writer purges later events, so both read as one uninterrupted run.
"""
import json
import math
import os
import time


def read_metrics(path: str) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def train_losses(path: str) -> dict:
    """step -> total loss of the training lines of a metrics.jsonl."""
    return {r["step"]: r["loss"] for r in read_metrics(path) if "loss" in r}


def _finite(value):
    return value if value is None or math.isfinite(value) else str(value)


class MetricsLogger:
    def __init__(self, output_dir: str, rank: int, start_step: int, total_steps: int,
                 tensorboard: bool = True, progress: bool = True, eval_format=None):
        self.enabled = rank == 0
        self.eval_format = eval_format or (
            lambda results: "  ".join(f"{k} {v:.4f}" for k, v in results.items()))
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self.writer = self.bar = None
        self.print_every = max(1, total_steps // 10)
        self._last_time = time.perf_counter()
        if not self.enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
        self._truncate(start_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(output_dir, "tensorboard"),
                                        purge_step=start_step + 1 if start_step else None)
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                            dynamic_ncols=True)

    def _truncate(self, start_step: int) -> None:
        if not start_step or not os.path.exists(self.path):
            open(self.path, "w").close()
            return
        kept = [r for r in read_metrics(self.path) if r["step"] <= start_step]
        with open(self.path + ".tmp", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(self.path + ".tmp", self.path)

    def _write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def log_step(self, step: int, epoch: int, loss: float, losses: dict, lr: float,
                 grad_norm, samples: int, skipped_steps: int, seconds: float = None) -> None:
        """Log optimizer step `step` (1-based: the number of steps done); `seconds` it took
        (default: the time since the previous call; the loop logs several steps at once)."""
        now = time.perf_counter()
        rate = samples / max(now - self._last_time if seconds is None else seconds, 1e-9)
        self._last_time = now
        if not self.enabled:
            return
        record = {"step": step, "epoch": epoch, "loss": _finite(loss),
                  "losses": {k: _finite(v) for k, v in losses.items()}, "lr": lr,
                  "grad_norm": _finite(grad_norm), "samples_per_s": round(rate, 3),
                  "skipped_steps": skipped_steps}
        self._write(record)
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)
            for name, value in losses.items():
                self.writer.add_scalar(f"train/loss_{name}", value, step)
            self.writer.add_scalar("train/lr", lr, step)
            if grad_norm is not None:
                self.writer.add_scalar("train/grad_norm", grad_norm, step)
            self.writer.add_scalar("train/samples_per_s", rate, step)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
        if step % self.print_every == 0:
            self.print(f"step {step}: loss {loss:.4f} (" + " ".join(
                f"{k} {v:.4f}" for k, v in losses.items()) + f") lr {lr:.2e} {rate:.1f} samples/s")

    def log_eval(self, step: int, results: dict) -> None:
        if not self.enabled:
            return
        self._write({"step": step, "eval": results})
        if self.writer is not None:
            for name, value in results.items():
                self.writer.add_scalar(f"eval/{name}", value, step)
        self.print(f"eval @ step {step}: " + self.eval_format(results))

    def print(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def reset_timer(self) -> None:
        self._last_time = time.perf_counter()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
