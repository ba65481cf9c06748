"""finetune.py end to end on the synthetic world, as users run it (subprocesses):

- a short VQA fine-tuning writes the metrics JSON, the leaderboard prediction file, the
  metrics log and the final transformers-format model;
- that model evaluated with ``--eval_only`` by the deepspeed launcher on 2 CPU ranks gives the
  accuracy and the prediction file of the one-rank evaluation at the end of training.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

from lxmert_fast.tasks.predictions import read_predictions

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FINETUNE_STEPS, FINETUNE_LR = 4, "5e-4"
COMMON = ["--no_progress", "--no_tensorboard"]


def _run(cmd, env, what, timeout=900):
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{what} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def run_env(task_world):
    """Subprocesses use the session's world (same cache dir and size: no regeneration)."""
    env = dict(os.environ, LXMERT_FAST_CACHE=os.path.dirname(task_world.root),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return env, ["--num_images", str(task_world.meta["num_images"])]


@pytest.fixture(scope="session")
def vqa_run(tmp_path_factory, run_env):
    """A short VQA fine-tuning run (tiny model from scratch) with its final evaluation."""
    env, world = run_env
    out = str(tmp_path_factory.mktemp("finetune") / "vqa")
    _run([sys.executable, "lxmert_fast/finetune.py", "--task", "vqa", "--model_size", "tiny",
          "--max_steps", str(FINETUNE_STEPS), "--lr", FINETUNE_LR, "--output_dir", out,
          *world, *COMMON], env, "fine-tuning vqa")
    return out


def _metrics(out, task):
    with open(os.path.join(out, f"{task}_valid_metrics.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_run_writes_metrics_predictions_and_model(vqa_run):
    metrics = _metrics(vqa_run, "vqa")
    assert metrics["step"] == FINETUNE_STEPS and metrics["metric"] == "vqa_soft_accuracy"
    assert metrics["num_scored"] == metrics["num_predictions"] > 0
    preds = read_predictions("vqa", os.path.join(vqa_run, "vqa_valid_predictions.json"))
    assert len(preds) == metrics["num_predictions"]
    assert all(isinstance(qid, int) for qid in preds)
    for name in ("config.json", "model.safetensors", "ans2label.json", "label2ans.json"):
        assert os.path.isfile(os.path.join(vqa_run, "model", name)), name
    with open(os.path.join(vqa_run, "metrics.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    assert [r["step"] for r in lines if "loss" in r] == list(range(1, FINETUNE_STEPS + 1))
    assert lines[-1]["eval"] == {"vqa_soft_accuracy": metrics["accuracy"],
                                 "vqa_soft_accuracy_shuffled_images":
                                     metrics["accuracy_shuffled_images"]}
    assert 0.0 <= metrics["accuracy_shuffled_images"] <= 1.0


@pytest.mark.slow
def test_eval_only_on_two_ranks_equals_one(vqa_run, run_env, tmp_path):
    if shutil.which("deepspeed") is None:
        pytest.skip("the deepspeed launcher is not on PATH")
    env, world = run_env
    env = dict(env, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    trained = vqa_run
    out = tmp_path / "eval2"
    _run(["deepspeed", "--num_gpus", "2", "--master_port", str(29500 + os.getpid() % 1000),
          "lxmert_fast/finetune.py", "--task", "vqa", "--from_pretrained",
          os.path.join(trained, "model"), "--eval_only", "--output_dir", str(out), *world,
          *COMMON], env, "2-rank --eval_only")
    one, two = _metrics(trained, "vqa"), _metrics(str(out), "vqa")
    assert two["num_scored"] == one["num_scored"] == two["num_predictions"]
    assert two["accuracy"] == pytest.approx(one["accuracy"], abs=1e-12)
    assert two["accuracy_shuffled_images"] == pytest.approx(one["accuracy_shuffled_images"],
                                                            abs=1e-12)
    name = "vqa_valid_predictions.json"
    assert read_predictions("vqa", str(out / name)) == \
        read_predictions("vqa", os.path.join(trained, name))
