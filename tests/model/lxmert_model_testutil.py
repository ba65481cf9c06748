"""Shared by the tests/model tests: small configs, paired (ours, transformers) models with the
same random weights, inputs with padded text and padded objects, and comparison helpers."""
import pytest
import torch

from lxmert_fast import LxmertConfig
from model_pairs import OURS_ONLY, hf_config, randomize_  # noqa: F401  (shared)

SMALL = dict(vocab_size=99, hidden_size=64, num_attention_heads=4, intermediate_size=128,
             l_layers=2, x_layers=1, r_layers=2, visual_feat_dim=32, num_qa_labels=7,
             num_object_labels=11, num_attr_labels=5, max_position_embeddings=40)
OTHER = dict(vocab_size=57, hidden_size=48, num_attention_heads=2, intermediate_size=72,
             l_layers=1, x_layers=2, r_layers=3, visual_feat_dim=20, num_qa_labels=3129,
             num_object_labels=13, num_attr_labels=6, max_position_embeddings=24)
def pair(our_cls_name: str, kwargs: dict, seed: int = 1):
    """(ours, theirs) in eval mode with identical random weights (theirs loaded into ours)."""
    import transformers

    import lxmert_fast

    kwargs = {**kwargs, "kernel_impl": "torch"}
    theirs = randomize_(getattr(transformers, our_cls_name)(hf_config(**kwargs)), seed).eval()
    ours = getattr(lxmert_fast, our_cls_name)(LxmertConfig(**kwargs)).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


def inputs(cfg: dict, batch=3, seq=7, objects=5, seed=2, pad=True):
    """Model inputs with text padding and padded objects (every row keeps >= 1 real key)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, cfg["vocab_size"], (batch, seq), generator=gen)
    text_len = torch.tensor([seq, max(1, seq - 3), 2][:batch] + [seq] * max(0, batch - 3))
    obj_len = torch.tensor([objects, max(1, objects - 2), 1][:batch]
                           + [objects] * max(0, batch - 3))
    attention_mask = (torch.arange(seq)[None] < text_len[:, None]).long()
    visual_attention_mask = (torch.arange(objects)[None] < obj_len[:, None]).float()
    out = dict(input_ids=ids * attention_mask,
               visual_feats=torch.randn(batch, objects, cfg["visual_feat_dim"], generator=gen),
               visual_pos=torch.rand(batch, objects, 4, generator=gen),
               token_type_ids=torch.randint(0, 2, (batch, seq), generator=gen))
    if pad:
        out.update(attention_mask=attention_mask, visual_attention_mask=visual_attention_mask)
    return out


def pretrain_labels(cfg: dict, batch=3, seq=7, objects=5, seed=3):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, cfg["vocab_size"], (batch, seq), generator=gen)
    labels[torch.rand(batch, seq, generator=gen) < 0.5] = -100
    labels[0, 0] = 5  # at least one real MLM label
    weight = lambda: (torch.rand(batch, objects, generator=gen) < 0.6).float()  # noqa: E731
    obj_labels = {
        "obj": (torch.randint(0, cfg["num_object_labels"], (batch, objects), generator=gen),
                weight() * torch.rand(batch, objects, generator=gen)),
        "attr": (torch.randint(0, cfg["num_attr_labels"], (batch, objects), generator=gen),
                 weight()),
        "feat": (torch.randn(batch, objects, cfg["visual_feat_dim"], generator=gen), weight()),
    }
    ans = torch.randint(0, cfg["num_qa_labels"], (batch,), generator=gen)
    ans[-1] = -100
    return dict(labels=labels, obj_labels=obj_labels,
                matched_label=torch.randint(0, 2, (batch,), generator=gen), ans=ans)


def max_diff(a, b) -> float:
    """Max abs difference between two tensors or (nested) tuples of tensors."""
    if isinstance(a, (tuple, list)):
        assert isinstance(b, (tuple, list)) and len(a) == len(b), (type(b), len(a))
        return max([max_diff(x, y) for x, y in zip(a, b)], default=0.0)
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_grads_close(ours, theirs, rel=1e-4):
    """Every parameter's gradient within ``rel`` of transformers' (max-abs, relative to the
    largest reference entry)."""
    ref = dict(theirs.named_parameters())
    # Floor for gradients that are exactly zero in exact arithmetic (attention key biases: the
    # softmax is shift-invariant), where both sides hold only rounding noise.
    floor = 1e-6 * max(p.grad.abs().max().item() for p in ref.values() if p.grad is not None)
    checked = 0
    for name, p in ours.named_parameters():
        g_ref = ref[name].grad
        assert (p.grad is None) == (g_ref is None), name
        if g_ref is None:
            continue
        scale = g_ref.abs().max().item()
        err = (p.grad - g_ref).abs().max().item()
        assert err <= rel * scale + floor, f"{name}: grad error {err:.3e} vs scale {scale:.3e}"
        checked += 1
    assert checked > 0
    return checked


@pytest.fixture
def one_thread():
    """These models are tiny: one intra-op thread is faster and immune to a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_mlm_rows_match_dense(rows_model, rows_out, dense_model, dense_out, labels):
    """A head run on selected MLM rows against the dense head (all tokens): its first N logits
    are the dense logits of the N labeled tokens (row-major), every loss is the same, and after
    backward every gradient (more than 10 parameters). Returns N."""
    keep = labels != -100
    n = int(keep.sum())
    torch.testing.assert_close(rows_out.prediction_logits[:n], dense_out.prediction_logits[keep],
                               rtol=1e-5, atol=1e-6)
    assert set(rows_out.losses) == set(dense_out.losses)
    for key in dense_out.losses:
        torch.testing.assert_close(rows_out.losses[key], dense_out.losses[key],
                                   rtol=1e-6, atol=1e-7)
    dense_out.loss.backward()
    rows_out.loss.backward()
    assert assert_grads_close(rows_model, dense_model, rel=1e-5) > 10
    return n
