"""Shared by tests/ and benchmarks/: on machines without CUDA, Triton runs under its interpreter.
Must run before triton is imported, so it lives at the repository root."""
import os

try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except Exception:  # pragma: no cover
    pass
