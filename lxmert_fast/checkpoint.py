"""Checkpoints: transformers-format directories and the original LXMERT repository's files.

- ``save_pretrained(model, dir)`` writes ``config.json`` + ``model.safetensors`` (or
  ``pytorch_model.bin``) that transformers' ``from_pretrained`` loads; the tied MLM decoder weight
  is omitted, as transformers does.
- ``read_state_dict(dir)`` reads such a directory (ours or one transformers wrote, sharded
  safetensors included); ``adapt_prefix`` is transformers' base-model prefix rule (a head model's
  weights into ``LxmertModel``, a backbone's into a head model). ``from_pretrained`` itself, with
  transformers' semantics, is ``lxmert_fast.modeling_loading``.
- ``load_original_state_dict(model, source)`` maps the original repository's names
  (github.com/airsplay/lxmert: ``module.`` from DataParallel, ``bert.`` for the backbone,
  fine-tuned ``lxrt_encoder.model.bert.`` and ``logit_fc.``) onto ours.

``check_and_load`` (the original checkpoints' loader) raises ``CheckpointError`` listing missing,
unexpected or wrongly shaped keys.
"""
import json
import os
from typing import Dict, Iterable, Optional, Union

import torch
from torch import nn


SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
PREFIX = "lxmert."
TIED_KEY = "cls.predictions.decoder.weight"


class CheckpointError(ValueError):
    """A checkpoint does not fit the model: the message lists the offending keys."""


def _listing(title: str, keys: Iterable[str], limit: int = 20) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit
                                        else "")
    return f"{title} ({len(keys)}): {shown}"


def tied_keys(model: nn.Module) -> set:
    """Keys whose tensor is shared with another key (transformers omits them when saving)."""
    return {TIED_KEY} if TIED_KEY in model.state_dict() and model.config.tie_word_embeddings \
        else set()


def check_and_load(model: nn.Module, state_dict: Dict[str, torch.Tensor], strict: bool = True,
                   source: str = "state_dict", only_prefix: Optional[str] = None) -> dict:
    """Load ``state_dict`` into ``model``; returns {"missing_keys", "unexpected_keys"}.

    Shape mismatches always raise; missing/unexpected keys raise when ``strict``. With
    ``only_prefix`` only the model's keys under it are expected (a backbone-only load)."""
    own = model.state_dict()
    expected = {k for k in own if only_prefix is None or k.startswith(only_prefix)}
    missing = expected - set(state_dict) - tied_keys(model)
    unexpected = set(state_dict) - set(own)
    if only_prefix is not None:
        unexpected = {k for k in unexpected if k.startswith(only_prefix)}
        state_dict = {k: v for k, v in state_dict.items() if k in expected}
    shapes = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
              for k, v in state_dict.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    problems = []
    if shapes:
        problems.append(_listing("shape mismatches", shapes))
    if strict and missing:
        problems.append(_listing("missing keys", missing))
    if strict and unexpected:
        problems.append(_listing("unexpected keys", unexpected))
    if problems:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: "
                              + "; ".join(problems))
    model.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return {"missing_keys": sorted(missing), "unexpected_keys": sorted(unexpected)}


def _read_safetensors(path: str) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path, device="cpu")


def read_state_dict(directory: str, use_safetensors: Optional[bool] = None,
                    weights_only: bool = True) -> Dict[str, torch.Tensor]:
    """The weights of a transformers-format directory (safetensors, sharded or not, or .bin);
    ``use_safetensors`` True reads only safetensors, False only the .bin (transformers')."""
    safe, index, binary = (os.path.join(directory, n) for n in
                           (SAFE_WEIGHTS_NAME, SAFE_INDEX_NAME, WEIGHTS_NAME))
    if use_safetensors is not False and os.path.isfile(safe):
        return _read_safetensors(safe)
    if use_safetensors is not False and os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        state = {}
        for shard in shards:
            state.update(_read_safetensors(os.path.join(directory, shard)))
        return state
    if not use_safetensors and os.path.isfile(binary):
        return torch.load(binary, map_location="cpu", weights_only=weights_only)
    wanted = {None: f"{SAFE_WEIGHTS_NAME}, {SAFE_INDEX_NAME} or {WEIGHTS_NAME}",
              True: f"{SAFE_WEIGHTS_NAME} or {SAFE_INDEX_NAME} (use_safetensors=True)",
              False: f"{WEIGHTS_NAME} (use_safetensors=False)"}[use_safetensors]
    raise FileNotFoundError(f"no {wanted} in {directory}")


def adapt_prefix(model: nn.Module, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """transformers' base-model prefix rule between ``lxmert.``-prefixed and backbone keys."""
    wants_prefix = any(k.startswith(PREFIX) for k in model.state_dict())
    has_prefix = any(k.startswith(PREFIX) for k in state_dict)
    if has_prefix and not wants_prefix:  # head-model checkpoint -> LxmertModel
        return {k[len(PREFIX):]: v for k, v in state_dict.items() if k.startswith(PREFIX)}
    if wants_prefix and not has_prefix:  # backbone checkpoint -> head model
        return {PREFIX + k: v for k, v in state_dict.items()}
    return state_dict


def save_pretrained(model: nn.Module, save_directory: str, safe_serialization: bool = True,
                    state_dict: Optional[Dict[str, torch.Tensor]] = None) -> str:
    """Write config.json and the weights (``state_dict`` or the model's; tied decoder omitted);
    returns the weights path."""
    os.makedirs(save_directory, exist_ok=True)
    model.config.architectures = [type(model).__name__]
    model.config.dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    model.config.save_pretrained(save_directory)
    skip = tied_keys(model)
    source = model.state_dict() if state_dict is None else state_dict
    state = {k: v.detach().to("cpu").contiguous() for k, v in source.items() if k not in skip}
    name = SAFE_WEIGHTS_NAME if safe_serialization else WEIGHTS_NAME
    path = os.path.join(save_directory, name)
    tmp = path + ".tmp"
    if safe_serialization:
        from safetensors.torch import save_file

        save_file(state, tmp, metadata={"format": "pt"})
    else:
        torch.save(state, tmp)
    os.replace(tmp, path)
    other = os.path.join(save_directory, WEIGHTS_NAME if safe_serialization else SAFE_WEIGHTS_NAME)
    if os.path.isfile(other):  # a stale file of the other format would shadow or confuse loads
        os.remove(other)
    return path


def map_original_keys(model: nn.Module,
                      state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename the original repository's keys to this model's names."""
    backbone = "" if not any(k.startswith(PREFIX) for k in model.state_dict()) else PREFIX
    head = "answer_head.logit_fc." if hasattr(model, "answer_head") else "logit_fc."
    out = {}
    for key, value in state_dict.items():
        new = key
        while new.startswith("module."):
            new = new[len("module."):]
        new = new.replace(".gamma", ".weight").replace(".beta", ".bias") \
            if new.endswith((".gamma", ".beta")) else new
        if new.startswith("lxrt_encoder.model.bert."):
            new = backbone + new[len("lxrt_encoder.model.bert."):]
        elif new.startswith("bert."):
            new = backbone + new[len("bert."):]
        elif new.startswith("logit_fc."):
            new = head + new[len("logit_fc."):]
        if new in out:
            raise CheckpointError(f"original checkpoint: keys collide on {new!r} after mapping")
        out[new] = value
    return out


def load_original_state_dict(model: nn.Module, source: Union[str, Dict[str, torch.Tensor]],
                             backbone_only: bool = False) -> dict:
    """Load an original-repository checkpoint (a path to a ``.pth`` or a state dict).

    ``backbone_only`` loads only the encoder (``bert.``) weights, all of which must be present,
    leaving the heads as they are: the original's way of starting fine-tuning from
    ``Epoch20_LXRT.pth``. Otherwise every key must match."""
    name = source if isinstance(source, str) else "original state_dict"
    if isinstance(source, str):
        source = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(source, dict):
        raise CheckpointError(f"{name}: expected a state dict, got {type(source).__name__}")
    mapped = map_original_keys(model, source)
    has_prefix = any(k.startswith(PREFIX) for k in model.state_dict())
    only = (PREFIX if has_prefix else None) if backbone_only else None
    if backbone_only and not has_prefix:  # LxmertModel: drop the heads of a full checkpoint
        own = model.state_dict()
        mapped = {k: v for k, v in mapped.items() if k in own}
    return check_and_load(model, mapped, strict=True, source=name, only_prefix=only)
