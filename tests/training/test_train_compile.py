"""train.py --compile default, launched for real on 2 CPU ranks with DeepSpeed ZeRO-2 (the GPU
recipe's stage): a few steps give the eager run's losses within float32 tolerance. Dropout off
(inductor's RNG differs from eager's); the Triton kernels as custom ops under TRITON_INTERPRET=1
(the GPU path). The compiled graph is the one tests/training/test_step_compile.py compiles (same
model, micro-batch 4): run after it, both ranks find it in inductor's cache.

Cost: two 2-rank runs and a compile per rank, 9.6 minutes on the loaded 2-core development
machine (it passed there: steps 1 and 2 identical, step 3 within 5e-8 relative), beyond the CI
budget for new tests; LXMERT_TEST_COMPILE_ALL=1 runs it (test_step_compile.py checks the same
compiled step in-process in CI)."""
import os

import numpy as np
import pytest

from train_launch import COMMON, ds_config, losses, run

pytestmark = pytest.mark.slow


def test_compiled_two_rank_zero2_run_matches_eager(tmp_path_factory, tmp_path):
    if os.environ.get("LXMERT_TEST_COMPILE_ALL") != "1":
        pytest.skip("two 2-rank runs with a compile (~10 min on 2 loaded cores) exceed the CI "
                    "budget for new tests: LXMERT_TEST_COMPILE_ALL=1 runs it")
    cache = str(tmp_path_factory.mktemp("world_cache"))
    cfg = ds_config(str(tmp_path), "z2.json", stage=2, micro=4, gas=1, world=2)
    args = COMMON + ["--max_steps", "3", "--save_steps", "3", "--dropout", "0",
                     "--kernel_impl", "triton", "--deepspeed_config", cfg]
    out = {}
    for mode in ("off", "default"):
        out[mode] = os.path.join(str(tmp_path), mode)
        run(args + ["--compile", mode, "--output_dir", out[mode]], cache, ranks=2,
            timeout=1200)
    eager, compiled = losses(out["off"]), losses(out["default"])
    assert sorted(eager) == sorted(compiled) == [1, 2, 3]
    a = np.array([eager[s] for s in (1, 2, 3)])
    b = np.array([compiled[s] for s in (1, 2, 3)])
    np.testing.assert_allclose(b, a, rtol=2e-5, atol=0)
    assert a[0] != a[-1]                              # the model did change
