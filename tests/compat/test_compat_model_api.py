"""The model API that transformers' utilities, PEFT, accelerate and Trainer read
(lxmert_fast/modeling_base.py, heads.py), on every class beside transformers' same class."""
import warnings

import pytest
import torch
from torch import nn

import lxmert_fast
from compat_testutil import CLASSES, TINY, assert_same_output, inputs, one_thread, pair  # noqa: F401

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("cls_name", CLASSES)
def test_class_attributes_read_by_libraries(cls_name):
    ours, theirs = pair(cls_name)
    for name in ("base_model_prefix", "main_input_name", "_tied_weights_keys",
                 "_keys_to_ignore_on_load_missing", "_keys_to_ignore_on_load_unexpected",
                 "_no_split_modules"):
        assert getattr(type(ours), name) == getattr(type(theirs), name), name
    assert ours._tied_weights_keys == theirs._tied_weights_keys
    assert type(ours).can_generate() is type(theirs).can_generate() is False
    assert (ours.base_model is ours) == (theirs.base_model is theirs)
    assert ours.base_model is getattr(ours, "lxmert", ours)
    assert ours.config_class is lxmert_fast.LxmertConfig
    assert ours.num_parameters() == theirs.num_parameters()
    assert ours.num_parameters(only_trainable=True) == theirs.num_parameters(only_trainable=True)
    # Deliberately better: transformers' LXMERT does not support activation checkpointing.
    assert theirs.supports_gradient_checkpointing is False
    assert ours.supports_gradient_checkpointing is True


@pytest.mark.parametrize("cls_name", CLASSES)
def test_init_weights_initialises_only_new_modules(cls_name):
    """transformers 5: ``init_weights`` leaves initialised (here: random, as if trained) weights
    and initialises a module added since; the tied decoder is re-tied."""
    ours, theirs = pair(cls_name)
    for model in (ours, theirs):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        model.init_weights()
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
        new = nn.Linear(TINY["hidden_size"], TINY["hidden_size"])
        with torch.no_grad():
            new.bias.fill_(3.0)
            new.weight.fill_(1.0)
        model.base_model.pooler.dense = new
        model.init_weights()
        std = model.config.initializer_range
        assert new.bias.eq(0).all() and abs(new.weight.std().item() - std) < 0.2 * std
        assert torch.equal(model.base_model.embeddings.word_embeddings.weight,
                           before[[k for k in before if "word_embeddings" in k][0]])
    if cls_name == "LxmertForPreTraining":
        assert ours.cls.predictions.decoder.weight is ours.get_input_embeddings().weight


@pytest.mark.parametrize("cls_name", CLASSES)
def test_get_and_set_input_embeddings_on_every_head(cls_name):
    ours, theirs = pair(cls_name)
    assert torch.equal(ours.get_input_embeddings().weight, theirs.get_input_embeddings().weight)
    new = nn.Embedding(TINY["vocab_size"], TINY["hidden_size"], padding_idx=0)
    with torch.no_grad():
        new.weight.normal_(0, 0.5)
    ours.set_input_embeddings(new)
    theirs.set_input_embeddings(new)
    assert ours.get_input_embeddings() is new and theirs.get_input_embeddings() is new
    if cls_name != "LxmertForPreTraining":  # the MLM decoder: see the next test
        assert_same_output(ours, theirs, inputs())


def test_output_embeddings():
    """Deliberate difference: transformers 5's LxmertForPreTraining reports no output embeddings
    (its accessor looks for an ``lm_head``); ours returns the tied MLM decoder, so code that
    resizes or ties through ``get_output_embeddings`` sees it. Both re-tie on
    ``set_input_embeddings`` + ``tie_weights``; ours ties at once."""
    for cls_name in CLASSES:
        ours, theirs = pair(cls_name)
        assert theirs.get_output_embeddings() is None
        if cls_name == "LxmertForPreTraining":
            assert ours.get_output_embeddings() is ours.cls.predictions.decoder
            new = nn.Embedding(TINY["vocab_size"], TINY["hidden_size"])
            ours.set_input_embeddings(new)
            assert ours.get_output_embeddings().weight is new.weight
        else:
            assert ours.get_output_embeddings() is None


@pytest.mark.parametrize("cls_name", CLASSES)
def test_enable_and_disable_input_require_grads(cls_name):
    x = inputs()
    for model in pair(cls_name):
        model.requires_grad_(False)
        out = lambda: next(v for v in model(**x).values() if torch.is_tensor(v))  # noqa: E731
        assert not out().requires_grad
        model.enable_input_require_grads()
        assert out().requires_grad
        model.disable_input_require_grads()
        assert not out().requires_grad
        model.disable_input_require_grads()  # twice is harmless, as transformers


def test_masked_lm_labels_alias():
    """transformers 4 took ``masked_lm_labels`` as ``labels`` with a FutureWarning; transformers
    5.x swallows it in ``**kwargs`` (no loss). Deliberately, ours keeps transformers 4's meaning
    rather than silently computing no MLM loss."""
    ours, theirs = pair("LxmertForPreTraining")
    x = inputs()
    labels = torch.randint(0, TINY["vocab_size"], x["input_ids"].shape)
    assert theirs(**x, masked_lm_labels=labels).loss is None  # accepted (and dropped)
    expected = ours(**x, labels=labels).loss
    with pytest.warns(FutureWarning, match="masked_lm_labels is deprecated"):
        assert torch.equal(ours(**x, masked_lm_labels=labels).loss, expected)
    assert abs(expected.item() - theirs(**x, labels=labels).loss.item()) <= 1e-5
    with pytest.raises(ValueError, match="not both"):
        ours(**x, labels=labels, masked_lm_labels=labels)
    # Deliberate: an unknown argument is an error here (transformers' **kwargs drops it).
    theirs(**x, not_an_argument=1)
    with pytest.raises(TypeError, match="not_an_argument"):
        ours(**x, not_an_argument=1)


@pytest.mark.parametrize("cls_name", CLASSES)
def test_gradient_checkpointing_switches(cls_name):
    ours, theirs = pair(cls_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers 5 renames the method
        with pytest.raises(ValueError, match="does not support"):
            theirs.gradient_checkpointing_enable()
        assert theirs.is_gradient_checkpointing is False
    assert ours.is_gradient_checkpointing is False
    ours.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert ours.is_gradient_checkpointing and ours.is_activation_checkpointing
    ours.gradient_checkpointing_disable()
    assert not ours.is_gradient_checkpointing
    ours.activation_checkpointing_enable()
    assert ours.base_model.encoder.gradient_checkpointing
