"""Parity helpers for the kernel tests (flash-attention / Liger style, STYLE.md).

Three runs of the same inputs and output gradients: the kernel at the test dtype, torch's
reference at the same dtype, and the reference in float64 (the truth). The kernel's error against
the truth must be at most 2x torch's own error plus a small per-dtype tolerance, for the outputs
and every gradient.
"""
import contextlib
import dataclasses

import torch

ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def run(fn, inputs, douts, dtype):
    """Cast the floating inputs to ``dtype`` (others as they are), run ``fn`` and backpropagate
    ``douts``; returns (outputs, grads of the floating inputs), all float64."""
    leaves = [t.detach().to(dtype).requires_grad_() if t is not None and t.is_floating_point()
              else t for t in inputs]
    outs = fn(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    diff = [t for t in leaves if t is not None and t.is_floating_point()]
    grads = torch.autograd.grad(outs, diff, [d.to(o.dtype) for o, d in zip(outs, douts)])
    return [o.detach().double() for o in outs], [g.double() for g in grads]


def assert_parity(kernel_fn, torch_fn, inputs, douts, dtype, names):
    """Compare the kernel and torch at ``dtype`` against float64; ``names`` label outputs then
    gradients. Returns the kernel's results (float64) for further checks."""
    k_out, k_grads = run(kernel_fn, inputs, douts, dtype)
    t_out, t_grads = run(torch_fn, inputs, douts, dtype)
    r_out, r_grads = run(torch_fn, inputs, douts, torch.float64)
    got, low, ref = k_out + k_grads, t_out + t_grads, r_out + r_grads
    assert len(names) == len(got), f"names {names} for {len(got)} results"
    for name, g, t, r in zip(names, got, low, ref):
        assert g.shape == r.shape, f"{name}: shape {tuple(g.shape)} != {tuple(r.shape)}"
        assert torch.isfinite(g).all(), f"{name}: non-finite values"
        err, torch_err = (g - r).abs().max().item(), (t - r).abs().max().item()
        bound = 2 * torch_err + ATOL[dtype]
        assert err <= bound, (f"{name} ({dtype}): kernel error {err:.3g} > 2 x torch's "
                              f"{torch_err:.3g} + {ATOL[dtype]:g}")
    return k_out, k_grads


def padding_mask(batch, length, lengths=None, device=DEVICE):
    """(B, L) bool, True = real key; ``lengths`` per row (0 = fully masked), else random."""
    if lengths is None:
        lengths = torch.randint(1, length + 1, (batch,))
    lengths = torch.as_tensor(lengths)
    return (torch.arange(length)[None, :] < lengths[:, None]).to(device)


@contextlib.contextmanager
def interpreter_without_overflow_checks():
    """Turn off the Triton interpreter's int32 overflow sanitiser (~40% of its time) for tests
    that only repeat launches the parity tests already ran with it on. No-op on a GPU or when
    the interpreter's internals differ."""
    try:
        from triton.runtime import interpreter
    except Exception:  # pragma: no cover - no triton
        yield
        return
    builder = getattr(interpreter, "interpreter_builder", None)
    options = getattr(builder, "options", None)
    if options is None or not hasattr(options, "sanitize_overflow"):
        yield
        return
    builder.options = dataclasses.replace(options, sanitize_overflow=False)
    try:
        yield
    finally:
        builder.options = options
