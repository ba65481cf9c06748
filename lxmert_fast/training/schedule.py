"""Learning-rate schedule of LXMERT's BertAdam (src/lxrt/optimization.py, `warmup_linear`):
linear warm-up over the first `warmup_ratio` of the planned steps, then linear decay to zero at
the planned total. The multiplier depends only on (step, planned total), so a run relaunched with
the same command and --resume continues the same curve (the LambdaLR state, i.e. the step count,
is saved by DeepSpeed with the checkpoint).
"""
import math

import torch


class WarmupLinear:
    """Picklable LR multiplier: step/warmup, then (total - step)/(total - warmup), floored at 0.

    As in the original, the multiplier at step 0 is 0 (the first update has lr 0).
    """

    def __init__(self, total_steps: int, warmup_ratio: float = 0.05):
        if total_steps < 1:
            raise ValueError(f"total_steps={total_steps} must be >= 1")
        if not 0.0 <= warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio={warmup_ratio} must be in [0, 1)")
        self.total_steps = int(total_steps)
        self.warmup_steps = int(math.ceil(warmup_ratio * total_steps))

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / self.warmup_steps
        return max(0.0, (self.total_steps - step) / max(1, self.total_steps - self.warmup_steps))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int,
                    warmup_ratio: float = 0.05) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR that DeepSpeed steps after every applied optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupLinear(total_steps, warmup_ratio))
