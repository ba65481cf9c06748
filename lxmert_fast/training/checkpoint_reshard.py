"""Resume a ZeRO-1/2 checkpoint on another number of ranks (issue 15), through DeepSpeed's
universal checkpoint (Lian et al., "Universal Checkpointing", arXiv 2406.18820).

ZeRO-1/2 save the fp32 master weights and the AdamW moments as one flat partition per rank, cut
for the world size of the run; DeepSpeed refuses to load them on another one ("Automatic
adjustment of ZeRO's optimizer state partitioning ... is not currently supported"). Rank 0
converts the verified checkpoint with `deepspeed.checkpoint.ds_to_universal` (every parameter's
fp32 value, exp_avg, exp_avg_sq and step as whole tensors) into `<step dir>/universal.tmp`,
renamed to `universal` when complete; every rank then loads it with DeepSpeed's universal loader
(config `checkpoint.load_universal`, switched on for this one call) and re-partitions for the
current world size; the converted copy is removed afterwards. The model states file (module
weights, LR schedule, client state) is copied unchanged. ZeRO-3 is not converted here.
"""
import argparse
import contextlib
import os
import shutil

from . import dist_watch, env
from .checkpoint_select import CheckpointError, gather_objects

UNIVERSAL = "universal"


def _convert(tag_dir: str, out: str) -> None:
    from deepspeed.checkpoint import ds_to_universal

    tmp = out + ".tmp"
    for stale in (tmp, out):
        shutil.rmtree(stale, ignore_errors=True)
    args = argparse.Namespace(input_folder=tag_dir, output_folder=tmp, num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True,
                              inject_missing_state=True)
    ds_to_universal.main(args)
    os.rename(tmp, out)


def _on_rank0(what: str, fn) -> None:
    """Run fn on rank 0; every rank raises CheckpointError naming `what` if it failed."""
    error = None
    with dist_watch.waiting(f"{what} (rank 0; the other ranks wait)"):
        if env.rank() == 0:
            try:
                fn()
            except Exception as e:  # noqa: BLE001  (reported on every rank, with the cause)
                error = f"{e.__class__.__name__}: {e}"
        error = gather_objects(error)[0]
    if error:
        raise CheckpointError(f"{what} failed on rank 0: {error}")


@contextlib.contextmanager
def _universal_loading(engine):
    """DeepSpeed reads `checkpoint.load_universal` from its config at load time."""
    config = engine._config
    before = config.load_universal_checkpoint
    config.load_universal_checkpoint = True
    try:
        yield
    finally:
        config.load_universal_checkpoint = before


def load_resharded(engine, ckpt_dir: str, tag: str, saved_world: int):
    """engine.load_checkpoint of `tag` saved on `saved_world` ranks -> (path, client state)."""
    stage = engine.zero_optimization_stage()
    if stage not in (1, 2):
        raise CheckpointError(f"checkpoint {tag} in {ckpt_dir} was saved on {saved_world} rank(s), "
                              f"this run has {env.world_size()}: re-sharding is supported for "
                              f"ZeRO-1/2, this run uses ZeRO-{stage}; resume on {saved_world} "
                              f"rank(s)")
    tag_dir = os.path.join(ckpt_dir, tag)
    out = os.path.join(tag_dir, UNIVERSAL)
    _on_rank0(f"converting {tag_dir} to a universal checkpoint in {out}",
              lambda: _convert(tag_dir, out))
    try:
        with _universal_loading(engine):
            path, state = engine.load_checkpoint(tag_dir, tag=UNIVERSAL)
    finally:
        env.barrier()
        if env.rank() == 0:
            shutil.rmtree(out, ignore_errors=True)
    return path, state
