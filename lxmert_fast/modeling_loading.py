"""``from_pretrained`` with transformers' semantics, on local files only (nothing downloads).

``Cls.from_pretrained(pretrained_model_name_or_path, *model_args, config=None, state_dict=None,
dtype=None, torch_dtype=None, output_loading_info=False, ignore_mismatched_sizes=False, ...)``:
- the source: a transformers-format directory (config.json + safetensors, sharded or not, or
  pytorch_model.bin), a single weights file (the original repository's ``*_LXRT.pth``; its
  config from ``config=``, a config.json beside it, or the defaults, which are the original's
  architecture), or ``state_dict=`` (with ``config=``; the name may be None);
- keys: the original repository's names (``module.``, ``bert.``, ``lxrt_encoder.model.bert.``,
  ``logit_fc.``, ``gamma``/``beta``) are mapped to ours, then transformers' base-model prefix rule
  (``lxmert.``) applies both ways; the tied MLM decoder key is ignored (the embedding is the source);
- as transformers: weights the checkpoint lacks keep their fresh initialisation ("missing"),
  keys the model lacks are dropped ("unexpected"), both logged as a warning and returned with
  ``output_loading_info=True`` as ``{missing_keys, unexpected_keys, mismatched_keys,
  error_msgs}`` (sets, mismatches as (key, checkpoint shape, model shape), as transformers 5);
  a shape mismatch raises ``CheckpointError`` naming the key and both shapes unless
  ``ignore_mismatched_sizes`` (then the weight is initialised fresh and reported);
- ``dtype``/``torch_dtype`` (a torch dtype, its name, or "auto": the saved dtype; the default is
  "auto", as transformers 5), ``device_map`` (one device), the model in eval mode.
Keyword arguments that are config fields override the config; ``strict=True`` (ours) raises on
missing or unexpected keys. Hub-only arguments (``cache_dir``, ``token``, ...) have no effect.

``from_transformers(model)``: our equivalent of a transformers ``LxmertModel`` /
``LxmertForPreTraining`` / ``LxmertForQuestionAnswering`` instance, for code that keeps building
or loading transformers' classes: the config's LXMERT fields copied, the state dict loaded strictly
(every key, every shape), the input's device, dtype and train/eval mode. transformers is not
imported: the instance is read through its class name, ``config.to_dict()`` and ``state_dict()``.
"""
import copy
import dataclasses
import logging
import os
import re
from typing import Dict, Optional

import torch

from lxmert_fast import checkpoint as ckpt
from lxmert_fast.config import CONFIG_NAME, LxmertConfig

logger = logging.getLogger("lxmert_fast")

HUB_ONLY = frozenset({"cache_dir", "force_download", "local_files_only", "token", "proxies",
                      "resume_download", "use_auth_token", "trust_remote_code", "_from_auto",
                      "_from_pipeline", "low_cpu_mem_usage", "disable_mmap", "mirror"})
REFUSED = frozenset({"variant", "quantization_config", "gguf_file", "from_tf", "from_flax",
                     "tp_plan", "tp_size", "key_mapping", "offload_folder", "max_memory",
                     "fusion_config", "adapter_name", "adapter_kwargs"})
ATTN_IMPLEMENTATIONS = (None, "eager", "sdpa")
ORIGINAL_PREFIXES = ("module.", "bert.", "lxrt_encoder.")


def _source(cls, name, subfolder: str):
    """("dir" | "file" | None, path): where the weights come from."""
    if name is None:
        return None, None
    path = os.path.join(os.fspath(name), subfolder) if subfolder else os.fspath(name)
    if os.path.isdir(path):
        return "dir", path
    if os.path.isfile(path):
        return "file", path
    raise FileNotFoundError(
        f"{cls.__name__}.from_pretrained: {path!r} is not a local directory or file; "
        f"lxmert_fast loads local files only and downloads nothing (fetch a Hub model first, "
        f"e.g. `hf download {name} --local-dir DIR`, and pass DIR)")


def _config(cls, kind, path, config, overrides) -> LxmertConfig:
    if isinstance(config, (str, os.PathLike)):
        return LxmertConfig.from_pretrained(os.fspath(config), **overrides)
    if isinstance(config, LxmertConfig):  # a copy: the caller's config is not changed
        return dataclasses.replace(copy.deepcopy(config), **overrides)
    if config is not None:
        raise TypeError(f"{cls.__name__}.from_pretrained: config must be an LxmertConfig or a "
                        f"path, got {type(config).__name__}")
    if kind == "dir":
        return LxmertConfig.from_pretrained(path, **overrides)
    beside = os.path.join(os.path.dirname(path), CONFIG_NAME) if kind == "file" else None
    if beside and os.path.isfile(beside):
        return LxmertConfig.from_pretrained(beside, **overrides)
    if kind is None:
        raise ValueError(f"{cls.__name__}.from_pretrained(None, ...) needs config= (and "
                         f"state_dict=)")
    return LxmertConfig(**overrides)  # the original repository's .pth: its architecture


def _read_file(path: str, weights_only: bool) -> Dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        return ckpt._read_safetensors(path)
    state = torch.load(path, map_location="cpu", weights_only=weights_only)
    if not isinstance(state, dict):
        raise ckpt.CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def normalize_keys(model, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A checkpoint's keys in this model's names: the original repository's layout mapped,
    old ``gamma``/``beta`` LayerNorm names renamed, the ``lxmert.`` prefix added or removed."""
    if any(k.startswith(ORIGINAL_PREFIXES) for k in state):
        state = ckpt.map_original_keys(model, state)
    else:
        state = {re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", k)): v
                 for k, v in state.items()}
    state = ckpt.adapt_prefix(model, state)
    for key in ckpt.tied_keys(model):  # the tied decoder is the embedding: that one loads
        state.pop(key, None)
    return state


def _ignored(keys, patterns):
    return {k for k in keys if not any(re.search(p, k) for p in patterns or ())}


def compare(model, state: Dict[str, torch.Tensor]) -> dict:
    """transformers' loading info of ``state`` against ``model`` (nothing loaded)."""
    own = model.state_dict()
    missing = set(own) - set(state) - ckpt.tied_keys(model)
    unexpected = set(state) - set(own)
    mismatched = {(k, v.shape, own[k].shape) for k, v in state.items()
                  if k in own and v.shape != own[k].shape}
    return {"missing_keys": _ignored(missing, model._keys_to_ignore_on_load_missing),
            "unexpected_keys": _ignored(unexpected, model._keys_to_ignore_on_load_unexpected),
            "mismatched_keys": mismatched, "error_msgs": []}


def _shapes(mismatched) -> list:
    return [f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in sorted(mismatched)]


def _check(model, info, source, ignore_mismatched_sizes: bool, strict: bool):
    name = type(model).__name__
    if info["mismatched_keys"] and not ignore_mismatched_sizes:
        raise ckpt.CheckpointError(
            f"{source} does not fit {name}: "
            + ckpt._listing("shape mismatches", _shapes(info["mismatched_keys"]))
            + "; pass ignore_mismatched_sizes=True to initialise them fresh instead")
    problems = [ckpt._listing(title, info[key]) for title, key in
                (("missing keys", "missing_keys"), ("unexpected keys", "unexpected_keys"))
                if strict and info[key]]
    if problems:
        raise ckpt.CheckpointError(f"{source} does not fit {name} (strict=True): "
                                   + "; ".join(problems))


def _report(model, info, source):
    name = type(model).__name__
    if info["unexpected_keys"]:
        logger.warning("Some weights of the checkpoint at %s were not used when initializing %s: "
                       "%s. This is expected when the checkpoint comes from another head (e.g. "
                       "LxmertForPreTraining into LxmertForQuestionAnswering).", source, name,
                       ckpt._listing("unused", info["unexpected_keys"]))
    fresh = sorted(info["missing_keys"]) + [k for k, _, _ in sorted(info["mismatched_keys"])]
    if fresh:
        shapes = _shapes(info["mismatched_keys"])
        logger.warning("Some weights of %s were not initialized from the checkpoint at %s and "
                       "are newly initialized: %s%s. You should probably TRAIN this model on a "
                       "down-stream task before using it for predictions.", name, source,
                       ckpt._listing("new", fresh),
                       f" (shape mismatches: {'; '.join(shapes)})" if shapes else "")


def resolve_dtype(dtype, torch_dtype, config: LxmertConfig, state) -> torch.dtype:
    """The target dtype: ``dtype`` or its older name ``torch_dtype``; "auto" (the default) is
    the saved one (config.dtype, else the checkpoint's first floating tensor, else float32)."""
    if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
        raise ValueError(f"from_pretrained: dtype={dtype!r} and torch_dtype={torch_dtype!r} "
                         f"disagree (torch_dtype is the older name of dtype)")
    dtype = dtype if dtype is not None else torch_dtype if torch_dtype is not None else "auto"
    if dtype == "auto":
        floats = [v.dtype for v in state.values() if torch.is_floating_point(v)]
        dtype = config.dtype or (floats[0] if floats else torch.float32)
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype).replace("torch.", ""), None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(f"from_pretrained: dtype={dtype!r} is not a floating torch dtype")
    return resolved


def _device(device_map) -> Optional[torch.device]:
    if device_map is None:
        return None
    if isinstance(device_map, dict):
        if set(device_map) != {""}:
            raise ValueError(f"from_pretrained: device_map={device_map} splits the model; "
                             f"lxmert_fast places it on one device ({{'': device}})")
        device_map = device_map[""]
    if device_map == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device_map if not isinstance(device_map, int) else f"cuda:{device_map}")


def _loading_args(cls, kwargs) -> dict:
    """Split off transformers' loading arguments; what is left are config overrides."""
    for key in sorted(REFUSED & set(kwargs)):
        raise TypeError(f"{cls.__name__}.from_pretrained: {key}= is not supported by lxmert_fast")
    for key in HUB_ONLY & set(kwargs):
        kwargs.pop(key)
    revision = kwargs.pop("revision", None)
    if revision not in (None, "main"):
        raise ValueError(f"{cls.__name__}.from_pretrained: revision={revision!r}: a local "
                         f"directory has one revision; check it out there")
    attn = kwargs.pop("attn_implementation", None)
    if attn not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"{cls.__name__}.from_pretrained: attn_implementation={attn!r} is not "
                         f"one of {ATTN_IMPLEMENTATIONS} (the kernel is config.kernel_impl)")
    return {name: kwargs.pop(name, default) for name, default in
            (("subfolder", ""), ("use_safetensors", None), ("weights_only", True),
             ("device_map", None), ("strict", False))}


def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None,
                    state_dict=None, dtype=None, torch_dtype=None, output_loading_info=False,
                    ignore_mismatched_sizes=False, **kwargs):
    """Build ``cls`` and load its weights with transformers' semantics (module docstring)."""
    opts = _loading_args(cls, kwargs)
    kind, path = _source(cls, pretrained_model_name_or_path, opts["subfolder"])
    config = _config(cls, kind, path, config, kwargs)
    if state_dict is not None:
        state, source = dict(state_dict), "the given state_dict"
    elif kind == "dir":
        state, source = ckpt.read_state_dict(path, opts["use_safetensors"],
                                             opts["weights_only"]), path
    elif kind == "file":
        state, source = read_weights(path, opts["weights_only"]), path
    else:
        raise ValueError(f"{cls.__name__}.from_pretrained(None, ...) needs state_dict=")
    target = resolve_dtype(dtype, torch_dtype, config, state)
    model = cls(config, *model_args).to(target)
    info = load_into(model, normalize_keys(model, state), source, ignore_mismatched_sizes,
                     opts["strict"])
    device = _device(opts["device_map"])
    if device is not None:
        model.to(device)
    model.config.dtype = str(target).replace("torch.", "")
    model.name_or_path = os.fspath(pretrained_model_name_or_path or "")
    model.eval()
    return (model, info) if output_loading_info else model


def load_into(model, state: Dict[str, torch.Tensor], source: str,
              ignore_mismatched_sizes: bool = False, strict: bool = False) -> dict:
    """Load ``state`` (this model's key names: ``normalize_keys``) into a built model with
    transformers' semantics: checked, loaded, decoder re-tied, reported; returns the info."""
    info = compare(model, state)
    _check(model, info, source, ignore_mismatched_sizes, strict)
    skip = {k for k, _, _ in info["mismatched_keys"]}
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in state.items() if k in own and k not in skip},
                          strict=False)
    model.tie_weights()
    _report(model, info, source)
    return info


def read_weights(path: str, weights_only: bool = True) -> Dict[str, torch.Tensor]:
    """The raw state dict of a transformers-format directory or a single weights file."""
    if os.path.isdir(path):
        return ckpt.read_state_dict(path, None, weights_only)
    if os.path.isfile(path):
        return _read_file(path, weights_only)
    raise FileNotFoundError(f"{path}: no such directory or file")


# ---- from a transformers instance -----------------------------------------------------------
CONVERTIBLE = ("LxmertModel", "LxmertForPreTraining", "LxmertForQuestionAnswering")


def _our_class(name: str):
    import lxmert_fast

    return getattr(lxmert_fast, name)


def config_from_transformers(hf_config, **overrides) -> LxmertConfig:
    """An ``LxmertConfig`` with every LXMERT field of transformers' config (its generic
    PretrainedConfig state, e.g. the attention implementation, is not ours to keep)."""
    data = hf_config.to_dict()
    names = set(LxmertConfig.field_names())
    fields = {k: v for k, v in data.items() if k in names}
    if fields.get("dtype") is not None:
        fields["dtype"] = str(fields["dtype"]).replace("torch.", "")
    return LxmertConfig(**{**fields, **overrides})


def from_transformers(model: torch.nn.Module, **config_overrides) -> torch.nn.Module:
    """Our model with ``model``'s class, weights, device, dtype and mode. ``config_overrides``
    set our own fields (``kernel_impl``, ``qa_loss``, ...)."""
    name = type(model).__name__
    if name not in CONVERTIBLE or not hasattr(model, "config"):
        raise TypeError(f"from_transformers: expected a transformers {' / '.join(CONVERTIBLE)} "
                        f"instance, got {type(model).__module__}.{name}")
    config = config_from_transformers(model.config, **config_overrides)
    ours = _our_class(name)(config)
    params = list(model.parameters())
    device, dtype = params[0].device, params[0].dtype
    ours.to(dtype)
    state = model.state_dict()
    missing, unexpected = ours.load_state_dict(state, strict=False)
    if missing or unexpected:  # e.g. a transformers model with extra modules attached
        raise ckpt.CheckpointError(f"from_transformers: {name} does not fit ours: " + "; ".join(
            ckpt._listing(t, k) for t, k in (("missing keys", missing),
                                             ("unexpected keys", unexpected)) if k))
    ours.tie_weights()
    ours.to(device)
    ours.name_or_path = getattr(model, "name_or_path", "") or ""
    return ours.train(model.training)

