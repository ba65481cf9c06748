"""The README's main command, `deepspeed lxmert_fast/train.py`, with its CPU defaults, must train a
model that uses the image.

Every figure comes with its control on the same held-out examples (images never seen in
training): the accuracy with each example's image replaced by another held-out image (a fixed
derangement: same text, same masking, same labels). A text prior scores the same either way.
Measured on the 2-core CPU (README, "Pretraining"; 2000 steps, 6 minutes with this test's world
generation, Intel Xeon idle): matching 0.732 with own images vs 0.484 shuffled (chance 0.503),
masked LM on the grounded words of matched pairs 0.468 vs 0.269 (chance 0.064), all words 0.806
vs 0.790, QA 0.524 vs 0.530 (chance 0.450, 298 questions). Matching >= 0.70 and the grounded-word
gap (the learning issue's +0.15) are asserted. QA learns the text prior (asserted above chance)
but its image gap is within the noise of 298 questions at this budget (+0.04 in the 1400-step
run before issue 23, -0.01 here), so it is printed, not asserted: the same recipe run longer (the
shipped model, test_pretrained_small.py: QA 0.708 vs 0.491) reaches it."""
import json

import pytest

from train_launch import eval_lines, losses, run

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
    assert final["mlm_grounded_acc"] >= final["mlm_grounded_acc_shuffled"] + 0.15
    assert final["mlm_grounded_acc"] >= final["mlm_grounded_chance"] + 0.15
    assert final["mlm_acc"] > final["mlm_acc_shuffled"] + 0.01
    assert final["matched_acc"] >= 0.70
    assert final["matched_acc"] >= final["matched_acc_shuffled"] + 0.15
    assert final["qa_acc"] >= final["qa_chance"] + 0.06
