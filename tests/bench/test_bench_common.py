"""benchmarks/common.py (device info, timed, record's figures and ratios) and the model
benchmark factories (valid random batches, FLOPs counted from the config)."""
import time
from types import SimpleNamespace

import pytest
import torch

from benchmarks import common
from benchmarks.model_factory import Setting, forward_flops, make_batch, setting_for
from lxmert_fast import LxmertConfig


def _fake_benchmark(group, variant, median, disabled=False):
    stats = SimpleNamespace(stats=SimpleNamespace(median=median))
    return SimpleNamespace(group=group, param=variant, name=f"test[{variant}]", disabled=disabled,
                           stats=None if disabled else stats, extra_info={})


def test_device_info_names_device_and_versions():
    info = common.device_info()
    assert info["torch"] == torch.__version__
    assert info["device_type"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert info["device"] and "logical cores" in info["cpu"]


def test_timed_returns_the_result():
    assert common.timed(lambda a, b=1: a + b)(2, b=3) == 5


def test_record_figures_and_ratio_to_baselines():
    base = _fake_benchmark("g-record", "eager", 4e-3)
    common.record(base, shapes={"x": torch.Size([2, 3]), "dtype": torch.bfloat16},
                  bytes_moved=8e6, samples=8)
    assert base.extra_info["role"] == "baseline"
    assert base.extra_info["shapes"] == {"x": [2, 3], "dtype": "bfloat16"}
    assert base.extra_info["GB/s"] == pytest.approx(2.0)
    assert base.extra_info["samples/s"] == pytest.approx(2000.0)
    fast = _fake_benchmark("g-record", "triton", 1e-3)
    info = common.record(fast, shapes={}, flops=2e9, baselines=("eager", "not_run"), err=0.5)
    assert info["ratio_vs_eager"] == pytest.approx(4.0) and "ratio_vs_not_run" not in info
    assert info["TFLOP/s"] == pytest.approx(2.0) and info["err"] == 0.5
    assert info["device"] == common.device_info()["device"]


def test_record_without_timing_keeps_device_and_shapes():
    info = common.record(_fake_benchmark("g-off", "triton", 1.0, disabled=True),
                         shapes={"B": 2}, bytes_moved=10, baselines=("eager",))
    assert info["shapes"] == {"B": 2} and "GB/s" not in info and "time_us" not in info
    assert common.benchmarks_disabled(SimpleNamespace(disabled=True))


def test_flops_match_design_figure():
    # DESIGN.md section 3: ~35.5 GFLOP per sample forward+backward (20 tokens, 36 objects)
    assert 3 * forward_flops(LxmertConfig(), 20, 36) / 1e9 == pytest.approx(35.5, abs=0.1)


def test_make_batch_is_valid():
    setting = Setting("cpu", "cpu", 8, None, "torch")
    cfg = LxmertConfig()
    b = make_batch(setting, cfg)
    assert b["input_ids"].shape == (8, 20) and b["visual_feats"].shape == (8, 36, 2048)
    assert (b["input_ids"][:, 0] == 101).all() and (b["input_ids"] < cfg.vocab_size).all()
    real = b["attention_mask"].bool()
    assert ((b["labels"] != -100) <= real).all() and (b["labels"] != -100).any()
    ids, weight = b["obj_labels"]["obj"]
    assert ids.max() < cfg.num_object_labels and (weight <= b["visual_attention_mask"]).all()
    feats, mask = b["obj_labels"]["feat"]
    assert feats.shape == b["visual_feats"].shape
    assert (b["visual_feats"][mask.bool()] == 0).all()  # masked objects are zeroed
    assert (b["visual_pos"][..., 2:] > b["visual_pos"][..., :2]).all()
    assert ((b["ans"] == -100) == (b["matched_label"] == 0)).all()
    assert torch.equal(make_batch(setting, cfg)["input_ids"], b["input_ids"])  # deterministic


def test_setting_for_this_machine():
    s = setting_for(quick=True)
    assert s.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert s.batch == (256 if s.device == "cuda" else 2)


def test_interleaved_ratio_alternates_and_compares():
    calls = []

    def fast():
        calls.append("fast")
        time.sleep(0.002)

    def slow():
        calls.append("baseline")
        time.sleep(0.02)

    out = common.interleaved_ratio(fast, slow, rounds=3)
    assert calls == ["fast", "baseline"] * 3 and out["interleaved_rounds"] == 3
    assert out["interleaved_ratio"] == pytest.approx(
        out["interleaved_baseline_s"] / out["interleaved_fast_s"])
    assert out["interleaved_ratio"] > 1.5
