"""Distributed evaluation: 2 CPU ranks (gloo) give the same accuracy and predictions as one."""
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from lxmert_fast.data.tokenization import load_tokenizer
from lxmert_fast.data.world import open_world
from lxmert_fast.tasks.evaluate import evaluate, write_outputs
from lxmert_fast.tasks.predictions import read_predictions
from lxmert_fast.tasks.registry import load_task_data, world_paths


class BagOfFeatures(nn.Module):
    """A deterministic stand-in classifier over the same batch keys as the LXMERT models."""

    def __init__(self, num_out, task):
        super().__init__()
        self.task = task
        self.emb = nn.Embedding(30522, 8)
        self.vis = nn.Linear(2048, 8)
        self.out = nn.Linear(16, num_out)

    def forward(self, input_ids, visual_feats, visual_pos, attention_mask, visual_attention_mask,
                token_type_ids=None):
        m = attention_mask.unsqueeze(-1).float()
        text = (self.emb(input_ids) * m).sum(1) / m.sum(1)
        feats = visual_feats.flatten(0, -3) if self.task == "nlvr2" else visual_feats
        vm = visual_attention_mask.reshape(feats.shape[:2]).unsqueeze(-1).float()
        vis = (self.vis(feats) * vm).sum(1) / vm.sum(1).clamp(min=1)
        vis = vis.view(text.shape[0], -1, 8).mean(1)
        logits = self.out(torch.cat([text, vis], -1))
        key = "logits" if self.task == "nlvr2" else "question_answering_score"
        return {key: logits}


def _setup(root, task):
    world = open_world(root)
    _, valid, a2l, l2a = world_paths(world, task)
    data = load_task_data(task, None, valid, world.open_features(), load_tokenizer(world.vocab),
                          a2l, l2a)
    torch.manual_seed(123)
    model = BagOfFeatures(2 if task == "nlvr2" else len(data.answers), task)
    return data.valid, model


TASKS = ("vqa", "gqa", "nlvr2")


def _worker(rank, world_size, init_file, root, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    try:
        for task in TASKS:
            ds, model = _setup(root, task)
            result = evaluate(model, ds, batch_size=7)
            if rank == 0:
                write_outputs(result, task, out_dir)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_equal_one(task_world, tmp_path):
    two_dir = tmp_path / "two"
    mp.start_processes(_worker, args=(2, str(tmp_path / "init"), task_world.root, str(two_dir)),
                       nprocs=2, join=True, start_method="spawn")
    for task in TASKS:
        _compare(task_world, task, tmp_path / "one", two_dir)


def _compare(task_world, task, one_dir, two_dir):
    ds, model = _setup(task_world.root, task)
    single = evaluate(model, ds, batch_size=5)
    assert single.metrics["num_scored"] == len(ds) and single.accuracy is not None
    paths = write_outputs(single, task, str(one_dir))
    for name in os.listdir(one_dir):
        assert (two_dir / name).exists(), name
    two = json.loads((two_dir / f"{task}_valid_metrics.json").read_text())
    assert two["num_scored"] == single.metrics["num_scored"] == len(ds)
    assert two["accuracy"] == pytest.approx(single.accuracy, rel=1e-12, abs=1e-12)
    preds_one = read_predictions(task, paths["predictions"])
    preds_two = read_predictions(task, str(two_dir / os.path.basename(paths["predictions"])))
    assert preds_one == preds_two and len(preds_one) == len(ds)
