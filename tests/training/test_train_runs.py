"""lxmert_fast/train.py launched for real on CPU (DeepSpeed CPU accelerator, gloo): exact resume
on one and two ranks (a clean --stop_at stop, and a SIGKILL of one rank of a `deepspeed
--num_gpus 2` run), ZeRO-1/2/3 per-step losses against a single process, export from ZeRO
checkpoints, a NaN loss naming step and rank, and bad inputs rejected before any process group.
A tiny model on a 32-image synthetic world keeps each launch to seconds of compute."""
import json
import os
import signal

import numpy as np
import pytest
import torch

from train_launch import (COMMON, ds_config, eval_lines, losses, rank_pids, run, start,
                          wait_for)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("world_cache"))


def test_one_rank_stop_and_resume_is_bit_identical(cache, tmp_path):
    args = COMMON + ["--max_steps", "6", "--save_steps", "3", "--batch_size", "8",
                     "--dropout", "0.1"]                  # the CPU default is 0: RNG resume
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    run(args + ["--output_dir", full], cache)
    _, out = run(args + ["--output_dir", part, "--stop_at", "3"], cache)
    assert "stopped at step 3 of 6" in out
    assert sorted(losses(part)) == [1, 2, 3]
    with pytest.raises(AssertionError, match="already holds checkpoints: pass --resume"):
        run(args + ["--output_dir", part], cache)
    run(args + ["--output_dir", part, "--resume"], cache)
    reference, resumed = losses(full), losses(part)
    assert sorted(reference) == list(range(1, 7))
    assert resumed == reference                       # bit-identical, dropout on
    assert len(set(reference.values())) == 6
    assert eval_lines(part) == eval_lines(full)


def test_two_ranks_sigkill_then_resume_matches_uninterrupted(cache, tmp_path):
    cfg = ds_config(str(tmp_path), "z2.json", stage=2, micro=4, gas=1, world=2)
    args = COMMON + ["--max_steps", "30", "--save_steps", "10", "--deepspeed_config", cfg,
                     "--dropout", "0.1"]
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    _, out = run(args + ["--output_dir", full], cache, ranks=2)
    assert "batch 8 on 2 rank(s)" in out
    proc = start(args + ["--output_dir", killed], cache, ranks=2)
    metrics = os.path.join(killed, "metrics.jsonl")
    wait_for(lambda: os.path.exists(metrics) and len(open(metrics).readlines()) >= 12, 600,
             "step 12 of the run to be killed")
    pids = rank_pids(killed)
    assert sorted(pids) == [0, 1], pids
    for pid in pids.values():
        os.kill(pid, signal.SIGSTOP)
    steps_before_kill = len(open(metrics).readlines())
    os.kill(pids[1], signal.SIGKILL)
    os.kill(pids[0], signal.SIGCONT)
    proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert 12 <= steps_before_kill < 30, "the run finished before it could be killed"
    with open(os.path.join(killed, "checkpoints", "latest")) as f:
        latest = int(f.read().strip().split("_")[1])
    assert latest in (10, 20) and latest <= steps_before_kill
    run(args + ["--output_dir", killed, "--resume"], cache, ranks=2)
    reference = losses(full)
    assert sorted(reference) == list(range(1, 31))
    assert losses(killed) == reference                # bit-identical, dropout on, 2 ranks


@pytest.fixture(scope="module")
def zero_runs(cache, tmp_path_factory):
    """Dropout off: a single process (accumulating 2 micro-batches of 4) and 2-rank ZeRO-1/2/3
    runs (micro-batch 4 per rank) see the same 8 examples per step."""
    tmp = str(tmp_path_factory.mktemp("zero"))
    args = COMMON + ["--max_steps", "5", "--save_steps", "5", "--dropout", "0"]
    out = {}
    cfg = ds_config(tmp, "z0.json", stage=0, micro=4, gas=2, world=1)
    out[0] = os.path.join(tmp, "single")
    run(args + ["--deepspeed_config", cfg, "--output_dir", out[0]], cache)
    for stage in (1, 2, 3):
        cfg = ds_config(tmp, f"z{stage}.json", stage=stage, micro=4, gas=1, world=2)
        out[stage] = os.path.join(tmp, f"zero{stage}")
        run(args + ["--deepspeed_config", cfg, "--output_dir", out[stage]], cache, ranks=2)
    return out


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stage_losses_match_a_single_process(zero_runs, stage):
    single, zero = losses(zero_runs[0]), losses(zero_runs[stage])
    assert sorted(single) == sorted(zero) == [1, 2, 3, 4, 5]
    a = np.array([single[s] for s in range(1, 6)])
    b = np.array([zero[s] for s in range(1, 6)])
    np.testing.assert_allclose(b, a, rtol=2e-6, atol=0)
    assert a[0] != a[-1]                              # the model did change


@pytest.mark.parametrize("stage", [1, 3])
def test_export_from_zero_checkpoints_gives_the_same_transformers_dir(zero_runs, stage, tmp_path):
    from lxmert_fast import LxmertForPreTraining
    from lxmert_fast.training import export

    ref_dir = export.export(zero_runs[0], str(tmp_path / "single"))
    out_dir = export.export(zero_runs[stage], str(tmp_path / f"zero{stage}"))
    assert sorted(os.listdir(out_dir)) == ["answer_table.json", "config.json",
                                           "model.safetensors", "vocab.txt"]
    ref = LxmertForPreTraining.from_pretrained(ref_dir).state_dict()
    got = LxmertForPreTraining.from_pretrained(out_dir).state_dict()
    assert sorted(ref) == sorted(got)
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=1e-4, atol=1e-6, msg=key)


def test_nan_loss_stops_the_run_naming_step_and_rank(cache, tmp_path):
    from lxmert_fast.data.world import ensure_world
    from lxmert_fast.features.tsv import load_obj_tsv, write_obj_tsv

    world = ensure_world(cache_dir=cache, num_images=32)
    records = load_obj_tsv(world.features_tsv)
    for rec in records:
        rec["features"] = np.full_like(rec["features"], np.nan)
    tsv = str(tmp_path / "nan.tsv")
    write_obj_tsv(tsv, records)
    args = COMMON + ["--max_steps", "3", "--batch_size", "8", "--output_dir", str(tmp_path / "o"),
                     "--train_json", world.splits["pretrain_train"], "--valid_json",
                     world.splits["pretrain_valid"], "--features", tsv, "--vocab", world.vocab]
    code, out = run(args, cache, check=False)
    assert code != 0
    assert "NonFiniteLossError: non-finite loss at step 1 on rank(s) [0]" in out


def _main_in_process(argv, monkeypatch):
    from lxmert_fast import train

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                 "MASTER_PORT", "DS_ACCELERATOR"):
        monkeypatch.setenv(name, "x")   # records the original value; main() sets these
        monkeypatch.delenv(name)
    train.main(argv)


def test_bad_inputs_are_rejected_before_any_process_group(tmp_path, monkeypatch):
    from lxmert_fast.training import env

    started = []       # (another test of the session may hold a process group already)
    monkeypatch.setattr(env, "init_distributed", lambda: started.append(True))
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"train_batch_size": 8, "zero_optimization": {"stage": 2,
                                                                            "overlap_com": True}}))
    with pytest.raises(ValueError, match=r"unknown key 'zero_optimization.overlap_com' \(did "
                                         r"you mean 'overlap_comm'\?\)"):
        _main_in_process(["--deepspeed_config", str(bad), "--output_dir", str(tmp_path / "o")],
                         monkeypatch)
    with pytest.raises(FileNotFoundError) as e:
        _main_in_process(["--train_json", "no/a.json", "--valid_json", "no/b.json", "--features",
                          "no/c.store", "--deepspeed_config", "no/d.json"], monkeypatch)
    assert "4 input file(s) not found" in str(e.value)
    for name in ("a.json", "b.json", "c.store", "d.json"):
        assert name in str(e.value)
    assert not started
