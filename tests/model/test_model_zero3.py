"""The model under DeepSpeed ZeRO-3 (every parameter partitioned, none persistent): sublayers
that pass a child's weight to a fused op and the tied MLM decoder must train exactly as without
ZeRO. One rank on DeepSpeed's CPU accelerator (gloo), in a subprocess so the process group does
not outlive the test."""
import json
import os
import socket
import subprocess
import sys

import pytest

pytest.importorskip("deepspeed")
pytestmark = pytest.mark.slow
HERE = os.path.dirname(os.path.abspath(__file__))

SCRIPT = r"""
import copy, json, os, sys
import torch
torch.set_num_threads(1)
sys.path[:0] = [HERE, os.path.dirname(HERE)]   # the test helpers (tests/model_pairs.py)
import deepspeed
from lxmert_fast import LxmertConfig, LxmertForPreTraining
from lxmert_model_testutil import SMALL, inputs, pretrain_labels, randomize_

cfg = {**SMALL, "l_layers": 1, "r_layers": 1, "kernel_impl": "torch",
       "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
base = randomize_(LxmertForPreTraining(LxmertConfig(**cfg)))
x, y = inputs(cfg), pretrain_labels(cfg)
deepspeed.init_distributed(dist_backend="gloo")
result = {}
for stage in (0, 3):
    model = copy.deepcopy(base)
    ds = {"train_batch_size": 3, "train_micro_batch_size_per_gpu": 3, "steps_per_print": 10**6,
          "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0}}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds)
    losses = []
    for step in range(3):
        out = engine(**x, **y, output_attentions=step == 1)
        engine.backward(out.loss)
        engine.step()
        losses.append(out.loss.item())
    result[stage] = losses
print("RESULT " + json.dumps(result))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_zero3_trains_like_no_zero():
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES",)}
    env.update(DS_ACCELERATOR="cpu", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
               LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", f"HERE = {HERE!r}\n" + SCRIPT], env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-6000:]
    result = json.loads(lines[-1][len("RESULT "):])
    plain, zero3 = result["0"], result["3"]
    assert len(plain) == 3 and len(set(plain)) == 3  # the loss moves
    for step, (a, b) in enumerate(zip(plain, zero3)):
        assert abs(a - b) <= 1e-5 * abs(a), f"step {step}: ZeRO-3 loss {b} vs {a}"
