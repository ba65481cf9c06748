"""Benchmark fixtures. (TRITON_INTERPRET without CUDA is set by the root conftest.py.)"""
import pytest

from benchmarks.common import benchmarks_disabled


@pytest.fixture
def quick(request) -> bool:
    """True under ``--benchmark-disable`` (CI runs the suites once as plain tests): shrink the
    workload to the smallest that still exercises the code."""
    return benchmarks_disabled(request.config)
