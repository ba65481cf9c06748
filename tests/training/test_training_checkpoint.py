"""Checkpointer on a real (single-process, CPU) DeepSpeed engine with a toy model: rotation,
`latest` moved only after a complete save (a failed one is removed), RNG and
optimizer/scheduler state restored."""
import os
import random

import numpy as np
import pytest
import torch

from lxmert_fast.training.checkpoint import (CheckpointError, Checkpointer,
                                              CheckpointSaveError, tag_for)
from tiny_engine import tiny_engine, tiny_step



def _params(engine):
    return [p.detach().clone() for p in engine.module.parameters()]


def test_keep_last_rotation_latest_and_exact_state_restore(process_group, tmp_path):
    engine = tiny_engine()
    ckpt = Checkpointer(str(tmp_path), keep_last=2)
    assert ckpt.latest_tag() is None
    for step in range(1, 5):
        tiny_step(engine)
        ckpt.save(engine, step, {"note": step})
    assert ckpt.tags() == [tag_for(3), tag_for(4)]
    assert ckpt.latest_tag() == tag_for(4)
    assert os.path.exists(os.path.join(ckpt.dir, tag_for(4), "rng_rank00000.pt"))
    weights, lr = _params(engine), engine.get_lr()[0]
    expected = (torch.rand(3), np.random.rand(), random.random())
    later = [tiny_step(engine) for _ in range(3)]

    restored = tiny_engine()
    torch.manual_seed(123)
    state = Checkpointer(str(tmp_path), keep_last=2).load(restored)
    assert state["step"] == 4 and state["note"] == 4
    for a, b in zip(_params(restored), weights):
        assert torch.equal(a, b)
    assert restored.get_lr()[0] == lr
    got = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]
    # same RNG, weights, optimizer and schedule: the continuation is bit-identical
    assert [tiny_step(restored) for _ in range(3)] == later


def test_latest_does_not_move_when_a_save_fails(process_group, tmp_path):
    engine = tiny_engine()
    ckpt = Checkpointer(str(tmp_path), keep_last=3)
    tiny_step(engine)
    ckpt.save(engine, 1, {})

    def broken(save_dir, tag, client_state, save_latest):
        open(os.path.join(save_dir, tag, "partial"), "w").close()
        raise OSError("disk full")

    real = engine.save_checkpoint
    engine.save_checkpoint = broken
    with pytest.raises(CheckpointSaveError, match="step_00000002 .*rank 0: OSError: disk full.*"
                                                  "'latest' still names step_00000001"):
        ckpt.save(engine, 2, {})
    assert ckpt.latest_tag() == tag_for(1)
    assert ckpt.tags() == [tag_for(1)]               # the partial directory was removed
    # a resumed run that saves step 2 again; leftovers newer than it go
    os.makedirs(os.path.join(ckpt.dir, tag_for(7)))
    engine.save_checkpoint = real
    ckpt.save(engine, 2, {})
    assert ckpt.latest_tag() == tag_for(2)
    assert ckpt.tags() == [tag_for(1), tag_for(2)]


def test_load_errors_name_the_problem(process_group, tmp_path):
    engine = tiny_engine()
    ckpt = Checkpointer(str(tmp_path))
    assert ckpt.load(engine) is None                  # nothing saved yet: start at step 0
    os.makedirs(ckpt.dir)
    with open(os.path.join(ckpt.dir, "latest"), "w") as f:
        f.write("step_00000009")
    with pytest.raises(CheckpointError, match="names step_00000009, which is not a directory"):
        ckpt.latest_tag()
    with pytest.raises(CheckpointError, match="no checkpoint in .* verifies"):
        ckpt.load(engine)
    with pytest.raises(ValueError, match="keep_last=0"):
        Checkpointer(str(tmp_path), keep_last=0)
