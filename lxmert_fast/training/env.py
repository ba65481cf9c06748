"""Process environment for DeepSpeed training: accelerator choice, single-process defaults,
process-group start, per-rank seeding and the RNG state that a checkpoint carries.

`setup_environment()` must run before `deepspeed` is imported: DeepSpeed picks its accelerator
at import time, so on a machine without CUDA we select its CPU accelerator (`DS_ACCELERATOR=cpu`,
gloo collectives) unless the user chose one. A run started as plain `python train.py` (no
launcher) gets the rank variables a launcher would set (RANK=0, WORLD_SIZE=1, a free port).
"""
import os
import random
import socket

import numpy as np
import torch

from . import dist_watch

_RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_environment() -> dict:
    """Set the DeepSpeed accelerator, launcher-less rank defaults and CPU thread count.

    Returns the resulting {rank, world_size, local_rank, device} description.
    """
    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        if "MASTER_PORT" not in os.environ:
            os.environ.update(MASTER_PORT=str(_free_port()), LXMERT_FAST_OWN_PORT="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        value = os.environ.get(name, "0")
        if not value.isdigit():
            raise ValueError(f"environment variable {name}={value!r} is not a non-negative integer")
    info = {"rank": int(os.environ["RANK"]), "world_size": int(os.environ.get("WORLD_SIZE", "1")),
            "local_rank": int(os.environ.get("LOCAL_RANK", "0")),
            "device": "cpu"}
    if on_gpu and os.environ.get("DS_ACCELERATOR", "cuda") != "cpu":
        info["device"] = "cuda"
    if info["rank"] >= info["world_size"]:
        raise ValueError(f"RANK={info['rank']} is not below WORLD_SIZE={info['world_size']}")
    if info["device"] == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", info["world_size"]))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))
    return info


def init_distributed(timeout_s: float = dist_watch.DEFAULT_TIMEOUT_S) -> None:
    """Start the process group (nccl on GPU, gloo on DeepSpeed's CPU accelerator) and arm the
    watchdog that stops a rank waiting on the others longer than `timeout_s` (dist_watch.py)."""
    import deepspeed

    for attempt in range(3):
        try:
            deepspeed.init_distributed(timeout=dist_watch.process_group_timeout(timeout_s))
            break
        except RuntimeError as e:   # a one-process run's own port, taken since it was chosen
            if os.environ.get("LXMERT_FAST_OWN_PORT") != "1" or "EADDRINUSE" not in str(e) \
                    or attempt == 2:
                raise
            os.environ["MASTER_PORT"] = str(_free_port())
    dist_watch.configure(timeout_s, rank())
    _unlink_shm_buffer()


# DeepSpeed's CPU accelerator maps a 66 MB shared-memory buffer per rank for its allreduce
# (ops/csrc/cpu/comm/shm.cpp, "deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>") and never
# unlinks it: every multi-rank CPU run left its buffers in /dev/shm, which is RAM (316 of them,
# 21 GB, after one session of tests here).
SHM_BUFFER = "/dev/shm/deepspeed_allreduce_buffer_{uid}_{addr}_{port}_{rank}"


def _unlink_shm_buffer() -> None:
    """Unlink this rank's DeepSpeed CPU allreduce buffer once every rank has mapped every
    buffer (the barrier after start-up): the mappings stay valid, and the memory is freed when
    the processes end, however they end."""
    path = SHM_BUFFER.format(uid=os.getuid(), addr=os.environ.get("MASTER_ADDR"),
                             port=os.environ.get("MASTER_PORT"), rank=rank())
    if not os.path.exists(path):
        return
    with dist_watch.waiting("start-up: every rank maps the CPU allreduce buffers"):
        barrier()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    if torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") != "cpu":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def shutdown(ok: bool) -> None:
    """End the process group: after a run that ended well, once every rank got there (a rank
    that destroys its group while another still communicates can abort in gloo's threads);
    after a failure, not at all (the other ranks may be inside a collective: the launcher ends
    them)."""
    if not torch.distributed.is_initialized() or not ok:
        return
    with dist_watch.waiting("shutting down: waiting for every rank to finish"):
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def all_gather_rows(row: torch.Tensor) -> torch.Tensor:
    """Gather a 1-D float64 CPU/device tensor from every rank -> (world_size, len(row))."""
    if not torch.distributed.is_initialized():
        return row.unsqueeze(0)
    out = [torch.empty_like(row) for _ in range(world_size())]
    torch.distributed.all_gather(out, row)
    return torch.stack(out)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(values)
    return values


def seed_everything(seed: int, rank_: int) -> None:
    """Seed python, numpy and torch (+cuda) with a per-rank seed (dropout differs by rank)."""
    s = (int(seed) * 1_000_003 + int(rank_)) % (2**31)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
