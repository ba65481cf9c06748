"""The training step as train.py runs it (data -> gather positions -> forward -> engine.backward ->
loss row) dispatches no op that synchronises with the device or has a data-dependent shape
(nonzero, item, masked_select, boolean-mask indexing, unique, repeat_interleave without an
output size): under a dispatch mode, in-process, tiny model, every pretraining loss on (ITC too),
DeepSpeed ZeRO-0 fp32 as on CPU and ZeRO-2 as on GPUs. The detector is shown to catch the
synchronising variants (boolean-mask MLM head, presence read with .any() on the host)."""
import pytest
import torch

from lxmert_fast.data.batch import unpack_visual
from lxmert_fast.training import loop, pretrain, step
from lxmert_fast.training.engine import engine_dtype, to_device
from lxmert_fast.training.sampler import MicroBatch
from step_testutil import SyncDetector, build_pretrain_step


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("world_cache")


def _micro_batch(batches, engine, epoch=0):
    batch = batches(MicroBatch(step=0, micro=0, epoch=epoch, indices=list(range(8))))
    return to_device(batch, engine.device, engine_dtype(engine))


@pytest.mark.parametrize("stage", [0, 2])
def test_train_step_has_no_sync_or_data_dependent_op(process_group, cache, stage):
    cfg = {"train_batch_size": 8, "gradient_clipping": 1.0, "zero_optimization": {"stage": stage}}
    engine, batches, _ = build_pretrain_step(cache, ["--qa_from_epoch", "0"], cfg)
    engine.train()
    batch = _micro_batch(batches, engine)
    assert set(batch["model"]) >= {"labels", "matched_label", "ans", "mlm_positions"}
    assert set(batch["visual"]) >= {"feats", "obj_chosen", "obj_zero", "lent_slot",
                                    "lent_feats"}                   # unpacked in the step
    detector = SyncDetector()
    with detector:
        row = loop.micro_step(engine, step.pretrain_forward, batch, pretrain.TASKS)
    assert detector.found == []
    assert row.shape == (1 + 2 * len(pretrain.TASKS),) and row.dtype == torch.float64
    assert torch.isfinite(row).all() and row[0] > 0
    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
    if stage == 0:            # ZeRO-2 moves the gradients into its own partitioned buffers
        assert len(grads) > 50
    engine.step()             # the optimizer step is DeepSpeed's (outside the checked step)


def test_detector_catches_the_synchronising_variants(process_group, cache):
    engine, batches, _ = build_pretrain_step(cache)
    engine.train()
    batch = _micro_batch(batches, engine)
    model = dict(batch["model"])
    model.update(unpack_visual(batch["visual"], engine_dtype(engine)))
    model.pop("mlm_positions")
    detector = SyncDetector()
    with detector:
        engine(**model, mlm_positions="labeled")            # boolean-mask MLM rows
        bool((model["labels"] >= 0).any())                  # presence read on the host
        torch.repeat_interleave(torch.tensor([1, 2]))
    text = "\n".join(detector.found)
    assert "boolean-mask indexing" in text
    assert "aten.is_nonzero" in text or "_local_scalar_dense" in text
    assert "repeat_interleave without output_size" in text
    engine.zero_grad()
