"""``from_transformers(model)``: our equivalent of a transformers LXMERT model instance.

For code that builds or loads transformers' classes and wants this package's model (activation
checkpointing, the fused kernels) without changing how it gets the model: the config's LXMERT
fields are copied, the state dict loads strictly (every key, every shape), and the result has the
input's device, dtype and train/eval mode. transformers is not imported here: the instance is
recognised by its class name (``LxmertModel``, ``LxmertForPreTraining``,
``LxmertForQuestionAnswering``) and read through ``config.to_dict()`` and ``state_dict()``.
"""
from torch import nn

from lxmert_fast.config import LxmertConfig

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


def from_transformers(model: nn.Module, **config_overrides) -> nn.Module:
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
        from lxmert_fast.checkpoint import CheckpointError, _listing

        raise CheckpointError(f"from_transformers: {name} does not fit ours: "
                              + "; ".join(_listing(t, k) for t, k in (("missing keys", missing),
                                          ("unexpected keys", unexpected)) if k))
    ours.tie_weights()
    ours.to(device)
    ours.name_or_path = getattr(model, "name_or_path", "") or ""
    return ours.train(model.training)

