"""Launch cost of one training step (forward + backward), counted so that it runs anywhere.

Eager: every aten op the step dispatches (a dispatch mode; views, `_unsafe_view` and bare
allocations are excluded: they launch nothing) plus every Triton kernel launch. On a machine
without CUDA the kernels run under TRITON_INTERPRET=1 and the launch itself is stubbed (counted,
not executed: only the count is wanted, and the interpreter would take minutes on the base
model); on a GPU launches are counted and run. Each aten op is at least one kernel launch on a
GPU and ~5-20 us of host time, so the sum is the step's launch-bound cost proxy (DESIGN.md
section 3: an eager LXMERT step at 32 samples per GPU is bound by launches and host time).

Compiled: the kernels one call of the compiled forward and backward runs, read from the code
inductor generates (fused kernels, extern GEMMs, fallback ops), plus the Triton launches of our
custom ops (they run inside the compiled code and are counted as in eager).
"""
import collections
import contextlib
import re

from torch.utils._python_dispatch import TorchDispatchMode

ALLOCATIONS = {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided",
               "_unsafe_view", "detach", "lift_fresh"}
KERNEL_LINE = re.compile(r"^\s+(?:(?:buf\w*|\w+) = )?(?:"
                         r"(?P<triton>\w+)\.run\(|(?P<cpp>cpp_fused_\w+)\(|"
                         r"(?P<extern>extern_kernels\.\w+)\(|(?P<op>torch\.ops\.(?!lxmert_fast)"
                         r"\w+\.\w+(?:\.\w+)?)\(|(?P<aten>aten\.\w+(?:\.\w+)?)\()")
NOT_KERNELS = ("aten.view", "aten.reshape", "aten.as_strided", "aten._reinterpret")


class OpCounter(TorchDispatchMode):
    """Counts the aten ops that launch work (see the module docstring), by name."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not func.is_view and name not in ALLOCATIONS:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def triton_launches(stub: bool):
    """Counter of Triton kernel launches (by kernel name) while active; ``stub``: count only."""
    counts = collections.Counter()
    patched = []
    try:
        import triton.runtime.interpreter as interp
        import triton.runtime.jit as jit
        classes = [jit.JITFunction, interp.InterpretedFunction]
    except Exception:  # pragma: no cover - no triton: no launches to count
        classes = []
    for cls in classes:
        original = cls.run

        def run(self, *args, _original=original, **kwargs):
            counts[getattr(getattr(self, "fn", None), "__name__", "kernel")] += 1
            return None if stub else _original(self, *args, **kwargs)
        cls.run = run
        patched.append((cls, original))
    try:
        yield counts
    finally:
        for cls, original in patched:
            cls.run = original


def eager_step_cost(step, stub_triton: bool) -> dict:
    """{"aten_ops", "triton_launches", "launches", "top_ops"} of one call of ``step()``."""
    counter = OpCounter()
    with triton_launches(stub_triton) as launches, counter:
        step()
    aten, triton = sum(counter.ops.values()), sum(launches.values())
    return {"aten_ops": aten, "triton_launches": triton, "launches": aten + triton,
            "top_ops": dict(counter.ops.most_common(12))}


def kernels_in_code(sources) -> collections.Counter:
    """Kernel calls in inductor's generated wrapper code, by kind."""
    kinds = collections.Counter()
    for src in sources:
        for line in src.splitlines():
            m = KERNEL_LINE.match(line)
            if m is None or (m["aten"] and m["aten"].startswith(NOT_KERNELS)):
                continue
            kinds[next(k for k in ("triton", "cpp", "extern", "op", "aten") if m[k])] += 1
    return kinds


def compiled_step_cost(step, stub_triton: bool) -> dict:
    """{"kernels", "kinds", "triton_launches"} of the first (compiling) call of ``step()``: the
    kernels the compiled forward and backward run per call."""
    from torch._inductor.utils import run_and_get_code

    with triton_launches(stub_triton) as launches:
        _, sources = run_and_get_code(step)
    kinds = kernels_in_code(sources)
    triton = sum(launches.values())
    return {"kernels": sum(kinds.values()) + triton, "kinds": dict(kinds),
            "triton_launches": triton}
