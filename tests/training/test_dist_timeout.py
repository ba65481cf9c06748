"""--dist_timeout: a 2-rank run in which one rank skips a collective (the test hook of
lxmert_fast/training/dist_watch.py: rank 1 enters a barrier where rank 0 gathers, the shape of
the fine-tuning hang of issue 22) ends within the timeout, every waiting rank naming its rank,
step and operation, and the launcher exits non-zero instead of waiting forever."""
import re
import time

import pytest

from lxmert_fast.training import dist_watch
from train_launch import COMMON, ds_config, run

pytestmark = pytest.mark.slow

TIMEOUT_S = 20


def test_a_rank_that_skips_a_collective_stops_the_run_and_says_where(tmp_path):
    cfg = ds_config(str(tmp_path), "z2.json", stage=2, micro=4, gas=1, world=2)
    op = "saving checkpoint step_00000002: writing"
    args = COMMON + ["--max_steps", "4", "--save_steps", "2", "--deepspeed_config", cfg,
                     "--dist_timeout", str(TIMEOUT_S), "--output_dir", str(tmp_path / "run")]
    started = time.monotonic()
    code, out = run(args, str(tmp_path / "cache"), ranks=2, timeout=300, check=False,
                    extra_env={dist_watch.SKIP_ENV: f"1:{op}"})
    elapsed = time.monotonic() - started
    assert code != 0, out[-3000:]
    assert re.search(rf"rank 0: step 2: waited 2\d s in '{op}', longer than "
                     rf"--dist_timeout={TIMEOUT_S} s", out), out[-3000:]
    # the rank that skipped waits in its barrier: its own watchdog, or it learns that rank 0
    # left (a failed collective), or the launcher's SIGTERM; each says where it was
    assert re.search(rf"rank 1: step 2: (waited 2\d s|stopped by SIGTERM .* after \d+ s|a "
                     rf"collective failed after \d+ s) in '{op}'", out), out[-3000:]
    # start-up (~20 s here) + steps + the timeout; without the watchdog it never ends
    assert elapsed < 150, elapsed


def test_dist_timeout_must_be_positive():
    from lxmert_fast.training.args import RunArgs

    with pytest.raises(ValueError, match="--dist_timeout=0"):
        RunArgs(dist_timeout=0)
    assert dist_watch.process_group_timeout(20).total_seconds() == 50    # >= 30 s margin
    assert dist_watch.process_group_timeout(1800).total_seconds() == 1980  # 10% margin
