"""DeepSpeed config (ds_config JSON) loading, strict validation and per-machine defaults.

DeepSpeed 0.19.8 ignores unknown top-level keys and coerces types ("true" -> True), and checks
the batch-size triple only after the process group exists. Here a config is checked before any
process group starts: unknown keys (top level, and inside `zero_optimization`, `bf16`, `fp16`,
`optimizer`) are rejected naming the nearest valid key; values must have the field's JSON type;
train_batch_size = train_micro_batch_size_per_gpu x gradient_accumulation_steps x world size.

The optimizer is always torch.optim.AdamW built by us (the config's `optimizer.params` feed it;
DeepSpeed's "AdamW" would become FusedAdam, a ~90 s JIT build on CPU) and the LR schedule is the
recipe's warm-up + linear decay, so a `scheduler` section is refused.
"""
import difflib
import json
import typing

# Top-level keys read by DeepSpeed 0.19.8 (deepspeed/runtime/config.py and the sub-configs).
TOP_LEVEL_KEYS = frozenset("""
train_batch_size train_micro_batch_size_per_gpu gradient_accumulation_steps
managed_gradient_accumulation steps_per_print dump_state disable_python_gc disable_allgather
communication_data_type seq_parallel_communication_data_type prescale_gradients
gradient_predivide_factor gradient_allreduce_op zero_optimization activation_checkpointing
comms_logger tensorboard wandb csv_monitor comet gradient_clipping fp16 bf16 bfloat16
torch_autocast optimizer zero_allow_untested_optimizer zero_force_ds_cpu_optimizer scheduler
flops_profiler wall_clock_breakdown memory_breakdown autotuning use_data_before_expert_parallelism
hybrid_engine pipeline data_efficiency curriculum_learning checkpoint data_types aio
dataloader_drop_last log_level datastates weight_quantization compile timers tensor_parallel
expert_parallel elasticity amp sparse_attention compression_training progressive_layer_drop
eigenvalue quantize_training nebula sequence_parallel_size
""".split())

SCALAR_TYPES = {
    "train_batch_size": int, "train_micro_batch_size_per_gpu": int,
    "gradient_accumulation_steps": int, "steps_per_print": int, "gradient_clipping": float,
    "wall_clock_breakdown": bool, "memory_breakdown": bool, "prescale_gradients": bool,
    "gradient_predivide_factor": float, "zero_allow_untested_optimizer": bool,
    "dataloader_drop_last": bool, "disable_allgather": bool,
}
OPTIMIZER_PARAMS = {"lr": float, "betas": list, "eps": float, "weight_decay": float}
OPTIMIZER_TYPES = ("AdamW", "Adam")
BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


class DsConfigError(ValueError):
    """A ds_config that DeepSpeed would misread or reject later."""


# Names other frameworks use for a DeepSpeed key (suggested before the spelling-nearest one).
ALIASES = {"learning_rate": "lr", "max_grad_norm": "gradient_clipping",
           "grad_clip": "gradient_clipping", "batch_size": "train_batch_size",
           "micro_batch_size": "train_micro_batch_size_per_gpu",
           "grad_accum": "gradient_accumulation_steps", "zero": "zero_optimization"}


def _nearest(key: str, valid) -> str:
    if ALIASES.get(key) in valid:
        return f"did you mean {ALIASES[key]!r}?"
    match = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.4)
    return f"did you mean {match[0]!r}?" if match else f"valid keys: {sorted(valid)}"


def _type_ok(value, expected) -> bool:
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _check_keys(section: dict, valid, where: str, source: str) -> None:
    if not isinstance(section, dict):
        raise DsConfigError(f"ds_config {source}: {where or 'the config'} must be a JSON object, "
                            f"got {type(section).__name__} {section!r}")
    for key in section:
        if key not in valid:
            name = f"{where}.{key}" if where else key
            raise DsConfigError(f"ds_config {source}: unknown key {name!r} "
                                f"({_nearest(key, valid)})")


def _pydantic_fields(model) -> dict:
    """field name (and alias) -> annotation of a DeepSpeed pydantic config model."""
    fields = {}
    for name, field in model.model_fields.items():
        fields[name] = field.annotation
        if field.alias:
            fields[field.alias] = field.annotation
    return fields


def _check_value(value, annotation, name: str, source: str) -> None:
    import enum

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return
        annotation = next(a for a in args if a is not type(None))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        allowed = [m.value for m in annotation]
        if value not in allowed or isinstance(value, bool):
            raise DsConfigError(f"ds_config {source}: {name}={value!r} is not one of {allowed}")
        return
    if hasattr(annotation, "model_fields"):
        _check_model(value, annotation, name, source)
        return
    expected = annotation if annotation in (bool, int, float, str) else None
    if expected is not None and not _type_ok(value, expected):
        raise DsConfigError(f"ds_config {source}: {name} must be {expected.__name__}, "
                            f"got {type(value).__name__} {value!r}")


def _check_model(section, model, where: str, source: str) -> None:
    fields = _pydantic_fields(model)
    _check_keys(section, fields, where, source)
    for key, value in section.items():
        _check_value(value, fields[key], f"{where}.{key}", source)


def _check_optimizer(section: dict, source: str) -> None:
    _check_keys(section, {"type", "params"}, "optimizer", source)
    kind = section.get("type", "AdamW")
    if kind not in OPTIMIZER_TYPES:
        raise DsConfigError(f"ds_config {source}: optimizer.type={kind!r} is not supported "
                            f"(torch AdamW is used; allowed: {list(OPTIMIZER_TYPES)})")
    params = section.get("params", {})
    _check_keys(params, OPTIMIZER_PARAMS, "optimizer.params", source)
    for key, value in params.items():
        if not _type_ok(value, OPTIMIZER_PARAMS[key]):
            raise DsConfigError(f"ds_config {source}: optimizer.params.{key} must be "
                                f"{OPTIMIZER_PARAMS[key].__name__}, got {value!r}")
    betas = params.get("betas", [0.9, 0.999])
    if len(betas) != 2 or not all(_type_ok(b, float) for b in betas):
        raise DsConfigError(f"ds_config {source}: optimizer.params.betas must be two numbers, "
                            f"got {betas!r}")


def resolve_batch(cfg: dict, world_size: int, source: str) -> tuple:
    """Complete the batch triple as DeepSpeed does; raise if it is inconsistent."""
    train, micro, gas = (cfg.get(k) for k in BATCH_KEYS)
    for key, value in zip(BATCH_KEYS, (train, micro, gas)):
        if value is not None and value < 1:
            raise DsConfigError(f"ds_config {source}: {key}={value} must be >= 1")
    if train is None and micro is None:
        raise DsConfigError(f"ds_config {source}: set train_batch_size or "
                            f"train_micro_batch_size_per_gpu")
    if micro is None:
        gas = gas or 1
        micro = train // (gas * world_size)
    elif gas is None:
        gas = max(1, train // (micro * world_size)) if train is not None else 1
    train = micro * gas * world_size if train is None else train
    if micro < 1 or train != micro * gas * world_size:
        raise DsConfigError(
            f"ds_config {source}: inconsistent batch sizes: train_batch_size={train} != "
            f"train_micro_batch_size_per_gpu={micro} x gradient_accumulation_steps={gas} x "
            f"world size {world_size}")
    return train, micro, gas


def validate(cfg: dict, world_size: int, source: str = "<dict>") -> dict:
    """Return a checked copy of `cfg` with the batch triple filled in."""
    from deepspeed.runtime.precision_config import DeepSpeedBF16Config, DeepSpeedFP16Config
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    _check_keys(cfg, TOP_LEVEL_KEYS, "", source)
    for key, expected in SCALAR_TYPES.items():
        if key in cfg and not _type_ok(cfg[key], expected):
            raise DsConfigError(f"ds_config {source}: {key} must be {expected.__name__}, "
                                f"got {type(cfg[key]).__name__} {cfg[key]!r}")
    for key, model in (("zero_optimization", DeepSpeedZeroConfig), ("bf16", DeepSpeedBF16Config),
                       ("fp16", DeepSpeedFP16Config), ("bfloat16", DeepSpeedBF16Config)):
        if key in cfg:
            _check_model(cfg[key], model, key, source)
    if "optimizer" in cfg:
        _check_optimizer(cfg["optimizer"], source)
    if "scheduler" in cfg:
        raise DsConfigError(f"ds_config {source}: 'scheduler' is not used: the schedule is the "
                            f"recipe's warm-up + linear decay (--warmup_ratio, --max_steps)")
    if precision(cfg) == "fp16+bf16":
        raise DsConfigError(f"ds_config {source}: fp16.enabled and bf16.enabled are both true")
    out = json.loads(json.dumps(cfg))
    out.update(zip(BATCH_KEYS, resolve_batch(cfg, world_size, source)))
    out.setdefault("gradient_clipping", 1.0)
    out.setdefault("steps_per_print", 10**9)
    return out


def precision(cfg: dict) -> str:
    fp16 = cfg.get("fp16", {}).get("enabled", False)
    bf16 = cfg.get("bf16", cfg.get("bfloat16", {})).get("enabled", False)
    return "fp16+bf16" if fp16 and bf16 else "fp16" if fp16 else "bf16" if bf16 else "fp32"


def load(path: str, world_size: int) -> dict:
    try:
        with open(path) as f:
            cfg = json.load(f)
    except FileNotFoundError:
        raise DsConfigError(f"ds_config file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise DsConfigError(f"ds_config {path}: invalid JSON at line {e.lineno} column "
                            f"{e.colno}: {e.msg}") from None
    return validate(cfg, world_size, path)


def default(device: str, world_size: int, global_batch: int) -> dict:
    """The run's config when none is given: bf16 ZeRO-2 on GPUs, fp32 data parallel on CPU."""
    micro = max(1, global_batch // world_size)
    cfg = {"train_batch_size": micro * world_size, "train_micro_batch_size_per_gpu": micro,
           "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
           "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "betas": [0.9, 0.999],
                                                     "eps": 1e-6, "weight_decay": 0.01}}}
    if device == "cuda":
        cfg.update(bf16={"enabled": True}, zero_optimization={"stage": 2})
    return validate(cfg, world_size, "<default>")


def optimizer_params(cfg: dict) -> dict:
    """Pop the optimizer section (we build torch AdamW from it) -> AdamW keyword arguments."""
    params = dict(cfg.pop("optimizer", {}).get("params", {}))
    params.setdefault("lr", 1e-4)
    params["betas"] = tuple(params.get("betas", (0.9, 0.999)))
    params.setdefault("eps", 1e-6)
    params.setdefault("weight_decay", 0.01)
    return params
