"""resize_token_embeddings: growing and shrinking the vocabulary keeps the old rows, the tied MLM
decoder, the MLM bias and config.vocab_size consistent, and matches transformers'
LxmertForPreTraining.resize_token_embeddings on the same weights."""
import pytest
import torch

from lxmert_fast import (LxmertConfig, LxmertForPreTraining, LxmertForQuestionAnswering,
                         LxmertModel)
from lxmert_model_testutil import (SMALL, inputs, max_diff, one_thread,  # noqa: F401
                                   pair, pretrain_labels, randomize_)

pytestmark = pytest.mark.usefixtures("one_thread")
CFG = {**SMALL, "l_layers": 1, "r_layers": 1}
VOCAB = CFG["vocab_size"]  # 99
# The added rows are the old rows' mean plus noise of 1e-9 x their covariance (std ~ 3e-5 x the
# rows' own spread, here ~ 1e-6): far below this bound, far above float32 rounding of the mean.
MEAN_TOL = 1e-4


def _ours(cls=LxmertForPreTraining, **overrides):
    cfg = {**CFG, "kernel_impl": "torch", **overrides}
    return randomize_(cls(LxmertConfig(**cfg))).eval()


def _words(model):
    return model.get_input_embeddings().weight


def _assert_consistent(model, size):
    """Every vocabulary-sized tensor has ``size`` rows and the decoder is still tied."""
    words, predictions = model.get_input_embeddings(), model.cls.predictions
    assert model.config.vocab_size == size and words.num_embeddings == size
    assert tuple(words.weight.shape) == (size, CFG["hidden_size"])
    assert predictions.decoder.weight is words.weight and predictions.decoder.out_features == size
    assert tuple(predictions.bias.shape) == (size,)


def test_growing_keeps_old_rows_ties_decoder_and_zero_biases_new_tokens():
    model = _ours()
    old_words, old_bias = _words(model).detach().clone(), model.cls.predictions.bias.clone()
    returned = model.resize_token_embeddings(VOCAB + 21)
    assert returned is model.lxmert.embeddings.word_embeddings
    _assert_consistent(model, VOCAB + 21)
    assert torch.equal(_words(model)[:VOCAB], old_words)
    assert torch.equal(model.cls.predictions.bias[:VOCAB], old_bias)
    assert torch.count_nonzero(model.cls.predictions.bias[VOCAB:]) == 0
    added = _words(model)[VOCAB:].detach()
    assert max_diff(added, old_words.mean(0).expand_as(added)) < MEAN_TOL
    assert added.std(0).max() > 0  # sampled, not a copied constant
    assert "cls.predictions.bias" in dict(model.named_parameters())


def test_old_token_outputs_unchanged_after_growing():
    model = _ours()
    x = inputs(CFG)
    before = model(**x)
    model.resize_token_embeddings(VOCAB + 30)
    after = model(**x)
    assert after.prediction_logits.shape[-1] == VOCAB + 30
    assert max_diff(after.prediction_logits[..., :VOCAB], before.prediction_logits) < 1e-5
    for name in ("cross_relationship_score", "question_answering_score"):
        assert torch.equal(getattr(after, name), getattr(before, name)), name


def test_shrinking_drops_last_rows_and_keeps_the_rest():
    model = _ours()
    x = inputs(CFG)
    x["input_ids"] = x["input_ids"] % 40
    before = model(**x).prediction_logits
    old_words = _words(model).detach().clone()
    model.resize_token_embeddings(40)
    _assert_consistent(model, 40)
    assert torch.equal(_words(model), old_words[:40])
    assert max_diff(model(**x).prediction_logits, before[..., :40]) < 1e-5


def test_resize_matches_transformers_on_the_same_weights():
    ours, theirs = pair("LxmertForPreTraining", CFG)
    x = inputs(CFG)
    x["input_ids"] = x["input_ids"] % 61  # valid at every size below
    for size in (VOCAB + 13, 61):
        ours.resize_token_embeddings(size)
        theirs.resize_token_embeddings(size)
        assert ours.config.vocab_size == theirs.config.vocab_size == size
        mine, ref = ours.state_dict(), theirs.state_dict()
        assert {k: tuple(v.shape) for k, v in mine.items()} == \
            {k: tuple(v.shape) for k, v in ref.items()}
        assert max_diff(mine["lxmert.embeddings.word_embeddings.weight"],
                        ref["lxmert.embeddings.word_embeddings.weight"]) < MEAN_TOL
        assert torch.equal(mine["cls.predictions.bias"], ref["cls.predictions.bias"])
        ours.load_state_dict(ref, strict=True)  # same new rows: outputs must then agree exactly
        _assert_consistent(ours, size)
        assert max_diff(ours(**x).prediction_logits, theirs(**x).prediction_logits) < 1e-4


def test_pad_to_multiple_of_rounds_every_vocab_sized_tensor_up():
    model = _ours()
    model.resize_token_embeddings(100, pad_to_multiple_of=16)
    _assert_consistent(model, 112)  # transformers leaves the bias at 100 here
    model.resize_token_embeddings(pad_to_multiple_of=64)
    _assert_consistent(model, 128)
    assert model(**inputs(CFG)).prediction_logits.shape[-1] == 128
    model.resize_token_embeddings(128, pad_to_multiple_of=32)
    _assert_consistent(model, 128)


def test_no_arguments_is_a_no_op():
    model = _ours()
    words = _words(model)
    assert model.resize_token_embeddings() is model.lxmert.embeddings.word_embeddings
    assert _words(model) is words and model.config.vocab_size == VOCAB


def test_without_mean_resizing_added_rows_follow_the_models_init():
    model = _ours(initializer_range=0.05)
    model.resize_token_embeddings(VOCAB + 400, mean_resizing=False)
    added = _words(model)[VOCAB:].detach()  # 400 x 64 draws
    assert abs(added.std().item() - 0.05) < 0.003 and abs(added.mean().item()) < 0.003


def test_untied_decoder_is_resized_too():
    model = _ours(tie_word_embeddings=False)
    decoder = model.cls.predictions.decoder
    assert decoder.weight is not _words(model)
    old_decoder = decoder.weight.detach().clone()
    model.resize_token_embeddings(VOCAB + 5)
    assert decoder.weight is not _words(model)
    assert tuple(decoder.weight.shape) == (VOCAB + 5, CFG["hidden_size"])
    assert decoder.out_features == VOCAB + 5
    assert torch.equal(decoder.weight[:VOCAB], old_decoder)
    assert model(**inputs(CFG)).prediction_logits.shape[-1] == VOCAB + 5


@pytest.mark.parametrize("cls", [LxmertModel, LxmertForQuestionAnswering])
def test_models_without_mlm_head_resize_the_embedding_only(cls):
    model = _ours(cls)
    x = inputs(CFG)
    before = model(**x)
    model.resize_token_embeddings(VOCAB + 9)
    assert model.config.vocab_size == VOCAB + 9
    assert model.get_input_embeddings().num_embeddings == VOCAB + 9
    after = model(**x)
    assert max_diff(tuple(after.to_tuple()), tuple(before.to_tuple())) == 0.0


def test_resized_model_trains_and_round_trips(tmp_path):
    model = _ours()
    model.resize_token_embeddings(VOCAB + 7)
    model.train()
    x, y = inputs(CFG), pretrain_labels(CFG)
    y["labels"][0, 1] = VOCAB + 3  # a label on an added token
    model(**x, **y).loss.backward()
    assert _words(model).grad.shape == (VOCAB + 7, CFG["hidden_size"])
    assert _words(model).grad[VOCAB + 3].abs().sum() > 0  # reached through the tied decoder
    model.save_pretrained(str(tmp_path))
    loaded = LxmertForPreTraining.from_pretrained(str(tmp_path)).eval()
    _assert_consistent(loaded, VOCAB + 7)
    assert torch.equal(_words(loaded), _words(model))
    model.eval()
    assert max_diff(loaded(**x).prediction_logits, model(**x).prediction_logits) == 0.0


@pytest.mark.parametrize("kwargs, bad", [
    (dict(new_num_tokens=0), "new_num_tokens must be a positive integer or None, got 0"),
    (dict(new_num_tokens=-5), "got -5"),
    (dict(new_num_tokens=12.5), "got 12.5"),
    (dict(new_num_tokens=True), "got True"),
    (dict(new_num_tokens=120, pad_to_multiple_of=0), "pad_to_multiple_of must be a positive"),
    (dict(pad_to_multiple_of="8"), "got '8'"),
])
def test_bad_sizes_raise_naming_the_value_and_change_nothing(kwargs, bad):
    model = _ours()
    words, bias = _words(model), model.cls.predictions.bias
    with pytest.raises(ValueError, match=bad.replace("(", r"\(")):
        model.resize_token_embeddings(**kwargs)
    assert _words(model) is words and model.cls.predictions.bias is bias
    assert model.config.vocab_size == VOCAB
