"""``LxmertPreTrainedModel``: the base class of every LXMERT model, with the part of transformers'
``PreTrainedModel`` API that users and libraries (PEFT, accelerate, Trainer) touch.

Our own base class rather than a subclass of transformers' ``PreTrainedModel``: transformers stays
a test dependency (the package, its fused kernels and custom ops import without it), and its
loading machinery (meta-device init, weight conversion) does not run around our modules.
Implemented with transformers' behaviour:
- class attributes ``config_class``, ``base_model_prefix`` ("lxmert"), ``main_input_name``,
  ``_tied_weights_keys`` (a dict target -> source, as transformers 5), ``_keys_to_ignore_on_load_*``,
  ``supports_gradient_checkpointing`` (True here; transformers' LXMERT refuses);
- ``base_model``, ``can_generate()``, ``init_weights()``/``post_init()``/``tie_weights()``,
  ``get/set_input_embeddings``, ``get_output_embeddings``, ``enable/disable_input_require_grads``,
  ``gradient_checkpointing_enable/disable`` (and transformers 5's ``activation_checkpointing_*``
  names), ``is_gradient_checkpointing``, ``resize_token_embeddings``, ``num_parameters``,
  ``device``/``dtype``, ``name_or_path``;
- ``from_pretrained``/``save_pretrained`` (``lxmert_fast.modeling_loading``,
  ``lxmert_fast.checkpoint``).
"""
from typing import Optional

import torch
from torch import nn

from lxmert_fast import checkpoint
from lxmert_fast import modeling_loading
from lxmert_fast import modeling_resize as resize
from lxmert_fast.config import LxmertConfig


class LxmertPreTrainedModel(nn.Module):
    """Weight init as transformers (normal(0, initializer_range), zero biases, unit LayerNorms,
    zero padding rows), config handling, transformers-format save/load, and the model API."""

    config_class = LxmertConfig
    base_model_prefix = "lxmert"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _tied_weights_keys = None
    _keys_to_ignore_on_load_missing = None
    _keys_to_ignore_on_load_unexpected = None
    _no_split_modules = None

    def __init__(self, config: LxmertConfig):
        if not isinstance(config, LxmertConfig):
            raise TypeError(f"{type(self).__name__} needs an LxmertConfig, got "
                            f"{type(config).__name__}")
        config.check_buildable()
        super().__init__()
        self.config = config
        self.name_or_path = ""

    # ---- weights -------------------------------------------------------------------------
    def _init_weights(self, module: nn.Module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @torch.no_grad()
    def init_weights(self):
        """Initialise the modules not initialised yet and tie the MLM decoder, as transformers 5:
        each module once (flagged ``_is_hf_initialized``), so calling it on a built or loaded
        model initialises only modules added since (a replaced head), leaving trained weights."""
        def init(module):
            if not getattr(module, "_is_hf_initialized", False):
                self._init_weights(module)
                module._is_hf_initialized = True
        self.apply(init)
        self.tie_weights()

    @torch.no_grad()
    def post_init(self):
        """Called at the end of each model's ``__init__``: every module initialised (a head
        model's backbone a second time: the random stream the package has always drawn) and
        flagged for ``init_weights``."""
        self.apply(self._init_weights)
        for module in self.modules():
            module._is_hf_initialized = True
        self.tie_weights()

    def tie_weights(self):
        """Models with an MLM decoder share its weight with the word embeddings."""

    # ---- structure -----------------------------------------------------------------------
    @property
    def base_model(self) -> nn.Module:
        """The backbone (``self.lxmert``), or the model itself for ``LxmertModel``."""
        return getattr(self, self.base_model_prefix, self)

    @classmethod
    def can_generate(cls) -> bool:
        return False

    def get_input_embeddings(self) -> nn.Embedding:
        return self.base_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.base_model.set_input_embeddings(value)
        self.tie_weights()

    def get_output_embeddings(self) -> Optional[nn.Linear]:
        return None

    def enable_input_require_grads(self):
        """Make the word embeddings' output require grad (adapters on a frozen model; reentrant
        checkpointing): a forward hook, removed by ``disable_input_require_grads``."""
        self.disable_input_require_grads()

        def hook(module, inputs, output):
            output.requires_grad_(True)
        self._require_grads_hook = self.get_input_embeddings().register_forward_hook(hook)
        self._require_grads_hooks = [self._require_grads_hook]

    def disable_input_require_grads(self):
        for hook in getattr(self, "_require_grads_hooks", None) or []:
            hook.remove()
        self._require_grads_hooks = []
        if "_require_grads_hook" in self.__dict__:
            del self._require_grads_hook

    # ---- activation checkpointing --------------------------------------------------------
    def _encoders(self):
        return [m for m in self.modules() if hasattr(m, "set_checkpointing")]

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: Optional[dict] = None):
        """Recompute each encoder layer in the backward instead of keeping its activations
        (``torch.utils.checkpoint.checkpoint``, ``use_reentrant=False`` unless the kwargs say
        otherwise); only while training, as transformers."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs)

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: Optional[dict] = None,
                                        every_n_layers: int = 1, offload: bool = False):
        """transformers 5's name (Trainer calls it): ``every_n_layers`` checkpoints layers 0, n,
        2n, ... in the order they run (language, object-relationship, cross-modality)."""
        if offload:
            raise ValueError(f"{type(self).__name__}: activation checkpointing with offload=True "
                             f"(activations to CPU memory) is not supported")
        if not isinstance(every_n_layers, int) or every_n_layers < 1:
            raise ValueError(f"every_n_layers={every_n_layers!r} must be an int >= 1")
        kwargs = dict(activation_checkpointing_kwargs or {})
        for encoder in self._encoders():
            encoder.set_checkpointing(True, every_n_layers, **kwargs)
        if kwargs.get("use_reentrant", False):  # reentrant: an input must require grad
            self.enable_input_require_grads()

    def gradient_checkpointing_disable(self):
        for encoder in self._encoders():
            encoder.set_checkpointing(False)

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(encoder.gradient_checkpointing for encoder in self._encoders())

    activation_checkpointing_disable = gradient_checkpointing_disable   # transformers 5 names
    is_activation_checkpointing = is_gradient_checkpointing

    # ---- vocabulary ----------------------------------------------------------------------
    def resize_token_embeddings(self, new_num_tokens: Optional[int] = None,
                                pad_to_multiple_of: Optional[int] = None,
                                mean_resizing: bool = True) -> nn.Embedding:
        """transformers' ``resize_token_embeddings``: the word embedding (and any vocabulary-sized
        head) to ``new_num_tokens`` rounded up to ``pad_to_multiple_of``; old rows kept, added
        rows initialised per ``lxmert_fast.modeling_resize``; ``config.vocab_size`` updated and the
        MLM decoder re-tied. Both arguments None: nothing changes. Returns the embedding module."""
        embedding = self.get_input_embeddings()
        if new_num_tokens is None and pad_to_multiple_of is None:
            return embedding
        size = resize.new_vocab_size(embedding.num_embeddings, new_num_tokens, pad_to_multiple_of)
        std = self.config.initializer_range
        resize.resize_embedding_(embedding, size, mean_resizing, std)
        self._resize_vocab_heads(size, mean_resizing)
        self.config.vocab_size = size
        self.tie_weights()
        return embedding

    def _resize_vocab_heads(self, size: int, mean_resizing: bool):
        """Resize the heads whose outputs are the vocabulary (none in the backbone)."""

    # ---- misc ----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Parameters counted once (the tied decoder is the embedding), as transformers."""
        embeddings = {f"{name}.weight" for name, m in self.named_modules()
                      if isinstance(m, nn.Embedding)} if exclude_embeddings else set()
        return sum(p.numel() for name, p in self.named_parameters()
                   if name not in embeddings and (p.requires_grad or not only_trainable))

    # ---- loading and saving --------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """transformers' ``from_pretrained`` on local files; see
        ``lxmert_fast.modeling_loading.from_pretrained``."""
        return modeling_loading.from_pretrained(cls, pretrained_model_name_or_path, *model_args,
                                                **kwargs)

    def save_pretrained(self, save_directory: str, safe_serialization: bool = True,
                        state_dict: Optional[dict] = None, **kwargs) -> str:
        """config.json + model.safetensors (or pytorch_model.bin) that transformers loads.
        ``state_dict`` replaces the model's own; ``is_main_process=False`` writes nothing; other
        transformers arguments (``max_shard_size``, ``push_to_hub``, ...) are refused by name."""
        if not kwargs.pop("is_main_process", True):
            return ""
        if kwargs:
            raise TypeError(f"{type(self).__name__}.save_pretrained: unsupported arguments "
                            f"{sorted(kwargs)}")
        return checkpoint.save_pretrained(self, save_directory, safe_serialization, state_dict)
