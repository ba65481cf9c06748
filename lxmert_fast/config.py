"""LXMERT configuration: every field of transformers' ``LxmertConfig`` with the same defaults.

Reads and writes transformers-format ``config.json`` files. Keys that transformers writes into a
config (``architectures``, ``model_type``, ``transformers_version``, ``dtype``/``torch_dtype``,
``num_hidden_layers``, ``id2label``/``label2id``, and the generic ``PretrainedConfig`` keys of
transformers 4.x and 5.x) are accepted; any other key raises a ``ValueError`` that names it and
suggests the nearest field.

Fields beyond transformers':
- ``layer_norm_eps`` (1e-12): transformers 4.x kept this field; both versions hard-code 1e-12.
- ``kernel_impl`` ("auto" | "triton" | "torch"): which implementation of the fused ops runs.
- ``qa_loss`` ("ce" | "bce"): ``LxmertForQuestionAnswering``'s loss. "ce" is transformers'
  (labels (B,) long); "bce" is the original LXMERT fine-tuning loss for VQA/GQA
  (BCE-with-logits on soft scores, times the number of answers; labels (B, num_qa_labels) float).
"""
import dataclasses
import difflib
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

CONFIG_NAME = "config.json"
MODEL_TYPE = "lxmert"
KERNEL_IMPLS = ("auto", "triton", "torch")
QA_LOSSES = ("ce", "bce")
HIDDEN_ACTS = ("gelu", "gelu_python", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish",
               "tanh")

# Keys transformers (4.x and 5.x) writes into a config.json that this model does not use.
_GENERIC_KEYS = frozenset("""
    transformers_version model_type num_hidden_layers torch_dtype _name_or_path name_or_path
    _commit_hash chunk_size_feed_forward is_encoder_decoder problem_type num_labels
    attn_implementation _attn_implementation_internal experts_implementation
    _experts_implementation_internal torchscript use_bfloat16 tf_legacy_loss pruned_heads is_decoder
    cross_attention_hidden_size add_cross_attention tie_encoder_decoder finetuning_task
    tokenizer_class prefix sep_token_id decoder_start_token_id task_specific_params
    gradient_checkpointing per_layer_config tie_last_hidden_states
""".split())
# Generation parameters older configs carry (transformers 5 drops them on load).
_GENERATION_KEYS = frozenset("""
    assistant_confidence_threshold assistant_lookbehind bad_words_ids begin_suppress_tokens
    diversity_penalty do_sample early_stopping encoder_no_repeat_ngram_size
    encoder_repetition_penalty epsilon_cutoff eta_cutoff exponential_decay_length_penalty
    forced_bos_token_id forced_eos_token_id length_penalty max_length min_length
    no_repeat_ngram_size num_assistant_tokens num_assistant_tokens_schedule num_beam_groups
    num_beams num_return_sequences output_scores remove_invalid_values repetition_penalty
    return_dict_in_generate suppress_tokens target_lookbehind temperature top_k top_p typical_p
    use_cache
""".split())
IGNORED_KEYS = _GENERIC_KEYS | _GENERATION_KEYS


@dataclass
class LxmertConfig:
    """Configuration of LXMERT (Tan & Bansal, 2019), field-for-field transformers' LxmertConfig."""

    model_type = MODEL_TYPE     # class attributes, as transformers' (not fields)
    sub_configs = {}            # no nested configs
    is_encoder_decoder = False

    vocab_size: int = 30522
    hidden_size: int = 768
    num_attention_heads: int = 12
    num_qa_labels: int = 9500
    num_object_labels: int = 1600
    num_attr_labels: int = 400
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    l_layers: int = 9
    x_layers: int = 5
    r_layers: int = 5
    visual_feat_dim: int = 2048
    visual_pos_dim: int = 4
    visual_loss_normalizer: float = 6.67
    task_matched: bool = True
    task_mask_lm: bool = True
    task_obj_predict: bool = True
    task_qa: bool = True
    visual_obj_loss: bool = True
    visual_attr_loss: bool = True
    visual_feat_loss: bool = True
    pad_token_id: Optional[int] = None
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[Any] = None
    tie_word_embeddings: bool = True
    # Generic PretrainedConfig fields the forward pass reads.
    output_attentions: bool = False
    output_hidden_states: bool = False
    return_dict: bool = True
    architectures: Optional[List[str]] = None
    id2label: Optional[Dict[int, str]] = None
    label2id: Optional[Dict[str, int]] = None
    dtype: Optional[str] = None
    # lxmert_fast's own fields.
    kernel_impl: str = "auto"
    qa_loss: str = "ce"
    task_itc: bool = False          # image-text contrastive loss before fusion (modeling_itc.py)
    itc_dim: int = 256
    itc_temperature: float = 0.07

    def __post_init__(self):
        self._check_ints()
        self._check_probs()
        for name, allowed in (("hidden_act", HIDDEN_ACTS), ("kernel_impl", KERNEL_IMPLS),
                              ("qa_loss", QA_LOSSES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"LxmertConfig.{name}={getattr(self, name)!r} is not one of "
                                 f"{allowed}")
        if self.task_itc and (self.l_layers < 1 or self.r_layers < 1):
            raise ValueError(f"LxmertConfig.task_itc needs l_layers >= 1 and r_layers >= 1 (the "
                             f"single-modality encoders), got {self.l_layers} and {self.r_layers}")
        if not self.itc_temperature > 0:
            raise ValueError(f"LxmertConfig.itc_temperature={self.itc_temperature} must be > 0")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"LxmertConfig.layer_norm_eps={self.layer_norm_eps} must be > 0")
        if self.id2label is not None:  # JSON keys are strings
            self.id2label = {int(k): v for k, v in self.id2label.items()}
        if self.dtype is not None:
            self.dtype = str(self.dtype).replace("torch.", "")

    def _check_ints(self):
        positive = ("vocab_size", "hidden_size", "num_attention_heads", "num_qa_labels",
                    "num_object_labels", "num_attr_labels", "intermediate_size",
                    "max_position_embeddings", "type_vocab_size", "visual_feat_dim",
                    "visual_pos_dim", "itc_dim")
        for name in positive + ("l_layers", "x_layers", "r_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"LxmertConfig.{name}={value!r} must be an int")
            if value < (1 if name in positive else 0):
                raise ValueError(f"LxmertConfig.{name}={value} must be "
                                 f"{'>= 1' if name in positive else '>= 0'}")
        for stream, own in (("language", "l_layers"), ("vision", "r_layers")):
            if getattr(self, own) + self.x_layers < 1:
                raise ValueError(f"LxmertConfig: {own}={getattr(self, own)} and x_layers="
                                 f"{self.x_layers} leave the {stream} stream without a layer")

    def _check_probs(self):
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not 0.0 <= float(value) < 1.0:
                raise ValueError(f"LxmertConfig.{name}={value} must be in [0, 1)")

    def check_buildable(self):
        """The checks transformers makes when a model is built, not when the config is: a
        config with ``hidden_size`` not a multiple of ``num_attention_heads`` can be made,
        saved and edited (transformers' LxmertConfig accepts it too)."""
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"LxmertConfig.hidden_size={self.hidden_size} is not a multiple of "
                             f"num_attention_heads={self.num_attention_heads}")

    def get_text_config(self, decoder=None, encoder=None) -> "LxmertConfig":
        """transformers' accessor of the text part of a composite config: LXMERT's is itself."""
        return self

    @property
    def use_return_dict(self) -> bool:
        return self.return_dict

    @property
    def num_hidden_layers(self) -> Dict[str, int]:
        return {"vision": self.r_layers, "cross_encoder": self.x_layers,
                "language": self.l_layers}

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def field_names(cls) -> List[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, config_dict: Dict[str, Any], **overrides) -> "LxmertConfig":
        """Build from a (transformers-format) dict; unknown keys raise naming the key."""
        return cls(**{**config_dict, **overrides})

    @classmethod
    def from_json_file(cls, path: str, **overrides) -> "LxmertConfig":
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"LxmertConfig: {path} is not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise ValueError(f"LxmertConfig: {path} holds a {type(data).__name__}, not an object")
        try:
            return cls.from_dict(data, **overrides)
        except ValueError as e:
            raise ValueError(f"{e} (in {path})") from e

    @classmethod
    def from_pretrained(cls, path: str, **overrides) -> "LxmertConfig":
        """Read ``path/config.json`` (or ``path`` itself when it is a file)."""
        file = os.path.join(path, CONFIG_NAME) if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise FileNotFoundError(f"LxmertConfig: no {CONFIG_NAME} at {path}")
        return cls.from_json_file(file, **overrides)

    def to_dict(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        out["model_type"] = MODEL_TYPE
        out["num_hidden_layers"] = self.num_hidden_layers
        return out

    def to_diff_dict(self) -> Dict[str, Any]:
        """``to_dict`` without the generic fields still at their defaults (transformers'
        ``to_diff_dict``: every LXMERT field is kept, the PretrainedConfig ones only when set)."""
        generic = {"output_attentions": False, "output_hidden_states": False,
                   "return_dict": True, "architectures": None, "id2label": None,
                   "label2id": None, "dtype": None}
        return {k: v for k, v in self.to_dict().items()
                if k not in generic or v != generic[k]}

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str) -> str:
        """Write ``config.json`` (atomically) in a form transformers' LxmertConfig loads."""
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, CONFIG_NAME)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())
        os.replace(tmp, path)
        return path


def _split_kwargs(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """The field kwargs; transformers' extra keys are checked and dropped, others raise."""
    names = LxmertConfig.field_names()
    known = {}
    for key, value in kwargs.items():
        if key in names:
            known[key] = value
        elif key not in IGNORED_KEYS:
            near = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ValueError(f"LxmertConfig: unknown key {key!r}{hint}")
    model_type = kwargs.get("model_type", MODEL_TYPE)
    if model_type != MODEL_TYPE:
        raise ValueError(f"LxmertConfig: model_type={model_type!r}, expected {MODEL_TYPE!r}")
    return known


_dataclass_init = LxmertConfig.__init__


def _init(self, *args, **kwargs):
    """Like transformers: keyword arguments may include the keys transformers writes."""
    _dataclass_init(self, *args, **_split_kwargs(kwargs))
    layers = kwargs.get("num_hidden_layers")
    if isinstance(layers, dict) and layers != self.num_hidden_layers:
        raise ValueError(f"LxmertConfig: num_hidden_layers={layers} disagrees with "
                         f"l_layers/x_layers/r_layers = {self.num_hidden_layers}")


_init.__doc__ = LxmertConfig.__doc__
LxmertConfig.__init__ = _init
