"""Distributed, resumable batch sampling.

Each epoch is a permutation of the examples drawn from a generator seeded with (seed, epoch)
alone; global batch `s` of the run is the `s % steps_per_epoch`-th slice of epoch
`s // steps_per_epoch`'s permutation (the incomplete tail is dropped, as DeepSpeed's
dataloader_drop_last). A global batch is cut into world_size x accumulation micro-batches; rank r
takes micro-batch `m * world_size + r` at accumulation step m. The position is therefore a pure
function of the optimizer step, is the same on every rank, survives resume exactly, and the
union of what the ranks read at one step does not depend on the world size / accumulation split.
"""
from dataclasses import dataclass
from typing import Iterator, List

import numpy as np


@dataclass(frozen=True)
class MicroBatch:
    step: int          # optimizer step this micro-batch belongs to (0-based)
    epoch: int
    micro: int         # accumulation index within the step
    indices: List[int]


class ResumableBatchSampler:
    """Per-rank micro-batches for optimizer steps start_step, start_step+1, ..., end_step-1."""

    def __init__(self, num_examples: int, micro_batch: int, grad_accum: int, world_size: int,
                 rank: int, seed: int = 0):
        self.num_examples, self.micro_batch, self.grad_accum = num_examples, micro_batch, grad_accum
        self.world_size, self.rank, self.seed = world_size, rank, seed
        self.global_batch = micro_batch * grad_accum * world_size
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is not in [0, world_size={world_size})")
        if num_examples < self.global_batch:
            raise ValueError(f"the dataset has {num_examples} examples, fewer than one global "
                             f"batch of {self.global_batch} (train_batch_size)")
        self.steps_per_epoch = num_examples // self.global_batch
        self._perm_epoch, self._perm = -1, None

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm, self._perm_epoch = rng.permutation(self.num_examples), epoch
        return self._perm

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def global_indices(self, step: int) -> np.ndarray:
        """Every example of optimizer step `step`, over all ranks and micro-batches."""
        epoch, offset = divmod(step, self.steps_per_epoch)
        return self.permutation(epoch)[offset * self.global_batch:(offset + 1) * self.global_batch]

    def micro_batches(self, step: int) -> List[MicroBatch]:
        """This rank's micro-batches of optimizer step `step`."""
        epoch = step // self.steps_per_epoch
        batch = self.global_indices(step)
        out = []
        for m in range(self.grad_accum):
            chunk = m * self.world_size + self.rank
            idx = batch[chunk * self.micro_batch:(chunk + 1) * self.micro_batch]
            out.append(MicroBatch(step, epoch, m, [int(i) for i in idx]))
        return out

    def iter_from(self, start_step: int, end_step: int) -> Iterator[MicroBatch]:
        for step in range(start_step, end_step):
            yield from self.micro_batches(step)

    def state_dict(self, step: int) -> dict:
        """The position after `step` optimizer steps (what a checkpoint at `step` resumes from)."""
        return {"next_step": step, "epoch": self.epoch_of(step),
                "step_in_epoch": step % self.steps_per_epoch, "seed": self.seed,
                "num_examples": self.num_examples, "global_batch": self.global_batch}

    def load_state_dict(self, state: dict) -> int:
        """Check a checkpoint's sampler state against this run; return the step to resume at."""
        for key in ("seed", "num_examples", "global_batch"):
            if state[key] != getattr(self, key):
                raise ValueError(f"checkpoint sampler {key}={state[key]} differs from this run's "
                                 f"{key}={getattr(self, key)}: resume needs the same data, seed "
                                 f"and train_batch_size")
        return int(state["next_step"])


def eval_shards(num_examples: int, batch_size: int, world_size: int, rank: int):
    """Validation batches for `rank`: every rank gets the same number of batches (ZeRO-3 runs
    collectives inside forward); padding entries repeat index 0 and are flagged invalid.

    Yields (indices, valid) with valid a list of bools.
    """
    per_rank = -(-num_examples // world_size)
    mine = list(range(rank * per_rank, min(num_examples, (rank + 1) * per_rank)))
    mine += [None] * (per_rank - len(mine))
    for start in range(0, per_rank, batch_size):
        chunk = mine[start:start + batch_size]
        yield [0 if i is None else i for i in chunk], [i is not None for i in chunk]
