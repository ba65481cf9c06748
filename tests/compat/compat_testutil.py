"""Shared by the tests/compat tests: a tiny config, (ours, transformers') model pairs with the same
random weights, padded inputs, and a comparison helper. Every test here runs transformers' class
beside ours: transformers' result is the expected one unless the test names a deliberate
difference."""
import pytest
import torch

from lxmert_fast import LxmertConfig
from model_pairs import OURS_ONLY, hf_config, randomize_  # noqa: F401  (shared)

TINY = dict(vocab_size=99, hidden_size=32, num_attention_heads=4, intermediate_size=64,
            l_layers=1, x_layers=1, r_layers=1, visual_feat_dim=16, num_qa_labels=7,
            num_object_labels=11, num_attr_labels=5, max_position_embeddings=24)
CLASSES = ("LxmertModel", "LxmertForPreTraining", "LxmertForQuestionAnswering")


def pair(cls_name: str, seed: int = 1, **overrides):
    """(ours, theirs) in eval mode with identical random weights."""
    import transformers

    import lxmert_fast

    kwargs = {**TINY, "kernel_impl": "torch", **overrides}
    theirs = randomize_(getattr(transformers, cls_name)(hf_config(**kwargs)), seed).eval()
    ours = getattr(lxmert_fast, cls_name)(LxmertConfig(**kwargs)).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


def inputs(cfg=TINY, batch=3, seq=6, objects=4, seed=2):
    """Model inputs with padded text and padded objects (every row keeps >= 1 real key)."""
    gen = torch.Generator().manual_seed(seed)
    text_len = torch.tensor([seq, seq - 2, 2][:batch])
    obj_len = torch.tensor([objects, objects - 1, 1][:batch])
    mask = (torch.arange(seq)[None] < text_len[:, None]).long()
    return dict(input_ids=torch.randint(1, cfg["vocab_size"], (batch, seq), generator=gen) * mask,
                visual_feats=torch.randn(batch, objects, cfg["visual_feat_dim"], generator=gen),
                visual_pos=torch.rand(batch, objects, 4, generator=gen),
                token_type_ids=torch.zeros(batch, seq, dtype=torch.long), attention_mask=mask,
                visual_attention_mask=(torch.arange(objects)[None] < obj_len[:, None]).float())


def main_output(model, x):
    """The output a class is for: the pooled output, the MLM logits, or the QA scores."""
    with torch.no_grad():
        out = model(**x)
    field = {"LxmertModel": "pooled_output", "LxmertForPreTraining": "prediction_logits",
             "LxmertForQuestionAnswering": "question_answering_score"}[type(model).__name__]
    return getattr(out, field)


def assert_same_output(ours, theirs, x, atol=1e-5):
    """Our output within ``atol`` of transformers' (the parity tests' bound: the same math in
    another order of floating-point operations)."""
    a, b = main_output(ours, x).float(), main_output(theirs, x).float()
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    assert err <= atol, f"{type(ours).__name__}: max difference {err:.3g} > {atol:g}"


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread is faster and immune to a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
