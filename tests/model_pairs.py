"""Shared by tests/model and tests/compat (importable from both: tests/ is on sys.path through
tests/conftest.py): transformers' config from ours, and the random weights that make every path
of a (ours, transformers') model pair matter."""
import torch

# config fields transformers' LxmertConfig does not have
OURS_ONLY = ("kernel_impl", "qa_loss", "layer_norm_eps", "task_itc", "itc_dim",
             "itc_temperature")


def hf_config(**kwargs):
    from transformers import LxmertConfig as HFConfig

    return HFConfig(**{k: v for k, v in kwargs.items() if k not in OURS_ONLY})


def randomize_(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Random weights everywhere (biases and LayerNorms too) so every path is exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.05
            p.copy_(1.0 + noise if name.endswith("LayerNorm.weight") or "layer_norm.weight" in name
                    else noise * 4 if p.dim() == 1 else noise)
    return model
