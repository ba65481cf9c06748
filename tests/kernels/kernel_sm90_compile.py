"""Compile every shipped Triton kernel configuration for an H100/H200 (sm_90) without a GPU.

A real launch's twin: the launchers run on CPU tensors shaped, strided and typed as the model's
(each head dim, dtype, direction count, dropout on/off, each LayerNorm and FFN width) with every
kernel's ``[grid](...)`` replaced by a recorder; each recorded launch is specialised by Triton's
own launch binder for the CUDA backend (an int equal to 1 becomes a constant, ints and pointers
divisible by 16 get the divisibility attribute, exactly as ``JITFunction.run`` does on a GPU) and
compiled by ``triton.compile`` through ptxas for sm_90. Per distinct kernel it reports registers,
shared memory, spill stores/loads (ptxas) and local stack (cuobjdump), the programs that fit on one
SM and the waves of the grid over 132 SMs.

Run as a script in a process WITHOUT ``TRITON_INTERPRET`` (the interpreter replaces the jit
functions): ``python tests/kernels/kernel_sm90_compile.py [--out DIR] [--jobs N] [--dtypes bf16,fp32]``.
Prints one JSON line per compiled kernel; with ``--out`` writes ``compile.json`` and
``compile.md``. Exits 1 when any kernel spills or needs more shared memory than an sm_90 block
may have (232,448 B).
"""
import argparse
import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

import lxmert_fast.kernels  # noqa: F401  (loads the op modules)

A = sys.modules["lxmert_fast.kernels.attention"]
LN = sys.modules["lxmert_fast.kernels.layernorm"]
GE = sys.modules["lxmert_fast.kernels.gelu"]
IMPL = sys.modules["lxmert_fast.kernels._impl"]
TARGET = GPUTarget("cuda", 90, 32)
SMS = 132  # H100 SXM / H200
SM_SHARED, BLOCK_SHARED_MAX, BLOCK_RESERVED = 233472, 232448, 1024  # bytes (sm_90)
SM_REGS, SM_WARPS, SM_BLOCKS = 65536, 64, 32
KERNELS = {A: ("_attn_fwd_kernel", "_attn_bwd_kernel", "_attn_pair_fwd_kernel",
               "_attn_pair_bwd_kernel"), LN: ("_ln_fwd_kernel", "_ln_bwd_kernel"),
           GE: ("_gelu_fwd_kernel", "_gelu_bwd_kernel")}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
RECORDED = []
HOST_SEED = (None, 2 ** 40 + 12345, 2 ** 33 + 8)  # eager CUDA: the host's (seed, call) as ints


class _Recorder:
    """Stands in for a jit kernel: ``kernel[grid](*args, **kw)`` records instead of launching."""

    def __init__(self, fn):
        self.fn = fn

    def __getitem__(self, grid):
        return lambda *args, **kw: RECORDED.append((self.fn, tuple(grid), args, kw))


def specialise(fn, args, kw):
    """(signature, constexprs, attrs, options) exactly as ``JITFunction.run`` builds them."""
    backend = make_backend(TARGET)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kw = dict(kw, debug=False)
    bound, spec, options = binder(*args, **kw)
    options, signature, constexprs, attrs = fn._pack_args(backend, kw, bound, spec, options)
    return signature, constexprs, attrs, options


def _spills(ptxas_log):
    """Spill stores and loads from the ``ptxas -v`` log of the compile itself."""
    words = ptxas_log.replace(",", " ").split()
    spill = {"spill_stores": 0, "spill_loads": 0}
    for i, w in enumerate(words[2:-1], 2):
        if w == "spill" and words[i + 1] in ("stores", "loads"):
            spill["spill_" + words[i + 1]] += int(words[i - 2])
    return spill


def _resources(cubin):
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True,
                             text=True, check=True).stdout
    fields = [w.split(":") for line in out.splitlines() if "REG:" in line for w in line.split()]
    return {f[0]: int(f[1]) for f in fields if len(f) == 2 and f[1].isdigit()}


def programs_per_sm(regs, shared, warps):
    """Resident programs per sm_90 SM: registers (allocated per warp in units of 256), shared
    memory (+1 KB reserved per block), warps and the block limit."""
    per_warp = -(-max(regs, 1) * 32 // 256) * 256
    by_regs = (SM_REGS // per_warp) // warps
    by_shared = SM_SHARED // (shared + BLOCK_RESERVED)
    return min(by_regs, by_shared, SM_WARPS // warps, SM_BLOCKS)


def compile_one(job):
    """Compile one specialised kernel; returns its figures (run in a worker process)."""
    mod_name, fn_name, signature, constexprs, attrs, options = job
    knobs.nvidia.dump_ptxas_log = True
    knobs.compilation.always_compile = True  # a cached kernel would bring no ptxas log
    fn = getattr(sys.modules[mod_name], fn_name)
    fn = getattr(fn, "fn", fn)
    src = ASTSource(fn, signature, constexprs, attrs)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # Triton prints the ptxas -v log when asked
        k = triton.compile(src, target=TARGET, options=options)
    if "Used" not in log.getvalue():
        raise RuntimeError(f"{fn_name}: no ptxas -v log captured; cannot check spills")
    res = _resources(k.asm["cubin"])
    warps = options["num_warps"]
    out = dict(regs=res.get("REG"), stack=res.get("STACK", 0), shared=k.metadata.shared,
               **_spills(log.getvalue()))
    out["programs_per_sm"] = programs_per_sm(out["regs"], out["shared"], warps)
    return out


def _attention_case(dtype, D, H, B, Lq, Lk, pair, dropout, mask=True, seed=None):
    """Model-shaped q, k, v: (B, L, H, D) views of (B, L, H*D) projection outputs; the pair's
    streams are slices of one concatenated projection, as LxmertCrossAttentionLayer makes them."""
    def proj(L):
        return torch.empty(B, L, H * D, dtype=dtype).view(B, L, H, D)

    def keys(L):
        return torch.ones(B, L, dtype=torch.bool) if mask else None

    p = 0.1 if dropout else 0.0
    if pair:
        q, k, v = (proj(Lq + Lk) for _ in range(3))
        dirs = [(q[:, :Lq], k[:, Lq:], v[:, Lq:], keys(Lk)), (q[:, Lq:], k[:, :Lq], v[:, :Lq],
                                                              keys(Lq))]
    else:
        dirs = [(proj(Lq), proj(Lk), proj(Lk), keys(Lk))]
    seed = (seed or HOST_SEED) if p else None
    res = A.attention_forward(dirs, 1.0 / D ** 0.5, p, seed)
    outs, lses, keeps = ([r[i] for r in res] for i in range(3))
    A.attention_backward(dirs, outs, lses, keeps, outs, 1.0 / D ** 0.5, p)


def _ln_case(dtype, M, N, dropout, residual=True, x_bias=True):
    x, w = torch.empty(M, N, dtype=dtype), torch.empty(N, dtype=dtype)
    p = 0.1 if dropout else 0.0
    seed = HOST_SEED if p else None
    r = x if residual else None
    xb = w if x_bias else None
    y, mean, rstd, keep = LN.layer_norm_forward(x, r, w, w, xb, seed, 1e-12, p)
    LN.layer_norm_backward(x, r, w, xb, keep, mean, rstd, y, p)


def _gelu_case(dtype, M, N):
    x, b = torch.empty(M, N, dtype=dtype), torch.empty(N, dtype=dtype)
    GE.bias_gelu_backward(x, b, GE.bias_gelu_forward(x, b))


def cases(dtypes=tuple(DTYPES)):
    """(name, thunk) for every shipped configuration. LXMERT: hidden 768 = 12 heads x 64, 20
    tokens, 36 objects, FFN 3072; the small shipped model: hidden 128 = 4 heads x 32, FFN 512.
    Batch 256 (the pretraining batch on one GPU) sizes the grids. Head dims 16, 128 and 256 are
    what ``MAX_HEAD_DIM`` admits beyond the two models'."""
    B, out = 256, []
    for dt in dtypes:
        dims = [D for D in (16, 32, 64, 128, 256) if D <= A.MAX_HEAD_DIM[DTYPES[dt]]]
        for D, H in ((64, 12), (32, 4)):
            if D not in dims:
                continue
            for drop in (True, False):
                tag = f"{dt} d{D} {'dropout' if drop else 'no-dropout'}"
                for name, (lq, lk, pair) in {"self 20x20": (20, 20, False),
                                             "self 36x36": (36, 36, False),
                                             "pair 20x36": (20, 36, True)}.items():
                    out.append((f"attention {name} {tag}", lambda dt=dt, D=D, H=H, lq=lq, lk=lk,
                                pair=pair, drop=drop: _attention_case(
                                    DTYPES[dt], D, H, B, lq, lk, pair, drop)))
        for D in dims:
            if D in (32, 64):
                continue
            out.append((f"attention pair 20x36 {dt} d{D} dropout", lambda dt=dt, D=D:
                        _attention_case(DTYPES[dt], D, 4, 32, 20, 36, True, True)))
        D = max(d for d in dims if d <= 64)
        out.append((f"attention self 512x512 {dt} d{D} dropout (key blocks)", lambda dt=dt, D=D:
                    _attention_case(DTYPES[dt], D, 2, 2, 512, 512, False, True)))
        out.append((f"attention self 20x20 {dt} d{D} no mask", lambda dt=dt, D=D:
                    _attention_case(DTYPES[dt], D, 12, B, 20, 20, False, False, mask=False)))
        out.append((f"attention pair 20x36 {dt} d{D} dropout (seed tensor: compile/capture)",
                    lambda dt=dt, D=D: _attention_case(DTYPES[dt], D, 12, B, 20, 36, True, True,
                                                       seed=(torch.tensor([1]), 0, 0))))
        out.append((f"dropout_add_layer_norm {dt} 4096x{LN.MAX_N} dropout (MAX_N)", lambda dt=dt:
                    _ln_case(DTYPES[dt], 4096, LN.MAX_N, True)))
        for N, M in ((768, B * 56), (128, B * 56)):
            for drop in (True, False):
                out.append((f"dropout_add_layer_norm {dt} {M}x{N} "
                            f"{'dropout' if drop else 'no-dropout'}",
                            lambda dt=dt, M=M, N=N, drop=drop: _ln_case(DTYPES[dt], M, N, drop)))
            out.append((f"layer_norm (feature encoder: x_bias, no residual) {dt} {M}x{N}",
                        lambda dt=dt, M=M, N=N: _ln_case(DTYPES[dt], M, N, False, False, True)))
        for N in (3072, 512):
            out.append((f"bias_gelu {dt} {B * 56}x{N}",
                        lambda dt=dt, N=N: _gelu_case(DTYPES[dt], B * 56, N)))
    return out


def record_all(dtypes=tuple(DTYPES), only=None):
    """Run every case's launchers against the recorders; returns the distinct kernels to compile
    (keyed by their full specialisation) and, per case, its launches."""
    for mod, names in KERNELS.items():
        for n in names:
            setattr(mod, n, _Recorder(getattr(mod, n)))
    IMPL.num_sms = lambda device: SMS  # the launchers size persistent grids for an H100/H200
    jobs, launches = {}, []
    for case, thunk in cases(dtypes):
        if only and only not in case:
            continue
        RECORDED.clear()
        thunk()
        for fn, grid, args, kw in RECORDED:
            sig, consts, attrs, opts = specialise(fn, args, kw)
            opts = {k: v for k, v in opts.__dict__.items()
                    if k in ("num_warps", "num_stages", "num_ctas", "maxnreg", "debug")}
            key = json.dumps([fn.__name__, sig, {str(k): str(v) for k, v in consts.items()},
                              {str(k): v for k, v in attrs.items()}, opts], sort_keys=True)
            jobs.setdefault(key, (fn.__module__, fn.__name__, sig, consts, attrs, opts))
            launches.append(dict(case=case, kernel=fn.__name__, key=key, grid=grid,
                                 num_warps=opts["num_warps"], num_stages=opts["num_stages"]))
    return jobs, launches


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="folder for compile.json and compile.md")
    ap.add_argument("--jobs", type=int, default=max(1, min(8, os.cpu_count() or 1)))
    ap.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated: bf16,fp16,fp32")
    ap.add_argument("--only", help="cases whose name contains this string")
    a = ap.parse_args(argv)
    jobs, launches = record_all(a.dtypes.split(","), a.only)
    keys = list(jobs)
    with ProcessPoolExecutor(a.jobs) as pool:
        figures = dict(zip(keys, pool.map(compile_one, [jobs[k] for k in keys])))
    rows, failed = [], False
    for r in launches:
        f = figures[r.pop("key")]
        progs = r["grid"][0] * (r["grid"][1] if len(r["grid"]) > 1 else 1)
        r.update(f, waves=round(progs / (f["programs_per_sm"] * SMS), 2) if f["programs_per_sm"]
                 else None)
        bad = (f["stack"] or f["spill_stores"] or f["spill_loads"]
               or f["shared"] > BLOCK_SHARED_MAX or not f["programs_per_sm"])
        r["ok"] = not bad
        failed |= bool(bad)
        rows.append(r)
        print(json.dumps(r), flush=True)
    if a.out:
        write_record(a.out, rows, len(keys))
    return 1 if failed else 0


def write_record(folder, rows, n_compiled):
    os.makedirs(folder, exist_ok=True)
    meta = dict(triton=triton.__version__, torch=torch.__version__, target="cuda sm_90 (ptxas)",
                host=platform.processor() or platform.machine(), sms=SMS,
                distinct_kernels_compiled=n_compiled)
    with open(os.path.join(folder, "compile.json"), "w") as f:
        json.dump(dict(meta=meta, launches=rows), f, indent=1)
    lines = [f"# sm_90 compile figures (triton {triton.__version__}, ptxas, no GPU)", "",
             "Written by `python tests/kernels/kernel_sm90_compile.py --out <this folder>`: every "
             "shipped kernel configuration specialised as a GPU launch would be and compiled for "
             "sm_90. Programs/SM: resident programs per SM from registers, shared memory and "
             "warps; waves: the launch's programs over 132 SMs at that residency. CPU-side "
             "figures only: no kernel here has been timed on a GPU.", "",
             "| case | kernel | grid | warps | stages | regs | shared B | spills | "
             "programs/SM | waves |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        spills = r["stack"] + r["spill_stores"] + r["spill_loads"]
        lines.append(f"| {r['case']} | {r['kernel']} | {'x'.join(map(str, r['grid']))} | "
                     f"{r['num_warps']} | {r['num_stages']} | {r['regs']} | {r['shared']} | "
                     f"{spills} | {r['programs_per_sm']} | {r['waves']} |")
    with open(os.path.join(folder, "compile.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
