"""Activation checkpointing (``gradient_checkpointing_enable``): peak memory and step time of a
pretraining step with and without it, beside transformers' LXMERT, which refuses it.

The step: zero_grad, forward with all five losses (dropout 0.1, reseeded each step), backward,
AdamW. Variants: transformers ``LxmertForPreTraining`` eager (baseline), ours without
checkpointing (``ours``), ours with it (``ours_ckpt``: each encoder layer recomputed in the
backward). ``ours_ckpt`` records what transformers' ``gradient_checkpointing_enable()`` raises and
checks in the same run that its first loss equals ``ours``' (same weights, same dropout masks);
it then times the same model with checkpointing on and off alternately (A B A B:
``interleaved_ratio`` = time off / time on), which a shared machine's drifting load does not bias.

Settings: CPU, the base model (9/5/5 layers, hidden 768), batch 64, 20 tokens, 36 objects, fp32,
``kernel_impl="torch"``; GPU, batch 256 in bf16 autocast with the kernels; under
``--benchmark-disable`` a tiny config at batch 2. Peak memory: on CPU the process's peak resident
set (``VmHWM``, reset through ``/proc/self/clear_refs`` after a first step allocated the
optimizer state; ``peak_step_gb`` is the peak over the resident set before the timed steps: the
activations, gradients and temporaries of a step); on the GPU ``max_memory_allocated``.
"""
import ctypes
import gc
import re

import pytest
import torch
import transformers

import lxmert_fast
from benchmarks.common import (cuda_peak_memory_gb, interleaved_ratio, record,
                               reset_peak_memory, timed)
from benchmarks.model_factory import TINY, Setting, make_batch

VARIANTS = ("hf_eager", "ours", "ours_ckpt")
ROUNDS = {"gpu": 10, "cpu": 2, "smoke": 1}
_FIRST_LOSS = {}  # variant -> loss of the first (untimed) step


def setting_for(quick: bool) -> Setting:
    if torch.cuda.is_available():
        return Setting("gpu", "cuda", 256, torch.bfloat16, "auto")
    if quick:
        return Setting("smoke", "cpu", 2, None, "torch", seq_len=9, num_boxes=6, config=TINY)
    return Setting("cpu", "cpu", 64, None, "torch")


def _rss_gb(field: str) -> float:
    with open("/proc/self/status", encoding="utf-8") as f:
        return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1)) / 2**20


def _reset_peak() -> float:
    """Free what can be freed, reset the peak; returns the resident (CPU) or allocated (GPU) GB
    the step starts from."""
    gc.collect()
    if torch.cuda.is_available():
        reset_peak_memory()
        return torch.cuda.memory_allocated() / 2**30
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")  # resets VmHWM to the current resident set
    except OSError as err:  # a kernel or container that refuses: the peak is since start
        pytest.skip(f"cannot reset the peak resident set (/proc/self/clear_refs: {err})")
    return _rss_gb("VmRSS")


def _peak_gb() -> float:
    return cuda_peak_memory_gb() if torch.cuda.is_available() else _rss_gb("VmHWM")


def build(variant: str, setting: Setting):
    torch.manual_seed(0)
    if variant.startswith("hf"):
        model = transformers.LxmertForPreTraining(transformers.LxmertConfig(**setting.config))
    else:
        model = lxmert_fast.LxmertForPreTraining(
            lxmert_fast.LxmertConfig(kernel_impl=setting.impl, **setting.config))
        if variant == "ours_ckpt":
            model.gradient_checkpointing_enable()
    return model.to(setting.device).train()


def transformers_refusal() -> str:
    """What transformers' LXMERT says to ``gradient_checkpointing_enable()`` (a tiny model: the
    refusal is the class's, before any layer is touched)."""
    tiny = transformers.LxmertForPreTraining(transformers.LxmertConfig(**TINY))
    try:
        tiny.gradient_checkpointing_enable()
    except ValueError as err:
        return f"ValueError: {err}"
    raise AssertionError("transformers' LXMERT now supports gradient checkpointing: compare it")


def train_step(model, batch, opt, setting):
    def step():
        torch.manual_seed(1)  # the same dropout masks every step and in every variant
        opt.zero_grad(set_to_none=True)
        with torch.autocast(setting.device, dtype=setting.amp_dtype,
                            enabled=setting.amp_dtype is not None):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        return loss
    return step


def toggled(model, step, on: bool):
    """``step`` with checkpointing switched on or off first (the same model and optimizer)."""
    def run():
        if on:
            model.gradient_checkpointing_enable()
        else:
            model.gradient_checkpointing_disable()
        return step()
    return run


@pytest.mark.parametrize("variant", VARIANTS)
def test_checkpointing_step(benchmark, quick, variant):
    setting = setting_for(quick)
    benchmark.group = f"checkpointing-{setting.name}"
    figures = {}
    if variant == "ours_ckpt":
        figures["transformers_gradient_checkpointing"] = transformers_refusal()
    model = build(variant, setting)
    batch = make_batch(setting, lxmert_fast.LxmertConfig(**setting.config))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)
    step = train_step(model, batch, opt, setting)
    _FIRST_LOSS[variant] = step().item()  # allocates gradients and the optimizer state
    if variant == "ours_ckpt" and "ours" in _FIRST_LOSS:
        assert _FIRST_LOSS["ours_ckpt"] == _FIRST_LOSS["ours"], _FIRST_LOSS
    start = _reset_peak()
    benchmark.pedantic(timed(step), rounds=ROUNDS[setting.name], warmup_rounds=0)
    peak = _peak_gb()
    figures.update(peak_memory_gb=peak, peak_step_gb=peak - start, first_loss=_FIRST_LOSS[variant],
                   gradient_checkpointing=variant == "ours_ckpt")
    if variant == "ours_ckpt":
        figures.update(interleaved_ratio(toggled(model, step, True), toggled(model, step, False),
                                         rounds=ROUNDS[setting.name] + 1))
    baselines = {"hf_eager": (), "ours": ("hf_eager",), "ours_ckpt": ("ours", "hf_eager")}
    record(benchmark, shapes=setting.shapes, variant=variant, baselines=baselines[variant],
           samples=setting.batch, **figures)
    del model, opt, step
    gc.collect()
