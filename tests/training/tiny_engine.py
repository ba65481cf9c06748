"""A real single-process CPU DeepSpeed engine around a toy model, for the in-process
checkpoint tests (needs the session's process group: conftest.process_group)."""
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
