"""Shared helpers for the lxmert_fast benchmarks (style of Liger-Kernel ``benchmark/`` and
flash-attention ``benchmarks/``): every benchmark names its device and library versions, times its
fast path and its baseline in the same run, synchronises the GPU inside the timed call, and reports
the figure that matters (GB/s for memory-bound ops, TFLOP/s for GEMM-bound ones, samples/s for a
step) plus the ratio to the baseline.

Convention: a benchmark test is parametrized over *variants* (e.g. "triton", "sdpa", "eager") that
share one ``benchmark.group``; baseline variants call ``record(benchmark, ...)`` with no
``baselines``, fast variants name theirs (``baselines=("eager", "sdpa")``) and get
``ratio_vs_<name>`` = baseline time / fast time for every baseline already measured in this session
(parametrize baselines first). ``python -m benchmarks.report`` recomputes the same ratios from the
JSON, so a filtered run still reports what it measured.
"""
import functools
import os
import platform
import statistics
import time
from importlib import metadata
from typing import Callable, Dict, Iterable, Optional, Tuple

import pytest
import torch

# (group, variant) -> median seconds of the variants measured so far in this session.
_TIMES: Dict[Tuple[str, str], float] = {}


def _version(dist: str) -> Optional[str]:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def device_info() -> dict:
    """The hardware and software a figure was measured on (no heavy imports: versions come from
    package metadata, so DeepSpeed is never imported here)."""
    info = {
        "torch": torch.__version__,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "deepspeed": _version("deepspeed"),
        "python": platform.python_version(),
        "cpu": f"{_cpu_model()} ({os.cpu_count()} logical cores, "
               f"{torch.get_num_threads()} torch threads)",
    }
    if torch.cuda.is_available():
        idx = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        info.update(device=torch.cuda.get_device_name(idx), device_type="cuda",
                    cuda=torch.version.cuda, gpu_memory_gb=round(props.total_memory / 2**30, 1))
    else:
        info.update(device=info["cpu"], device_type="cpu")
    return info


def sync() -> None:
    """Wait for the GPU (a no-op without CUDA) so that wall-clock time covers the work."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn: Callable) -> Callable:
    """Wrap ``fn`` so that each call synchronises CUDA before returning (what pytest-benchmark
    times is then the device work, not the launch)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        sync()
        return out
    return wrapper


def benchmarks_disabled(obj) -> bool:
    """True when benchmarks run as plain tests (``--benchmark-disable``): suites shrink their
    workloads then. ``obj`` is a pytest ``config``, a ``request`` or a ``benchmark`` fixture."""
    if hasattr(obj, "disabled"):
        return bool(obj.disabled)
    config = getattr(obj, "config", obj)
    return bool(config.getoption("benchmark_disable", default=False))


def tensor_bytes(*tensors) -> int:
    """Bytes held by the given tensors (None is skipped): the memory traffic of a fused op that
    reads and writes each once."""
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _figures(seconds: float, bytes_moved, flops, samples) -> dict:
    out = {"time_us": seconds * 1e6}
    if bytes_moved:
        out["GB/s"] = bytes_moved / seconds / 1e9
    if flops:
        out["TFLOP/s"] = flops / seconds / 1e12
    if samples:
        out["samples/s"] = samples / seconds
        out["ms/step"] = seconds * 1e3
    return out


def _clean(value):
    if isinstance(value, (tuple, list)):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "")
    if isinstance(value, (torch.device, torch.Size)):
        return str(value)
    return value


def record(benchmark, *, shapes: dict, variant: Optional[str] = None,
           baselines: Iterable[str] = (), bytes_moved: Optional[int] = None,
           flops: Optional[float] = None, samples: Optional[int] = None, **figures) -> dict:
    """Put device info, shapes, figures and the ratio to the baselines into
    ``benchmark.extra_info`` after the benchmark ran; returns the extra_info dict.

    Figures derived from the median time: ``GB/s`` (``bytes_moved``), ``TFLOP/s`` (``flops``),
    ``samples/s`` and ``ms/step`` (``samples``). Extra keyword figures (peak memory, MFU, loss
    differences) are stored as given. With ``--benchmark-disable`` nothing was timed: only the
    device, shapes and the given figures are stored.
    """
    variant = variant or benchmark.param or benchmark.name
    baselines = tuple(baselines)
    info = benchmark.extra_info
    info.update(device_info())
    info.update(variant=variant, role="fast" if baselines else "baseline",
                baselines=list(baselines), shapes=_clean(shapes))
    info.update({k: _clean(v) for k, v in figures.items()})
    stats = getattr(benchmark, "stats", None)
    if stats is None or benchmark.disabled:
        return info
    seconds = stats.stats.median
    group = benchmark.group or benchmark.name
    _TIMES[(group, variant)] = seconds
    info.update(_figures(seconds, bytes_moved, flops, samples))
    for base in baselines:
        base_s = _TIMES.get((group, base))
        if base_s is not None:
            info[f"ratio_vs_{base}"] = base_s / seconds
    return info


def interleaved_ratio(fast: Callable, baseline: Callable, rounds: int = 3) -> dict:
    """Time ``fast`` and ``baseline`` alternately (A B A B ...), each synchronised, and return
    both medians and baseline / fast. On a shared machine whose load drifts during a run, this
    ratio is fair where two benchmarks measured one after the other are not."""
    times = {"fast": [], "baseline": []}
    for _ in range(rounds):
        for name, fn in (("fast", fast), ("baseline", baseline)):
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    fast_s, base_s = statistics.median(times["fast"]), statistics.median(times["baseline"])
    return {"interleaved_fast_s": fast_s, "interleaved_baseline_s": base_s,
            "interleaved_rounds": rounds, "interleaved_ratio": base_s / fast_s}


def cuda_peak_memory_gb() -> Optional[float]:
    """Peak allocated CUDA memory since the last reset, in GiB (None without CUDA)."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / 2**30


def reset_peak_memory() -> None:
    if torch.cuda.is_available():
        sync()
        torch.cuda.reset_peak_memory_stats()


NEEDS_CUDA = "needs a CUDA GPU: it measures GPU kernels/steps and this machine has none"
gpu_only = pytest.mark.skipif(not torch.cuda.is_available(), reason=NEEDS_CUDA)
