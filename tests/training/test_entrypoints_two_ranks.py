"""Every entry point run to its end on 2 ranks (the deepspeed launcher, gloo on CPU), each launch
under a timeout that fails the test: a collective that one rank enters and the other does not is
a hang, and a hang here is a failure with the launch's output, not a stuck CI.

- train.py: a fresh run stopped at a checkpoint, then ``--resume`` to the end;
- ``python -m lxmert_fast.training.export`` on that 2-rank ZeRO-2 run directory;
- finetune.py: training to the end with the final export (rank 0 exports while rank 1 waits: the
  export's checkpoint verification once entered a collective there and hung), a stop and
  ``--resume``, and ``--eval_only`` of the exported model.
"""
import json
import os
import sys

import pytest

from train_launch import COMMON, FINETUNE, ds_config, losses, run

pytestmark = pytest.mark.slow

# a launch of a tiny model on 2 CPU ranks takes 20-60 s here; a hang runs into this
LAUNCH_TIMEOUT = 300
FT_COMMON = ["--task", "vqa", "--model_size", "tiny", "--num_images", "32", "--no_progress",
             "--no_tensorboard", "--batch_size", "8", "--lr", "5e-4"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("world_cache"))


@pytest.fixture(scope="module")
def pretrain_run(cache, tmp_path_factory):
    """A 2-rank ZeRO-2 pretraining run stopped at step 2 and resumed to step 4."""
    tmp = tmp_path_factory.mktemp("pretrain2")
    cfg = ds_config(str(tmp), "z2.json", stage=2, micro=4, gas=1, world=2)
    out = str(tmp / "run")
    args = COMMON + ["--max_steps", "4", "--save_steps", "2", "--deepspeed_config", cfg,
                     "--output_dir", out]
    _, first = run(args + ["--stop_at", "2"], cache, ranks=2, timeout=LAUNCH_TIMEOUT)
    assert "stopped at step 2 of 4" in first
    _, second = run(args + ["--resume"], cache, ranks=2, timeout=LAUNCH_TIMEOUT)
    assert "stopped at step 4 of 4" in second
    return out


def test_train_two_ranks_stop_and_resume_run_to_the_end(pretrain_run):
    assert sorted(losses(pretrain_run)) == [1, 2, 3, 4]
    with open(os.path.join(pretrain_run, "checkpoints", "latest")) as f:
        assert f.read().strip() == "step_00000004"


def test_export_cli_on_a_two_rank_run(pretrain_run, tmp_path, cache):
    out = str(tmp_path / "export")
    cmd = [sys.executable, "-m", "lxmert_fast.training.export", pretrain_run, out]
    _, printed = run([], cache, timeout=LAUNCH_TIMEOUT, cmd=cmd, script="export")
    assert "exported" in printed
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["l_layers"] >= 1
    assert os.path.isfile(os.path.join(out, "model.safetensors"))


@pytest.fixture(scope="module")
def finetune_run(cache, tmp_path_factory):
    """2-rank fine-tuning to its end (final export included), in one go."""
    out = str(tmp_path_factory.mktemp("finetune2") / "vqa")
    _, printed = run(FT_COMMON + ["--max_steps", "4", "--save_steps", "2", "--output_dir", out],
                     cache, ranks=2, timeout=LAUNCH_TIMEOUT, script=FINETUNE)
    assert "stopped at step 4 of 4" in printed
    return out


def test_finetune_two_ranks_trains_exports_and_exits(finetune_run):
    for name in ("config.json", "model.safetensors", "ans2label.json", "label2ans.json"):
        assert os.path.isfile(os.path.join(finetune_run, "model", name)), name
    with open(os.path.join(finetune_run, "vqa_valid_metrics.json")) as f:
        assert json.load(f)["step"] == 4


def test_finetune_two_ranks_stop_then_resume(finetune_run, cache, tmp_path):
    out = str(tmp_path / "vqa")
    args = FT_COMMON + ["--max_steps", "4", "--save_steps", "2", "--output_dir", out]
    _, first = run(args + ["--stop_at", "2"], cache, ranks=2, timeout=LAUNCH_TIMEOUT,
                   script=FINETUNE)
    assert "stopped at step 2 of 4" in first
    assert not os.path.exists(os.path.join(out, "model"))        # exported only at the end
    run(args + ["--resume"], cache, ranks=2, timeout=LAUNCH_TIMEOUT, script=FINETUNE)
    assert losses(out) == losses(finetune_run)                  # the uninterrupted run's
    assert os.path.isfile(os.path.join(out, "model", "model.safetensors"))


def test_finetune_two_ranks_eval_only(finetune_run, cache, tmp_path):
    out = str(tmp_path / "eval")
    run(FT_COMMON + ["--from_pretrained", os.path.join(finetune_run, "model"), "--eval_only",
                     "--output_dir", out], cache, ranks=2, timeout=LAUNCH_TIMEOUT,
        script=FINETUNE)
    with open(os.path.join(out, "vqa_valid_metrics.json")) as f:
        evaluated = json.load(f)
    with open(os.path.join(finetune_run, "vqa_valid_metrics.json")) as f:
        trained = json.load(f)
    assert evaluated["num_predictions"] == trained["num_predictions"] > 0
    assert evaluated["accuracy"] == pytest.approx(trained["accuracy"], abs=1e-6)


def test_a_two_rank_run_leaves_no_shared_memory(cache, tmp_path):
    """DeepSpeed's CPU allreduce maps a 66 MB /dev/shm buffer per rank and never unlinks it;
    env.init_distributed unlinks it once every rank has mapped it (/dev/shm is RAM: one session
    of tests had left 21 GB there)."""
    import glob

    pattern = "/dev/shm/deepspeed_allreduce_buffer_*"
    before = set(glob.glob(pattern))
    cfg = ds_config(str(tmp_path), "z2.json", stage=2, micro=4, gas=1, world=2)
    run(COMMON + ["--max_steps", "1", "--save_steps", "1", "--deepspeed_config", cfg,
                  "--output_dir", str(tmp_path / "run")], cache, ranks=2, timeout=LAUNCH_TIMEOUT)
    assert set(glob.glob(pattern)) - before == set()
