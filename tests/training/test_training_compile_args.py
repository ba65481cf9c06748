"""--compile: the mode each flag gives on each device and ZeRO stage (ZeRO-3: eager, with a note
naming why), bad values named, and the compiled forward used only for training calls."""
import pytest
import torch

from lxmert_fast.training import args as cli
from lxmert_fast.training.compile import compile_training_forward, compiled_mode, resolve


def test_modes_per_device_and_zero_stage():
    notes = []
    assert resolve("auto", "cpu", 0, notes.append) is None
    assert resolve("auto", "cuda", 2, notes.append) == "reduce-overhead"
    assert resolve("off", "cuda", 2, notes.append) is None
    assert resolve("max-autotune", "cuda", 1, notes.append) == "max-autotune"
    assert resolve("default", "cpu", 2, notes.append) == "default"
    assert notes == []
    assert resolve("default", "cuda", 3, notes.append) is None
    assert "--compile default: DeepSpeed ZeRO-3" in notes[0] and "eagerly" in notes[0]
    assert resolve("reduce-overhead", "cpu", 0, notes.append) == "reduce-overhead"
    assert "CUDA graphs need CUDA" in notes[1]


def test_bad_values_are_named():
    with pytest.raises(ValueError, match="--compile='fast' is not one of"):
        resolve("fast", "cuda", 2)
    with pytest.raises(ValueError, match="--compile='fast' is not one of"):
        cli.PretrainArgs(compile="fast")
    with pytest.raises(SystemExit):
        cli.parse(cli.PretrainArgs, cli.pretrain_parser(), ["--compile", "fast"])


def test_only_training_calls_are_compiled(monkeypatch):
    calls = []

    def fake_compile(fn, **kwargs):
        calls.append(kwargs)
        return lambda *a, **k: ("compiled", fn(*a, **k))
    monkeypatch.setattr(torch, "compile", fake_compile)
    model = torch.nn.Linear(2, 2)
    compile_training_forward(model, "default")
    assert calls == [dict(mode="default", fullgraph=True, dynamic=False)]
    assert compiled_mode(model) == "default"
    x = torch.ones(1, 2)
    assert model(x)[0] == "compiled"
    with torch.no_grad():
        assert isinstance(model(x), torch.Tensor)
    model.eval()
    assert isinstance(model(x), torch.Tensor)
    assert sorted(model.state_dict()) == ["bias", "weight"]
    with pytest.raises(RuntimeError, match="already compiled"):
        compile_training_forward(model, "default")
