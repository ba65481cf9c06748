"""A single-process gloo process group for the in-process checkpoint tests, created once per
session: DeepSpeed caches its world group, so a group destroyed and created again in the same
process is not usable by a later deepspeed.initialize."""
import os

import pytest
import torch


@pytest.fixture(scope="session")
def process_group():
    from lxmert_fast.training import env

    saved = dict(os.environ)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_PORT"):
        os.environ.pop(name, None)
    env.setup_environment()
    env.init_distributed()
    yield
    torch.distributed.destroy_process_group()
    os.environ.clear()
    os.environ.update(saved)
