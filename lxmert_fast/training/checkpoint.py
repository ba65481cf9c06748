"""Checkpoints through DeepSpeed's save_checkpoint/load_checkpoint, made crash-safe.

Layout: `<output_dir>/checkpoints/step_00000100/` (DeepSpeed's model/optimizer files of every
ZeRO stage, the client state: step, epoch, sampler position, ...), plus `rng_rank00000.pt`, ...
written by each rank (python, numpy, torch and cuda RNG states), and `<.../checkpoints>/latest`.

DeepSpeed's own `latest` is written by rank 0 before the final barrier, i.e. possibly before the
other ranks' ZeRO shards are on disk. So we save with save_latest=False, wait for every rank to
finish (checkpoint + RNG file), and only then rank 0 replaces `latest` atomically (write to a
temporary file, fsync, os.replace). A run killed at any moment therefore resumes from the last
complete checkpoint. After `latest` moves, checkpoints beyond the newest `keep_last` are removed.
"""
import os
import re
import shutil

import torch

from . import env

TAG_RE = re.compile(r"^step_(\d+)$")


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


class Checkpointer:
    def __init__(self, output_dir: str, keep_last: int = 3):
        if keep_last < 1:
            raise ValueError(f"keep_last={keep_last} must be >= 1")
        self.dir = os.path.join(output_dir, "checkpoints")
        self.keep_last = keep_last

    def latest_tag(self):
        """The tag in `latest`, or None when there is no complete checkpoint."""
        path = os.path.join(self.dir, "latest")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            tag = f.read().strip()
        if not TAG_RE.match(tag) or not os.path.isdir(os.path.join(self.dir, tag)):
            raise RuntimeError(f"{path} names {tag!r}, which is not a checkpoint in {self.dir}")
        return tag

    def save(self, engine, step: int, client_state: dict) -> str:
        tag = tag_for(step)
        state = dict(client_state, step=step)
        engine.save_checkpoint(self.dir, tag=tag, client_state=state, save_latest=False)
        rank = env.rank()
        rng_path = os.path.join(self.dir, tag, f"rng_rank{rank:05d}.pt")
        torch.save(env.rng_state(), rng_path + ".tmp")
        os.replace(rng_path + ".tmp", rng_path)
        env.barrier()  # every rank's shards and RNG file are on disk
        if rank == 0:
            self._write_latest(tag)
            self._rotate(keep=tag)
        env.barrier()
        return tag

    def _write_latest(self, tag: str) -> None:
        tmp = os.path.join(self.dir, "latest.tmp")
        with open(tmp, "w") as f:
            f.write(tag)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(self.dir, "latest"))

    def tags(self) -> list:
        if not os.path.isdir(self.dir):
            return []
        found = [t for t in os.listdir(self.dir) if TAG_RE.match(t)]
        return sorted(found, key=lambda t: int(TAG_RE.match(t).group(1)))

    def _rotate(self, keep: str) -> None:
        tags = [t for t in self.tags() if int(TAG_RE.match(t).group(1)) <=
                int(TAG_RE.match(keep).group(1))]
        for old in tags[:-self.keep_last]:
            shutil.rmtree(os.path.join(self.dir, old), ignore_errors=True)
        for newer in (t for t in self.tags() if t not in tags):
            # left by a run that was killed after `keep` and then resumed from an older step
            shutil.rmtree(os.path.join(self.dir, newer), ignore_errors=True)

    def load(self, engine, tag=None) -> dict:
        """Load model, optimizer, scheduler, loss scaler and this rank's RNG -> client state."""
        tag = tag or self.latest_tag()
        if tag is None:
            raise FileNotFoundError(f"--resume: no complete checkpoint in {self.dir} "
                                    f"(no 'latest' file)")
        path, state = engine.load_checkpoint(self.dir, tag=tag)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {tag} from {self.dir}")
        rank = env.rank()
        rng_path = os.path.join(self.dir, tag, f"rng_rank{rank:05d}.pt")
        if not os.path.exists(rng_path):
            raise FileNotFoundError(f"checkpoint {tag} has no RNG state for rank {rank} "
                                    f"({rng_path}); was it written with another world size?")
        env.set_rng_state(torch.load(rng_path, weights_only=False))
        return state
