"""Issue 15 on launched runs (DeepSpeed CPU accelerator, gloo), dropout off, ZeRO-2, global
batch 8: a 2-rank run whose checkpoint save fails on rank 1 (ENOSPC) stops naming the
checkpoint, rank and cause and keeps `latest` on the previous checkpoint; from there it resumes
on 1 rank (optimizer state re-sharded through a universal checkpoint; within float32 tolerance
of the uninterrupted 2-rank run) and as two localhost "nodes" (`deepspeed --hostfile --no_ssh
--node_rank i`, one CPU rank each; bit-identical); a truncated rank-1 optimizer shard of the
newest checkpoint is then found and the resume falls back bit-identically. Five launches."""
import os
import shutil

import numpy as np
import pytest

from train_launch import (COMMON, ds_config, fail_save_env, losses, run, run_two_nodes)

pytestmark = pytest.mark.slow
STEPS = list(range(1, 7))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("world_cache"))


def _latest(output_dir):
    with open(os.path.join(output_dir, "checkpoints", "latest")) as f:
        return f.read().strip()


@pytest.fixture(scope="module")
def runs(cache, tmp_path_factory):
    """The uninterrupted 2-rank run, and a copy of it whose save of step 4 failed on rank 1."""
    tmp = str(tmp_path_factory.mktemp("multinode"))
    common = COMMON + ["--max_steps", "6", "--save_steps", "2", "--dropout", "0"]
    cfg2 = ds_config(tmp, "z2w2.json", stage=2, micro=4, gas=1, world=2)
    cfg1 = ds_config(tmp, "z2w1.json", stage=2, micro=4, gas=2, world=1)
    full, part, one = (os.path.join(tmp, n) for n in ("full", "part", "one"))
    run(common + ["--deepspeed_config", cfg2, "--output_dir", full], cache, ranks=2)
    code, out = run(common + ["--deepspeed_config", cfg2, "--output_dir", part], cache, ranks=2,
                    check=False, extra_env=fail_save_env(tmp, 1, "step_00000004"))
    shutil.copytree(part, one)
    return dict(tmp=tmp, common=common, cfg1=cfg1, cfg2=cfg2, reference=losses(full),
                part=part, one=one, failed=(code, out))


def test_a_save_failing_on_rank_1_keeps_latest(runs):
    code, out = runs["failed"]
    assert code != 0
    assert ("CheckpointSaveError: saving checkpoint step_00000004 (step 4)" in out
            and "rank 1: OSError: [Errno 28] No space left on device" in out
            and "'latest' still names step_00000002" in out), out[-3000:]
    assert _latest(runs["part"]) == "step_00000002"
    steps = [n for n in os.listdir(os.path.join(runs["part"], "checkpoints")) if "step_" in n]
    assert steps == ["step_00000002"]                 # the partial step_00000004 is gone


def test_resume_on_one_rank_reshards_and_continues(runs, cache):
    _, out = run(runs["common"] + ["--deepspeed_config", runs["cfg1"], "--output_dir",
                                   runs["one"], "--resume"], cache)
    assert "step_00000002 was saved on 2 rank(s)" in out, out[-3000:]
    assert "re-sharding ZeRO state for 1 rank(s)" in out and "steps 2->6 of 6" in out
    assert not os.path.exists(os.path.join(runs["one"], "checkpoints", "step_00000002",
                                           "universal"))
    got, ref = losses(runs["one"]), runs["reference"]
    assert sorted(got) == sorted(ref) == STEPS
    np.testing.assert_allclose([got[s] for s in STEPS], [ref[s] for s in STEPS], rtol=2e-6,
                               atol=0)
    assert ref[1] != ref[6]                           # the model did change


def test_two_nodes_resume_then_fall_back_past_a_truncated_shard(runs, cache):
    part, args = runs["part"], runs["common"] + ["--deepspeed_config", runs["cfg2"]]
    outs = run_two_nodes(args + ["--output_dir", part, "--resume"], cache, runs["tmp"])
    assert "batch 8 on 2 rank(s), steps 2->6 of 6" in outs[0], outs[0][-3000:]
    assert losses(part) == runs["reference"]          # bit-identical after the failed save
    assert _latest(part) == "step_00000006"

    shard = os.path.join(part, "checkpoints", "step_00000006",
                         "zero_pp_rank_1_mp_rank_00_optim_states.pt")
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) // 2)
    _, out = run(args + ["--output_dir", part, "--resume"], cache, ranks=2)
    assert f"checkpoint step_00000006 failed verification: {shard} (written by rank 1)" in out
    assert "truncated" in out and "falling back to step_00000004" in out
    assert "steps 4->6 of 6" in out
    assert losses(part) == runs["reference"]
