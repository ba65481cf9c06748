"""Activation checkpointing (``gradient_checkpointing_enable``; the encoder's layers through
``torch.utils.checkpoint``, non-reentrant by default): losses and every gradient identical with it
on and off, dropout on, with the PyTorch reference and with the Triton kernels (the interpreter on
CPU: their dropout seeds come from torch's generator, which the checkpoint restores for the
recomputation); the layers really are recomputed; and under DeepSpeed ZeRO-2/3. transformers'
LXMERT refuses ``gradient_checkpointing_enable()`` (test_compat_model_api.py)."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from lxmert_fast import LxmertConfig, LxmertForPreTraining
from compat_testutil import TINY, inputs, one_thread, randomize_  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
HERE = os.path.dirname(os.path.abspath(__file__))


def pretraining_labels(cfg, batch=3, seq=6, objects=4, seed=3):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, cfg["vocab_size"], (batch, seq), generator=gen)
    labels[torch.rand(batch, seq, generator=gen) < 0.4] = -100
    weight = torch.ones(batch, objects)
    return dict(labels=labels, matched_label=torch.tensor([1, 0, 1]),
                ans=torch.randint(0, cfg["num_qa_labels"], (batch,), generator=gen),
                obj_labels={"obj": (torch.randint(0, cfg["num_object_labels"], (batch, objects),
                                                  generator=gen), weight),
                            "attr": (torch.randint(0, cfg["num_attr_labels"], (batch, objects),
                                                   generator=gen), weight),
                            "feat": (torch.randn(batch, objects, cfg["visual_feat_dim"],
                                                 generator=gen), weight)})


def _step(model, seed):
    """Loss terms and every gradient of one training step from RNG seed ``seed``."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(**inputs(), **pretraining_labels(TINY))
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in out.losses.items()}, grads


def _counting(model):
    """Calls of every encoder layer's forward (a checkpointed layer runs twice per step)."""
    calls = []
    encoder = model.lxmert.encoder
    for layer in [*encoder.layer, *encoder.r_layers, *encoder.x_layers]:
        # a pre-hook: a non-reentrant recomputation stops early, before forward hooks run
        layer.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("kernel_impl,kwargs", [("torch", None),
                                                ("torch", {"use_reentrant": True}),
                                                ("triton", None)])
def test_losses_and_every_gradient_identical_on_and_off(kernel_impl, kwargs):
    if kernel_impl == "triton":
        pytest.importorskip("triton")
    cfg = LxmertConfig(**TINY, kernel_impl=kernel_impl, hidden_dropout_prob=0.1,
                       attention_probs_dropout_prob=0.1)
    model = randomize_(LxmertForPreTraining(cfg)).train()
    calls = _counting(model)
    losses, grads = _step(model, seed=11)
    assert len(calls) == 3 and set(losses) == {"mlm", "matched", "obj", "attr", "feat", "qa"}
    if kernel_impl == "torch":  # (the interpreted kernels are slow: one step fewer)
        other, _ = _step(model, seed=12)
        assert other["mlm"] != losses["mlm"]  # dropout is on: another seed, other masks
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    calls.clear()
    ck_losses, ck_grads = _step(model, seed=11)
    assert len(calls) == 6  # each of the 3 layers recomputed in the backward
    for key, value in losses.items():
        assert torch.equal(ck_losses[key], value), key
    assert set(ck_grads) == set(grads) and len(grads) > 90
    for name, grad in grads.items():
        assert torch.equal(ck_grads[name], grad), name


def test_no_recomputation_in_eval_or_without_grad():
    model = randomize_(LxmertForPreTraining(LxmertConfig(**TINY, kernel_impl="torch")))
    model.gradient_checkpointing_enable()
    calls = _counting(model)
    model.eval()(**inputs())[0].sum().backward()
    with torch.no_grad():
        model.train()(**inputs())
    assert len(calls) == 6  # 3 layers, twice, never recomputed
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing


ZERO_SCRIPT = r"""
import copy, json, os, sys
import torch
torch.set_num_threads(1)
sys.path[:0] = [HERE, os.path.dirname(HERE)]   # the test helpers (tests/model_pairs.py)
import deepspeed
from lxmert_fast import LxmertConfig, LxmertForPreTraining
from compat_testutil import TINY, inputs, randomize_
from test_compat_checkpointing import pretraining_labels

base = randomize_(LxmertForPreTraining(LxmertConfig(**TINY, kernel_impl="torch")))
deepspeed.init_distributed(dist_backend="gloo")
result = {}
for name, stage, ckpt in (("plain", 0, False), ("zero2_ckpt", 2, True), ("zero3_ckpt", 3, True)):
    model = copy.deepcopy(base)
    if ckpt:
        model.gradient_checkpointing_enable()
    ds = {"train_batch_size": 3, "train_micro_batch_size_per_gpu": 3, "steps_per_print": 10**6,
          "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0}}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds)
    losses = []
    for step in range(3):
        torch.manual_seed(100 + step)  # dropout on: the same masks in every run
        out = engine(**inputs(), **pretraining_labels(TINY))
        engine.backward(out.loss)
        engine.step()
        losses.append(out.loss.item())
    result[name] = losses
print("RESULT " + json.dumps(result))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_checkpointing_under_zero2_and_zero3():
    pytest.importorskip("deepspeed")
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.update(DS_ACCELERATOR="cpu", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
               LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", f"HERE = {HERE!r}\n" + ZERO_SCRIPT], env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-6000:]
    result = json.loads(lines[-1][len("RESULT "):])
    plain = result["plain"]
    assert len(set(plain)) == 3  # the loss moves
    for name in ("zero2_ckpt", "zero3_ckpt"):
        for step, (a, b) in enumerate(zip(plain, result[name])):
            assert abs(a - b) <= 1e-5 * abs(a), f"{name} step {step}: loss {b} vs {a}"


def test_every_n_layers_and_refused_offload():
    """transformers 5's ``activation_checkpointing_enable(kwargs, every_n_layers, offload)``."""
    model = randomize_(LxmertForPreTraining(LxmertConfig(**TINY, kernel_impl="torch"))).train()
    model.activation_checkpointing_enable(every_n_layers=2)
    calls = _counting(model)
    model(**inputs())[0].sum().backward()
    assert len(calls) == 5  # 3 layers run; the 1st and 3rd (language, cross) recomputed
    with pytest.raises(ValueError, match="offload=True"):
        model.activation_checkpointing_enable(offload=True)
    with pytest.raises(ValueError, match="every_n_layers=0"):
        model.activation_checkpointing_enable(every_n_layers=0)
