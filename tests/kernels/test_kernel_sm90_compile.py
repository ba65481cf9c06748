"""The GPU path is compiled even where there is no GPU (tests/kernels/kernel_sm90_compile.py): the
shipped kernel configurations, specialised exactly as a launch on a GPU would be, go through
Triton's CUDA pipeline and ptxas for sm_90 (H100/H200). Catches what the interpreter does not
(non-constexpr globals, dot shapes, shared memory), fails on any register spill and on shared
memory above the sm_90 block limit, and checks the occupancy the launchers are sized for.

CI compiles the bfloat16 (training) configurations, ~50 kernels; the full matrix (float16 and
float32 too, ~150 kernels, minutes) is ``python tests/kernels/kernel_sm90_compile.py --out
benchmarks/results/sm90-compile-triton-<version>``, whose committed record is checked here
against the limits the code advertises."""
import json
import os
import subprocess
import sys

import pytest
import torch
import triton

from lxmert_fast.kernels.attention import MAX_HEAD_DIM
from lxmert_fast.kernels.layernorm import MAX_N

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
RECORD = os.path.join(ROOT, "benchmarks", "results", "sm90-compile-triton-3.9", "compile.json")
BLOCK_SHARED_MAX = 232448
NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


@pytest.fixture(scope="module")
def bf16_rows():
    if not os.path.exists(PTXAS):
        pytest.skip(f"no ptxas in the triton wheel ({PTXAS})")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, os.path.join(HERE, "kernel_sm90_compile.py"),
                           "--dtypes", "bf16"], capture_output=True, text=True, env=env,
                          timeout=1200)
    out = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert out, proc.stderr[-4000:]
    return out, proc


def _check_compiled(rows):
    bad = [r for r in rows if not r["ok"]]
    assert not bad, "\n".join(json.dumps(r) for r in bad)
    for r in rows:
        assert r["regs"] is not None and r["shared"] <= BLOCK_SHARED_MAX, r
        assert r["stack"] == r["spill_stores"] == r["spill_loads"] == 0, r


def _check_occupancy(rows):
    """Attention forward and backward >= 2 programs per SM at LXMERT's shapes (head dim 64, 20/36
    tokens, 12 heads, 16-bit); the LayerNorm and bias-GeLU backwards run in one wave."""
    for r in rows:
        lxmert = " d64 " in r["case"] and "x512" not in r["case"] and "fp32" not in r["case"]
        if r["kernel"].startswith("_attn") and lxmert:
            assert r["programs_per_sm"] >= 2, r
        if r["kernel"] in ("_ln_bwd_kernel", "_gelu_bwd_kernel"):
            assert r["waves"] <= 1.0, r


def _check_limits_covered(rows, dtypes):
    """Each head dim (powers of two) up to MAX_HEAD_DIM and rows of MAX_N are compiled."""
    cases = {r["case"] for r in rows}
    for dt in dtypes:
        name = NAMES[dt]
        for D in (16, 32, 64, 128, 256):
            if D <= MAX_HEAD_DIM[dt]:
                assert any(f" {name} d{D} " in c for c in cases), (name, D)
        assert any(f" {name} 4096x{MAX_N} " in c for c in cases), (name, MAX_N)


def test_bf16_configurations_compile_without_spills_within_shared_memory(bf16_rows):
    rows, proc = bf16_rows
    _check_compiled(rows)
    assert proc.returncode == 0, proc.stderr[-4000:]
    _check_limits_covered(rows, [torch.bfloat16])


def test_bf16_occupancy_at_lxmert_shapes(bf16_rows):
    _check_occupancy(bf16_rows[0])


def test_committed_record_covers_every_dtype_and_limit():
    """The full matrix's record (all dtypes) shows no spill, fits, meets the occupancy targets
    and covers every limit the code advertises now (rerun it when a limit changes)."""
    with open(RECORD) as f:
        rows = json.load(f)["launches"]
    _check_compiled(rows)
    _check_occupancy(rows)
    _check_limits_covered(rows, list(NAMES))
