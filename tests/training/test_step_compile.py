"""torch.compile(fullgraph=True) of the training step as train.py builds it (--compile default),
on CPU with the fused Triton kernels as custom ops (TRITON_INTERPRET=1; the GPU path) and with
the reference ops (the CPU path): the same losses and every gradient as the eager step within
float32 tolerance, over two micro-batches whose MLM gathers have different capacities, with one
compiled graph (no graph break, no recompile). Dropout off: inductor's RNG differs from eager's.

Cost: one compile of the tiny model (a few minutes on 2 cores). The Triton case runs in CI; its
graph (micro-batch 4) is the one tests/training/test_train_compile.py's 2-rank run compiles, so
that run finds it in inductor's cache. The reference-op case compiles another graph: it runs
with LXMERT_TEST_COMPILE_ALL=1 (it passed when this test was written)."""
import os

import pytest
import torch

from lxmert_fast.training import loop, pretrain, step
from lxmert_fast.training.compile import compiled_mode
from lxmert_fast.training.engine import engine_dtype, to_device
from lxmert_fast.training.sampler import MicroBatch
from step_testutil import build_pretrain_step

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("world_cache")


def _batches_with_two_capacities(batches):
    """Two micro-batches (indices from the start of the data) whose gathers differ in size."""
    found = {}
    for start in range(0, 200, 4):
        batch = batches(MicroBatch(step=0, micro=0, epoch=0, indices=list(range(start, start + 4))))
        found.setdefault(batch["model"]["mlm_positions"].shape[0], batch)
        if len(found) == 2:
            return list(found.values())
    raise AssertionError(f"every micro-batch has the same MLM capacity {sorted(found)}")


def _grads(engine):
    return {n: p.grad.clone() for n, p in engine.module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_compiled_step_matches_eager_losses_and_every_gradient(process_group, cache, impl):
    import torch._dynamo.utils as dynamo_utils

    if impl == "torch" and os.environ.get("LXMERT_TEST_COMPILE_ALL") != "1":
        pytest.skip("a second compile (~3 min on 2 cores) beyond the CI budget: "
                    "LXMERT_TEST_COMPILE_ALL=1 runs it")
    torch._dynamo.reset()
    common = ["--kernel_impl", impl, "--batch_size", "4"]
    eager, batches, _ = build_pretrain_step(cache, [*common, "--compile", "off"])
    compiled, _, _ = build_pretrain_step(cache, [*common, "--compile", "default"])
    assert compiled_mode(compiled.module) == "default" and compiled_mode(eager.module) is None
    eager.train()
    compiled.train()
    dynamo_utils.counters.clear()
    for i, batch in enumerate(_batches_with_two_capacities(batches)):
        rows = []
        for engine in (eager, compiled):
            engine.zero_grad()
            on_device = to_device(batch, engine.device, engine_dtype(engine))
            rows.append(loop.micro_step(engine, step.pretrain_forward, on_device, pretrain.TASKS))
        torch.testing.assert_close(rows[1], rows[0], rtol=2e-5, atol=1e-6)
        g_eager, g_compiled = _grads(eager), _grads(compiled)
        assert sorted(g_eager) == sorted(g_compiled) and len(g_eager) > 50
        for name, g in g_eager.items():
            scale = g.abs().max().item()
            err = (g_compiled[name] - g).abs().max().item()
            assert err <= 1e-4 * scale + 1e-6, f"batch {i} {name}: {err:.3e} vs scale {scale:.3e}"
    stats = dict(dynamo_utils.counters["stats"])
    assert stats["unique_graphs"] == 1, stats
    assert not dynamo_utils.counters["graph_break"], dict(dynamo_utils.counters["graph_break"])
