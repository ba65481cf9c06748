"""The README's main command, `deepspeed lxmert_fast/train.py`, with its CPU defaults, must train a
model that uses the image.

Every figure comes with its control on the same held-out examples (images never seen in
training): the accuracy with each example's image replaced by another held-out image (a fixed
derangement: same text, same masking, same labels). A text prior scores the same either way.
Measured on the 2-core CPU (README, "Pretraining"): masked LM on grounded words 0.301 with own
images vs 0.184 shuffled (chance 0.056), QA 0.529 vs 0.502 (0.409), matching 0.543 vs 0.522
(0.512). The asserted margins are about half the measured gaps; the learning issue's targets
(grounded +0.15, QA +0.08, matching >= 0.70, NLVR2-style transfer) are not met yet, so matching is
printed, not asserted.

Fine-tuning on the VQA-style task from the run's export beats the same fine-tuning from scratch
(measured: soft accuracy 0.568, shuffled images 0.532, vs scratch 0.447 / 0.450 on 300 held-out
questions); on the NLVR2-style task it does not yet (0.54 vs 0.57 on 100 pairs: README)."""
import json
import os
import subprocess
import sys

import pytest

from train_launch import REPO, eval_lines, losses, run, run_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("learning") / "run")
    _, log = run(["--output_dir", out_dir, "--no_progress"], cache_dir=None, launcher=True,
                 defaults=True, timeout=1800)
    return out_dir, log


def test_default_cpu_run_uses_the_image(default_run):
    out_dir, log = default_run
    assert "(small)" in log and "eval @ step" in log
    train = losses(out_dir)
    steps = sorted(train)
    assert steps == list(range(1, steps[-1] + 1))
    assert sum(train[s] for s in steps[-10:]) < 0.5 * sum(train[s] for s in steps[:10])
    final = eval_lines(out_dir)[-1]
    print("held-out:", json.dumps({k: round(v, 4) for k, v in final.items()}))
    assert final["mlm_grounded_acc"] >= final["mlm_grounded_acc_shuffled"] + 0.06
    assert final["mlm_grounded_acc"] >= final["mlm_grounded_chance"] + 0.15
    assert final["mlm_acc"] > final["mlm_acc_shuffled"] + 0.01
    assert final["qa_acc"] > final["qa_acc_shuffled"]
    assert final["qa_acc"] >= final["qa_chance"] + 0.06


def _finetune(task, out_dir, pretrained=None):
    cmd = [sys.executable, "lxmert_fast/finetune.py", "--task", task, "--output_dir", out_dir,
           "--no_progress", "--no_tensorboard"]
    if pretrained:
        cmd += ["--from_pretrained", pretrained]
    proc = subprocess.run(cmd, cwd=REPO, env=run_env(None, None), capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    with open(os.path.join(out_dir, f"{task}_valid_metrics.json")) as f:
        return json.load(f)


def test_vqa_finetuning_from_the_export_beats_scratch(default_run, tmp_path):
    task = "vqa"
    out_dir, _ = default_run
    export = os.path.join(out_dir, "export")
    if not os.path.isdir(export):
        subprocess.run([sys.executable, "-m", "lxmert_fast.training.export", out_dir, export],
                       cwd=REPO, env=run_env(None, None), check=True, capture_output=True)
    pre = _finetune(task, str(tmp_path / "pretrained"), export)
    scratch = _finetune(task, str(tmp_path / "scratch"))
    print(f"{task}: pretrained {pre['accuracy']:.4f} (shuffled images "
          f"{pre['accuracy_shuffled_images']:.4f}), scratch {scratch['accuracy']:.4f} "
          f"(shuffled images {scratch['accuracy_shuffled_images']:.4f})")
    assert pre["accuracy"] >= scratch["accuracy"] + 0.05
    assert pre["accuracy_shuffled_images"] < pre["accuracy"]
