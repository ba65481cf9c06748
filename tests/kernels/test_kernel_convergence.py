"""Kernels inside the model (Liger-Kernel ``test/convergence`` style): a tiny LxmertForPreTraining
trained with ``kernel_impl="triton"`` (the Triton interpreter on CPU) and with ``"torch"`` from the
same initial weights on the same batches gives the same per-step losses, and one forward+backward
gives the same loss and parameter gradients. Dropout is 0 (the masks come from different RNGs).
On a GPU the same comparison runs in bfloat16 autocast."""
import pytest
import torch

from kernel_parity_testutil import DEVICE, interpreter_without_overflow_checks
from lxmert_fast import LxmertConfig, LxmertForPreTraining

TINY = dict(vocab_size=40, hidden_size=32, num_attention_heads=2, intermediate_size=64,
            l_layers=1, x_layers=1, r_layers=1, visual_feat_dim=16, num_qa_labels=5,
            num_object_labels=7, num_attr_labels=3, max_position_embeddings=16,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
STEPS = 30


@pytest.fixture(autouse=True)
def _fast_interpreter():
    with interpreter_without_overflow_checks():
        yield


def _batch(seed, B=2, L=6, N=5):
    """Pretraining inputs and all five task labels; the last example has padded text and padded
    objects (with B=1, the only one)."""
    g = torch.Generator().manual_seed(seed)
    text = (torch.arange(L)[None] < torch.tensor([L, L - 2])[-B:, None]).long()
    objs = (torch.arange(N)[None] < torch.tensor([N, N - 2])[-B:, None]).float()
    labels = torch.randint(0, TINY["vocab_size"], (B, L), generator=g)
    labels[torch.rand(B, L, generator=g) < 0.5] = -100
    labels[0, 1] = 3
    w = (torch.rand(B, N, generator=g) < 0.7).float()
    batch = dict(
        input_ids=torch.randint(1, TINY["vocab_size"], (B, L), generator=g) * text,
        attention_mask=text, token_type_ids=torch.zeros(B, L, dtype=torch.long),
        visual_feats=torch.randn(B, N, TINY["visual_feat_dim"], generator=g),
        visual_pos=torch.rand(B, N, 4, generator=g), visual_attention_mask=objs, labels=labels,
        obj_labels={"obj": (torch.randint(0, 7, (B, N), generator=g), w),
                    "attr": (torch.randint(0, 3, (B, N), generator=g), w),
                    "feat": (torch.randn(B, N, TINY["visual_feat_dim"], generator=g), w)},
        matched_label=torch.tensor([1, 0])[-B:], ans=torch.tensor([2, -100])[:B])
    return _to(batch, DEVICE)


def _to(x, device):
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(_to(v, device) for v in x)
    return x.to(device)


def _model(impl):
    torch.manual_seed(0)
    return LxmertForPreTraining(LxmertConfig(**TINY, kernel_impl=impl)).to(DEVICE).train()


def _train(impl, steps, autocast=False):
    model = _model(impl)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    batches = [_batch(s, B=1) for s in range(2)]  # B=1: the interpreter pays per program
    losses = []
    for step in range(steps):
        with torch.autocast("cuda", torch.bfloat16, enabled=autocast):
            loss = model(**batches[step % 2]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_forward_backward_matches_reference_model():
    batch = _batch(7)
    results = {}
    for impl in ("torch", "triton"):
        model = _model(impl)
        out = model(**batch)
        out.loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        results[impl] = (out, grads)
    (ref, ref_grads), (got, got_grads) = results["torch"], results["triton"]
    torch.testing.assert_close(got.loss, ref.loss, rtol=1e-5, atol=1e-5)
    for name in ("prediction_logits", "cross_relationship_score", "question_answering_score"):
        torch.testing.assert_close(getattr(got, name), getattr(ref, name), rtol=1e-4, atol=1e-5)
    assert got_grads.keys() == ref_grads.keys()
    for name, g in got_grads.items():
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_training_losses_match_reference_per_step():
    ref, got = _train("torch", STEPS), _train("triton", STEPS)
    assert ref[-1] < 0.8 * ref[0], f"the tiny model did not train: {ref[0]:.3f} -> {ref[-1]:.3f}"
    for step, (r, g) in enumerate(zip(ref, got)):
        assert abs(g - r) <= 1e-3 * abs(r) + 1e-4, f"step {step}: triton {g:.6f} vs torch {r:.6f}"


@pytest.mark.gpu
def test_training_losses_match_reference_bf16_gpu():
    ref, got = _train("torch", STEPS, autocast=True), _train("triton", STEPS, autocast=True)
    assert ref[-1] < 0.8 * ref[0]
    for step, (r, g) in enumerate(zip(ref, got)):
        assert abs(g - r) <= 3e-2 * abs(r) + 1e-2, f"step {step}: triton {g:.4f} vs torch {r:.4f}"


@pytest.mark.gpu
def test_compiled_model_has_no_graph_breaks_at_kernels():
    """The whole tiny model under torch.compile(fullgraph=True): any graph break fails."""
    torch._dynamo.reset()
    model = _model("triton")
    compiled = torch.compile(model, fullgraph=True)
    loss = compiled(**_batch(7)).loss
    loss.backward()
    ref = _model("torch")(**_batch(7)).loss
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-4)
