"""Checkpoints through DeepSpeed's save_checkpoint/load_checkpoint that survive a killed process,
a power loss, a corrupt file and a change of cluster (issue 15).

Layout: `<output_dir>/checkpoints/step_00000100/` (DeepSpeed's model/optimizer files of every
ZeRO stage, the client state: step, epoch, sampler position, ...), `rng_rank00000.pt`, ...
written by each rank (python, numpy, torch and cuda RNG states), `manifest.json`, and
`<.../checkpoints>/latest`.

Save: DeepSpeed writes with save_latest=False; each rank writes its RNG file, fsyncs the files it
wrote and the directory, and reports their sizes and CRC-32s (checkpoint_manifest.py). Only when
every rank succeeded does rank 0 write the manifest and then move `latest` (temp file, fsync,
rename, directory fsync). When any rank failed (disk full, permissions, ...) the partial
directory is removed, `latest` keeps naming the previous checkpoint and every rank raises
CheckpointSaveError naming the checkpoint, the rank(s) and the cause. A rank that dies mid-save
leaves a directory without a manifest, which a resume skips and the next save removes.
Rotation keeps the newest `keep_last` checkpoints that verify (manifest present, every file at
its size), so the one a fallback needs is never removed for an incomplete one.

Load: checkpoint_select.choose verifies `latest` against its manifest on every rank, falls back
to the newest checkpoint that verifies (and points `latest` at it), and checkpoint_reshard
re-partitions ZeRO-1/2 optimizer state saved on another number of ranks.
"""
import os
import shutil

import numpy as np
import torch

from . import checkpoint_manifest as mf
from . import checkpoint_reshard, dist_watch, env
from .checkpoint_select import (CheckpointError, choose, gather_objects, has_any, read_latest,
                                step_dirs, step_of)

__all__ = ["Checkpointer", "CheckpointError", "CheckpointSaveError", "tag_for"]


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written; `latest` still names the previous one."""


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def _describe(error: BaseException) -> str:
    return f"{error.__class__.__name__}: {error}"


def _say(message: str) -> None:
    if env.rank() == 0:
        print(message, flush=True)


class Checkpointer:
    def __init__(self, output_dir: str, keep_last: int = 3):
        if keep_last < 1:
            raise ValueError(f"keep_last={keep_last} must be >= 1")
        self.dir = os.path.join(output_dir, "checkpoints")
        self.keep_last = keep_last

    def latest_tag(self):
        """The tag in `latest`, or None when there is no `latest` file."""
        tag, problem = read_latest(self.dir)
        if problem and os.path.exists(os.path.join(self.dir, "latest")):
            raise CheckpointError(f"{problem}; --resume falls back to the newest checkpoint "
                                  f"that verifies")
        return tag

    def has_checkpoints(self) -> bool:
        """A `latest` file or any step directory (complete or not) exists."""
        return has_any(self.dir)

    def tags(self) -> list:
        return step_dirs(self.dir)

    # ---- saving -------------------------------------------------------------------------
    def save(self, engine, step: int, client_state: dict) -> str:
        tag = tag_for(step)
        tag_dir = os.path.join(self.dir, tag)
        self._agree(tag, step, "preparing the directory",
                    lambda: self._prepare(tag_dir) if env.rank() == 0 else None)
        state = dict(client_state, step=step)
        error = None
        try:
            with dist_watch.waiting(f"saving checkpoint {tag}: DeepSpeed's files"):
                engine.save_checkpoint(self.dir, tag=tag, client_state=state, save_latest=False)
        except Exception as e:  # noqa: BLE001  (agreed across ranks below, then raised)
            error = e
            with dist_watch.waiting(f"saving checkpoint {tag}: after a failed save"):
                env.barrier()   # DeepSpeed's save ends in a barrier the other ranks wait in
        entries = self._agree(tag, step, "writing", lambda: self._finish_rank(tag_dir), error)
        meta = {"tag": tag, "step": step, "world_size": env.world_size(),
                "zero_stage": engine.zero_optimization_stage(),
                "micro_batch": engine.train_micro_batch_size_per_gpu(),
                "grad_accum": engine.gradient_accumulation_steps()}
        self._agree(tag, step, "writing the manifest and 'latest'",
                    lambda: self._commit(tag, [e for r in entries for e in r], meta)
                    if env.rank() == 0 else None)
        return tag

    def _agree(self, tag: str, step: int, what: str, fn, error: BaseException = None) -> list:
        """Run fn on every rank (unless it already failed); all ranks raise if any failed."""
        result = None
        with dist_watch.waiting(f"saving checkpoint {tag}: {what}"):
            if error is None:
                try:
                    result = fn()
                except Exception as e:  # noqa: BLE001
                    error = e
            results = gather_objects((result, None if error is None else _describe(error)))
            failed = [(r, msg) for r, (_, msg) in enumerate(results) if msg]
            if not failed:
                return [res for res, _ in results]
            tag_dir = os.path.join(self.dir, tag)
            if env.rank() == 0 and read_latest(self.dir)[0] != tag:
                shutil.rmtree(tag_dir, ignore_errors=True)
            env.barrier()
        causes = "; ".join(f"rank {r}: {msg}" for r, msg in failed)
        previous, _ = read_latest(self.dir)
        raise CheckpointSaveError(
            f"saving checkpoint {tag} (step {step}) to {tag_dir} failed while {what} ({causes}); "
            f"the partial directory was removed and 'latest' still names "
            f"{previous or 'no checkpoint'}") from error

    def _prepare(self, tag_dir: str) -> None:
        """Rank 0: a fresh, empty directory for the checkpoint (a leftover is removed)."""
        os.makedirs(self.dir, exist_ok=True)
        if os.path.lexists(tag_dir):
            shutil.rmtree(tag_dir)
        os.makedirs(tag_dir)
        mf.fsync_path(self.dir)

    def _finish_rank(self, tag_dir: str) -> list:
        """This rank's RNG file, then fsync + describe the files it wrote."""
        rank = env.rank()
        rng_path = os.path.join(tag_dir, f"rng_rank{rank:05d}.pt")
        torch.save(env.rng_state(), rng_path + ".tmp")
        os.replace(rng_path + ".tmp", rng_path)
        return mf.sync_own_files(tag_dir, rank)

    def _commit(self, tag: str, entries: list, meta: dict) -> None:
        mf.write_manifest(os.path.join(self.dir, tag), entries, meta)
        self._write_latest(tag)
        self._rotate(keep=tag)

    def _write_latest(self, tag: str) -> None:
        tmp = os.path.join(self.dir, "latest.tmp")
        with open(tmp, "w") as f:
            f.write(tag)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(self.dir, "latest"))
        mf.fsync_path(self.dir)

    def _rotate(self, keep: str) -> None:
        """Keep the newest keep_last verified checkpoints up to `keep`; remove older ones and
        any directory newer than `keep` (left by a save that did not complete)."""
        verified = 0
        for tag in reversed(self.tags()):
            path = os.path.join(self.dir, tag)
            if step_of(tag) > step_of(keep):
                shutil.rmtree(path, ignore_errors=True)
            elif verified >= self.keep_last:
                shutil.rmtree(path, ignore_errors=True)
            elif tag == keep or mf.quick_verify(path):
                verified += 1

    # ---- loading ------------------------------------------------------------------------
    def load(self, engine, tag=None):
        """Verify, fall back if needed, load model, optimizer, scheduler, loss scaler and this
        rank's RNG -> the client state; None when the run never completed a checkpoint."""
        with dist_watch.waiting(f"resuming: verifying and loading a checkpoint of {self.dir}"):
            return self._load(engine, tag)

    def _load(self, engine, tag):
        choice = choose(self.dir, tag)
        for note in choice.notes:
            _say(f"--resume: {note}")
        if choice.tag is None:
            return None
        if tag is None and choice.tag != read_latest(self.dir)[0] and env.rank() == 0:
            self._write_latest(choice.tag)
        files = len(choice.manifest["files"]) if choice.manifest else 0
        _say(f"--resume: loading checkpoint {choice.tag} from {self.dir}"
             + (f" (verified: {files} files)" if choice.manifest else " (unverified)"))
        path, state = self._load_engine(engine, choice)
        self._load_rng(choice)
        return state

    def _load_engine(self, engine, choice):
        saved = (choice.manifest or {}).get("world_size", env.world_size())
        try:
            if saved != env.world_size() and engine.zero_optimization():
                _say(f"--resume: {choice.tag} was saved on {saved} rank(s) (micro-batch "
                     f"{choice.manifest['micro_batch']} x accumulation "
                     f"{choice.manifest['grad_accum']}); re-sharding ZeRO state for "
                     f"{env.world_size()} rank(s) (micro-batch "
                     f"{engine.train_micro_batch_size_per_gpu()} x accumulation "
                     f"{engine.gradient_accumulation_steps()}): same global batches and order, "
                     f"the per-rank split changed")
                path, state = checkpoint_reshard.load_resharded(engine, self.dir, choice.tag,
                                                                saved)
            else:
                path, state = engine.load_checkpoint(self.dir, tag=choice.tag)
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"loading checkpoint {choice.tag} from {self.dir} on rank "
                                  f"{env.rank()} failed: {_describe(e)}") from e
        if path is None:
            raise CheckpointError(f"DeepSpeed could not load checkpoint {choice.tag} from "
                                  f"{self.dir}")
        return path, state

    def _load_rng(self, choice) -> None:
        rank = env.rank()
        rng_path = os.path.join(self.dir, choice.tag, f"rng_rank{rank:05d}.pt")
        if os.path.exists(rng_path):
            # weights_only: plain data, tensors and numpy's MT19937 key array (its rebuild
            # function under numpy 2's and 1's names, ndarray, dtype, the uint32 dtype class)
            rebuild = np.zeros(0).__reduce__()[0]
            with torch.serialization.safe_globals([
                    rebuild, (rebuild, "numpy._core.multiarray._reconstruct"),
                    (rebuild, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype,
                    type(np.dtype(np.uint32))]):
                state = torch.load(rng_path, weights_only=True)
            env.set_rng_state(state)
            return
        saved = (choice.manifest or {}).get("world_size")
        if saved is not None and rank >= saved:
            print(f"--resume: rank {rank}: checkpoint {choice.tag} holds RNG states of {saved} "
                  f"rank(s); this rank keeps its fresh seed (dropout differs from the run "
                  f"that saved it)", flush=True)
            return
        raise CheckpointError(f"checkpoint {choice.tag} has no RNG state for rank {rank} "
                              f"({rng_path})")
