"""The training objective does not depend on how the global batch is split (issue 22): the masked
LM and QA losses are normalised by their item counts over the whole global batch (the batch's
``loss_norm``, training/pretrain.py MakePacked), so 1 x 32, 2 ranks x 16 and 1 rank x 4
micro-batches of 8 give the same per-task losses and the same gradients, DeepSpeed's averaging
(1/accumulation per micro-batch, the mean over ranks) emulated in one process. The original's
per-micro-batch means (``--loss_normalization micro_batch``) do not: the test shows it."""
import numpy as np
import pytest
import torch

from lxmert_fast import LxmertConfig, LxmertForPreTraining
from lxmert_fast.training import pretrain, step
from lxmert_fast.training.sampler import ResumableBatchSampler

SPLITS = [(1, 1, 32), (2, 1, 16), (1, 4, 8), (2, 2, 8)]     # (ranks, accumulation, micro)
TASKS = ("mlm", "matched", "obj", "attr", "feat", "qa")


class _Engine:
    """What PretrainForward needs of a DeepSpeed engine: call the model, report the dtype."""

    def __init__(self, model):
        self.model = model

    def __call__(self, **kw):
        return self.model(**kw)

    def bfloat16_enabled(self):
        return False

    def fp16_enabled(self):
        return False


@pytest.fixture(autouse=True)
def float64_step(monkeypatch):
    """The step unpacks in the engine's dtype: float64 here, so that the comparison is exact to
    float64 summation order (float32 GEMMs round differently at different batch sizes)."""
    monkeypatch.setattr(step, "engine_dtype", lambda engine: torch.float64)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from lxmert_fast.data.pretrain import PretrainDataset
    from lxmert_fast.data.tokenization import load_tokenizer
    from lxmert_fast.data.world import ensure_world

    world = ensure_world(cache_dir=str(tmp_path_factory.mktemp("norm_world")), num_images=64)
    tok = load_tokenizer(world.vocab)
    ds = PretrainDataset(world.splits["pretrain_train"], world.open_features(), tok, seed=3,
                         max_boxes=12, cache_dir=str(tmp_path_factory.mktemp("norm_cache")))
    torch.manual_seed(0)
    model = LxmertForPreTraining(LxmertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, num_attention_heads=2,
        intermediate_size=64, l_layers=1, x_layers=1, r_layers=1, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, num_qa_labels=len(ds.answer_table),
        kernel_impl="torch")).double()
    return ds, model


def _step(ds, model, ranks, accum, micro, normalise, at=5):
    """(per-task losses as logged, total loss, gradients) of optimizer step ``at``."""
    model.zero_grad(set_to_none=True)
    rows, total = {t: 0.0 for t in TASKS}, 0.0
    per_step = ranks * accum
    for rank in range(ranks):
        sampler = ResumableBatchSampler(len(ds), micro, accum, ranks, rank, seed=1)
        make = step.PretrainBatches(pretrain.make_batch_fn(
            ds, 0, sampler=sampler if normalise else None))
        for mb in sampler.micro_batches(at):
            batch = make(mb)
            batch["model"] = {k: v.double() if torch.is_tensor(v) and v.is_floating_point()
                              else v for k, v in batch["model"].items()}
            loss, losses, present = step.PretrainForward()(_Engine(model), batch)
            (loss / per_step).backward()        # DeepSpeed: 1/accum, then the rank mean
            total += float(loss.detach()) / per_step
            for t in TASKS:
                rows[t] += float(losses[t].detach()) / per_step
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return rows, total, grads


def test_every_split_gives_the_same_losses_and_gradients(setup):
    ds, model = setup
    ref_rows, ref_total, ref_grads = _step(ds, model, *SPLITS[0], normalise=True)
    assert ref_rows["mlm"] > 0 and ref_rows["qa"] > 0
    for split in SPLITS[1:]:
        rows, total, grads = _step(ds, model, *split, normalise=True)
        for t in TASKS:
            assert rows[t] == pytest.approx(ref_rows[t], rel=1e-10), (split, t)
        assert total == pytest.approx(ref_total, rel=1e-10), split
        assert grads.keys() == ref_grads.keys()
        for name, g in grads.items():
            torch.testing.assert_close(g, ref_grads[name], rtol=1e-9, atol=1e-12,
                                       msg=lambda m: f"{split} {name}: {m}")


def test_per_micro_batch_means_depend_on_the_split(setup):
    ds, model = setup
    one, _, _ = _step(ds, model, *SPLITS[0], normalise=False)
    four, _, _ = _step(ds, model, *SPLITS[2], normalise=False)
    assert abs(four["mlm"] - one["mlm"]) > 1e-4 * one["mlm"]
    glob, _, _ = _step(ds, model, *SPLITS[0], normalise=True)
    assert glob["mlm"] == pytest.approx(one["mlm"], rel=1e-12)   # one micro-batch: the same


def test_item_counts_match_the_batches(setup):
    ds, _ = setup
    idx = np.arange(0, 64, 2)
    b = ds.make_packed(idx)
    counts = ds.item_counts(idx)
    assert counts == {"mlm": int((b["labels"] >= 0).sum()), "qa": int((b["ans"] >= 0).sum())}
