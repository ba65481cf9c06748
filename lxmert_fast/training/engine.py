"""DeepSpeed engine construction, task-agnostic (pretraining and fine-tuning share it).

`deepspeed.initialize(model, optimizer, lr_scheduler, config)` with an optimizer and schedule we
build: torch.optim.AdamW (fused, CUDA and CPU) with BERT's no-decay groups (biases and LayerNorm
weights, as the original's BertAdam set-up), and the warm-up + linear-decay LambdaLR. Handing
DeepSpeed the config's "AdamW" instead would JIT-build FusedAdam (~90 s on CPU).
"""
import torch

from lxmert_fast.data.batch import KeepDtype

from . import dist_watch
from . import ds_config as dsc
from .schedule import build_scheduler

NO_DECAY = ("bias", "LayerNorm.weight", "LayerNorm.bias", "layer_norm.weight", "layer_norm.bias")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if any(name.endswith(n) for n in NO_DECAY) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_engine(model: torch.nn.Module, ds_config: dict, total_steps: int,
                 warmup_ratio: float = 0.05, lr: float = None):
    """-> DeepSpeed engine. `ds_config` must be validated (ds_config.validate); its optimizer
    section (if any) parameterises our AdamW and is removed from what DeepSpeed sees."""
    import deepspeed

    cfg = dict(ds_config)
    opt_args = dsc.optimizer_params(cfg)
    if lr is not None:
        opt_args["lr"] = lr
    weight_decay = opt_args.pop("weight_decay")
    # fused AdamW (one kernel over all parameters) on CUDA and CPU: on this 2-core CPU 22 ms
    # vs 105 ms per step of the for-loop implementation for the small model's 6.7M parameters
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), fused=True, **opt_args)
    scheduler = build_scheduler(optimizer, total_steps, warmup_ratio)
    with dist_watch.waiting("starting the DeepSpeed engine (initial weights broadcast)"):
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                               lr_scheduler=scheduler, config=cfg)
    return engine


def engine_dtype(engine) -> torch.dtype:
    if engine.bfloat16_enabled():
        return torch.bfloat16
    if engine.fp16_enabled():
        return torch.float16
    return torch.float32


def to_device(batch, device, dtype: torch.dtype):
    """Move a nested batch (dicts, tuples, lists of tensors) to `device`; floating tensors are
    cast to the engine's compute dtype (DeepSpeed casts the model, not its inputs), except in a
    KeepDtype dict (a PackedVisual, which the step unpacks and casts on the device: float16
    crosses once; the float32 loss-normalisation factors)."""
    if isinstance(batch, KeepDtype):
        return type(batch)({k: v.to(device=device, non_blocking=True)
                            if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
    if isinstance(batch, torch.Tensor):
        if batch.is_floating_point():
            return batch.to(device=device, dtype=dtype, non_blocking=True)
        return batch.to(device=device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device, dtype) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, dtype) for v in batch)
    return batch
