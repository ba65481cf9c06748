"""Compile the Triton kernels for an H100 (sm_90) on a machine without a GPU.

Run as a script in a process WITHOUT ``TRITON_INTERPRET`` (the interpreter replaces the jit
functions). The launchers run on CPU tensors with each kernel's ``[grid](...)`` replaced by a
recorder; each recorded launch is compiled with ``triton.compile`` for sm_90 through ptxas, and
its shared memory, registers and spill stack (cuobjdump) are printed, one JSON line per launch.
"""
import json
import os
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import lxmert_fast.kernels  # noqa: F401  (loads the op modules)

A = sys.modules["lxmert_fast.kernels.attention"]
LN = sys.modules["lxmert_fast.kernels.layernorm"]
G = sys.modules["lxmert_fast.kernels.gelu"]
TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.uint8: "u8",
         torch.int64: "i64"}
LAUNCHES = []


class _Recorder:
    def __init__(self, fn):
        self.fn = fn

    def __getitem__(self, grid):
        return lambda *args, **kw: LAUNCHES.append((self.fn, args, kw))


def _signature(fn, args):
    sig, consts, attrs = {}, {}, {}
    for i, (param, a) in enumerate(zip(fn.params, args)):
        name = param.name
        if param.is_constexpr:
            sig[name], consts[name] = "constexpr", a
        elif isinstance(a, torch.Tensor):
            sig[name], attrs[(i,)] = "*" + TYPES[a.dtype], [["tt.divisibility", 16]]
        elif isinstance(a, bool):
            sig[name] = "i1"
        elif isinstance(a, int):
            sig[name] = "i32" if abs(a) < 2 ** 31 else "i64"
        else:
            sig[name] = "fp32"
    return sig, consts, attrs


def _resources(cubin):
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True,
                             text=True, check=True).stdout
    fields = [w.split(":") for line in out.splitlines() if "REG:" in line for w in line.split()]
    return {f[0]: int(f[1]) for f in fields if len(f) == 2 and f[1].isdigit()}


def compile_recorded(case):
    for fn, args, kw in LAUNCHES:
        src = ASTSource(fn, *_signature(fn, args))
        opts = {"num_warps": kw.get("num_warps", 4), "num_stages": kw.get("num_stages", 3)}
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)
        res = _resources(k.asm["cubin"])
        print(json.dumps(dict(case=case, kernel=fn.__name__, **opts, shared=k.metadata.shared,
                              regs=res.get("REG"), stack=res.get("STACK"))), flush=True)
    LAUNCHES.clear()


def main():
    for mod, names in ((A, ("_attn_fwd_kernel", "_attn_bwd_kernel")),
                       (LN, ("_ln_fwd_kernel", "_ln_bwd_kernel")),
                       (G, ("_gelu_fwd_kernel", "_gelu_bwd_kernel"))):
        for n in names:
            setattr(mod, n, _Recorder(getattr(mod, n)))
    bf16, seed = torch.bfloat16, torch.tensor([1])
    q, k = torch.empty(2, 20, 12, 64, dtype=bf16), torch.empty(2, 36, 12, 64, dtype=bf16)
    ml, mv = torch.ones(2, 20, dtype=torch.bool), torch.ones(2, 36, dtype=torch.bool)
    dirs = [(q, k, k, mv), (k, q, q, ml)]  # LXMERT's cross pair: 20 tokens, 36 objects
    (o1, l1), (o2, l2) = A.attention_forward(dirs, 0.125, 0.1, seed)
    A.attention_backward(dirs, [o1, o2], [l1, l2], [o1, o2], 0.125, 0.1, seed)
    compile_recorded("attention pair bf16 20x36 d64 dropout")
    x, w = torch.empty(14336, 768, dtype=bf16), torch.empty(768)
    y, mean, rstd = LN.layer_norm_forward(x, x, w, w, w, seed, 1e-12, 0.1)
    LN.layer_norm_backward(x, x, w, w, seed, mean, rstd, y, 0.1)
    compile_recorded("dropout_add_layer_norm bf16 14336x768 dropout")
    x, b = torch.empty(14336, 3072, dtype=bf16), torch.empty(3072, dtype=bf16)
    G.bias_gelu_backward(x, b, G.bias_gelu_forward(x, b))
    compile_recorded("bias_gelu bf16 14336x3072")


if __name__ == "__main__":
    main()
