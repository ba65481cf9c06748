"""The optional image-text contrastive loss (modeling_itc.py): against a per-query loop
reference, its masking rules, gradients, and the model wiring (off by default: no new keys)."""
import math

import pytest
import torch

import lxmert_fast as L
from lxmert_fast.modeling_itc import itc_loss, same_image


def _loop_reference(text, image, matched, pos, temp):
    """Per query: -log(sum of softmax over the allowed keys, on the positives)."""
    B = text.shape[0]
    same = [[bool(torch.equal(pos[i], pos[j])) for j in range(B)] for i in range(B)]
    sims = (text @ image.t()).double() / temp
    t2i, i2t = [], []
    for i in range(B):
        if matched[i] == 1:
            logp = sims[i] - torch.logsumexp(sims[i], 0)
            t2i.append(-torch.logsumexp(logp[[j for j in range(B) if same[i][j]]], 0))
    texts = [i for i in range(B) if matched[i] == 1]
    for j in range(B):
        pos_texts = [i for i in texts if same[i][j]]
        if texts and pos_texts:
            col = sims[texts, j]
            logp = col - torch.logsumexp(col, 0)
            i2t.append(-torch.logsumexp(logp[[texts.index(i) for i in pos_texts]], 0))
    mean = lambda xs: torch.stack(xs).mean() if xs else torch.zeros((), dtype=torch.float64)  # noqa
    return 0.5 * (mean(t2i) + mean(i2t))


def _inputs(B=7, D=8, N=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=-1)
    image = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=-1)
    pos = torch.rand(B, N, 4, generator=g)
    pos[3] = pos[1]                                   # rows 1 and 3 show the same image
    matched = torch.tensor([1, 1, 0, 1, 1, 0, 1][:B])
    return text, image, matched, pos


@pytest.mark.parametrize("temp", [0.07, 1.0])
def test_itc_matches_loop_reference(temp):
    text, image, matched, pos = _inputs()
    got = itc_loss(text, image, matched, pos, temp)
    want = _loop_reference(text, image, matched, pos, temp)
    assert abs(got.item() - want.item()) < 1e-5 * max(1.0, abs(want.item()))


def test_same_image_from_boxes():
    _, _, _, pos = _inputs()
    s = same_image(pos)
    assert s[1, 3] and s[3, 1] and s.diagonal().all() and s.sum() == 7 + 2


def test_itc_aligned_embeddings_score_low_and_gradients_are_finite():
    text, _, matched, pos = _inputs(seed=1)
    aligned = itc_loss(text, text.clone(), torch.ones(7, dtype=torch.long), torch.rand(7, 2, 4),
                       0.05)
    assert aligned.item() < 0.5 * math.log(7)
    t = text.clone().requires_grad_(True)
    none_matched = itc_loss(t, text, torch.zeros(7, dtype=torch.long), pos, 0.07)
    none_matched.backward()                              # no positive anywhere: 0, finite grads
    assert none_matched.item() == 0.0 and torch.isfinite(t.grad).all()
    with pytest.raises(ValueError, match=r"matched_label shape \(3,\)"):
        itc_loss(text, text, torch.ones(3, dtype=torch.long), pos, 0.07)


def _cfg(**kw):
    base = dict(vocab_size=60, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                l_layers=1, x_layers=1, r_layers=1, num_qa_labels=5)
    return L.LxmertConfig(**{**base, **kw})


def _batch(B=5, N=4, T=6):
    g = torch.Generator().manual_seed(3)
    return dict(input_ids=torch.randint(5, 60, (B, T), generator=g),
                visual_feats=torch.rand(B, N, 2048, generator=g),
                visual_pos=torch.rand(B, N, 4, generator=g),
                attention_mask=torch.ones(B, T, dtype=torch.long),
                visual_attention_mask=torch.ones(B, N),
                matched_label=torch.tensor([1, 0, 1, 1, 0]))


def test_model_itc_term_and_default_off():
    torch.manual_seed(0)
    off = L.LxmertForPreTraining(_cfg())
    assert not any(k.startswith("itc_head") for k in off.state_dict())
    torch.manual_seed(0)
    on = L.LxmertForPreTraining(_cfg(task_itc=True, itc_dim=16))
    missing, unexpected = on.load_state_dict(off.state_dict(), strict=False)
    assert sorted(missing) == sorted(k for k in on.state_dict() if k.startswith("itc_head"))
    on.eval(), off.eval()
    a, b = on(**_batch()), off(**_batch())
    assert set(a.losses) == {"matched", "itc"} and set(b.losses) == {"matched"}
    assert torch.allclose(a.loss, b.loss + a.losses["itc"])
    assert torch.equal(a.cross_relationship_score, b.cross_relationship_score)
    assert a.language_hidden_states is None                # not asked for: not returned
    a.loss.backward()
    for name, p in on.named_parameters():
        if name.startswith(("itc_head", "lxmert.encoder.layer.0", "lxmert.encoder.r_layers.0")):
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    with pytest.raises(ValueError, match="task_itc needs l_layers >= 1"):
        _cfg(task_itc=True, l_layers=0)
