"""The kernels are importable only as ``lxmert_fast.kernels``. A second copy under another name
registers the same ``lxmert_fast::*`` custom ops again; torch then destroys the first
registration, and the first copy's ops (the ones the model calls) lose their schema: Dynamo
failed with "Tried to access the schema for  which doesn't have a schema registered yet" or
crashed. transformers' LXMERT import probes for a top-level package named ``kernels`` (the Hub
kernels package) and imported one: the repository's ``kernels/`` folder, found on sys.path when
a run starts from the repository root. Checked in a new interpreter started there."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = r"""
import importlib, importlib.util, os, sys
import lxmert_fast.kernels
op = importlib.import_module("lxmert_fast.kernels.attention").attn_fwd._opoverload
try:
    import transformers.models.lxmert.modeling_lxmert  # probes for a package named "kernels"
except ImportError as e:
    print("transformers not importable:", e)
spec = importlib.util.find_spec("kernels")
origin = None if spec is None else os.path.realpath(spec.origin or "")
repo = os.path.realpath(sys.argv[1])
if origin is not None and origin.startswith(repo + os.sep):
    print("FAIL: 'import kernels' finds the repository's", origin)
    sys.exit(1)
mod = sys.modules.get("kernels")
if mod is not None and os.path.realpath(getattr(mod, "__file__", "") or "").startswith(repo):
    print("FAIL: a second copy of the kernels was imported as 'kernels'")
    sys.exit(1)
schema = str(op._schema)  # the op the model calls still has its schema
assert schema.startswith("lxmert_fast::attn_fwd("), schema
print("OK", schema[:40])
"""


def test_kernels_import_only_as_lxmert_fast_kernels_from_the_repository_root():
    pytest.importorskip("transformers")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, REPO], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "OK lxmert_fast::attn_fwd(" in proc.stdout, \
        f"rc {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
