"""Engines for in-process tests: a real single-process CPU DeepSpeed engine around a toy model
for the checkpoint tests (needs conftest.process_group), and PlainEngine for evaluation tests."""
import torch


def tiny_engine():
    from lxmert_fast.training import ds_config as dsc
    from lxmert_fast.training.engine import build_engine

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
    cfg = dsc.validate({"train_batch_size": 4}, world_size=1)
    return build_engine(model, cfg, total_steps=20, warmup_ratio=0.1, lr=1e-2)


def tiny_step(engine) -> float:
    """One optimizer step; inputs and dropout come from the global RNG (part of a checkpoint)."""
    loss = engine(torch.randn(4, 6)).pow(2).mean()
    engine.backward(loss)
    engine.step()
    return loss.item()


class PlainEngine:
    """The engine surface the evaluation uses (call, module, device, dtype flags) around a
    plain fp32 CPU module, for evaluating a model without DeepSpeed."""

    def __init__(self, model):
        self.module, self.device = model, torch.device("cpu")

    def __call__(self, **kw):
        return self.module(**kw)

    def bfloat16_enabled(self):
        return False

    def fp16_enabled(self):
        return False
