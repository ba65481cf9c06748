"""Fuzzing the C++ TSV reader against the Python reader (issue 4: never a crash).

Randomly corrupted TSV files (truncations, flipped bytes, dropped tabs, garbage or mis-sized
base64, odd integers, padding games, duplicated lines) are converted by the C++ converter and
loaded by TsvFeatures in a subprocess, so that a segfault fails the test instead of killing
pytest. Every case must end the same way in both: the same records, or the same exception type
naming the same file and line. The C++ base64 decoder is fuzzed against
base64.b64decode(validate=True) the same way, and the float16 cast against numpy in-process.
"""
import json
import os
import subprocess
import sys

import numpy as np

from lxmert_fast import _featstore
from lxmert_fast.features.synthetic import random_records
from lxmert_fast.features.tsv import format_line

NUM_CASES = 120
B64_CHARS = "AQgw+/=*- \x00\x80"
INT_VALUES = ["", " 3", "+3", "3_0", "3__0", "_3", "-1", "-0", "0x3", "3 \x0b", "\x0c2",
              "99999999999999999999", "1e3", "007"]

CHILD = r"""
import base64, json, sys, traceback
import numpy as np
from lxmert_fast import _featstore
from lxmert_fast.features import TsvFeatures, FeatureStore, convert_tsv

def outcome(fn):
    try:
        return "ok", fn()
    except Exception as e:
        return type(e).__name__, str(e)

cases, out_dir = json.load(open(sys.argv[1])), sys.argv[2]
results = []
for i, paths in enumerate(cases):
    print(i, flush=True)
    out = f"{out_dir}/case{i}.lxf"
    c_kind, c_val = outcome(lambda: convert_tsv(paths, out, dtype="float32", num_threads=2))
    p_kind, p_val = outcome(lambda: TsvFeatures(paths))
    same = None
    if c_kind == "ok" and p_kind == "ok":
        store = FeatureStore(out)
        same = store.ids == p_val.ids and all(
            all(np.array_equal(np.asarray(store[k][f]), np.asarray(p_val[k][f]))
                for f in p_val[k]) for k in p_val.ids)
    results.append({"paths": paths, "cpp": [c_kind, c_val if c_kind != "ok" else ""],
                    "py": [p_kind, p_val if p_kind != "ok" else ""], "same": same})
b64 = []
rng = np.random.default_rng(1)
alphabet = list(b"ABQw+/=*\n ")
for _ in range(3000):
    s = bytes(rng.choice(alphabet, rng.integers(0, 13)).astype(np.uint8))
    c = outcome(lambda: _featstore.b64decode(s))
    p = outcome(lambda: base64.b64decode(s, validate=True))
    if (c[0] == "ok") != (p[0] == "ok") or (c[0] == "ok" and c[1] != p[1]):
        b64.append([repr(s), c[0], str(c[1]), p[0], str(p[1])])
json.dump({"cases": results, "b64_mismatches": b64}, open(sys.argv[3], "w"))
"""


B64_FIELDS = [3, 4, 5, 6, 8, 9]  # objects_id/conf, attrs_id/conf, boxes, features
INT_FIELDS = [1, 2, 7]           # img_h, img_w, num_boxes
NUM_OPS = 9


def _applicable_ops(line: str, parts: list) -> list:
    """The mutations that can act on ``line`` (a line already cut short or stripped of tabs by
    an earlier mutation has fewer fields, or none)."""
    ops = [7]                                    # duplicate the line: always possible
    if line:
        ops += [0, 1]                            # truncate, flip bytes
    if "\t" in line:
        ops += [2, 5, 8]                         # drop a tab, odd integer, swap two fields
    if len(parts) > B64_FIELDS[0]:
        ops += [3, 4, 6]                         # base64 junk, mis-sized base64, padding
    return sorted(ops)


def _mutate(rng, lines):
    """One random corruption of one line of ``lines`` (a new list). Works on any line, also
    one that earlier mutations left short; on a full line the draws are those of a plain
    ``rng.integers(0, NUM_OPS)`` op choice, so a given seed keeps its cases."""
    lines = list(lines)
    k = int(rng.integers(0, len(lines)))
    line = lines[k]
    parts = line.split("\t")
    op = int(rng.integers(0, NUM_OPS))
    ops = _applicable_ops(line, parts)
    if op not in ops:
        op = ops[int(rng.integers(0, len(ops)))]
    if op == 0:
        line = line[: int(rng.integers(0, len(line)))]
    elif op == 1:
        chars = list(line)
        for _ in range(int(rng.integers(1, 4))):
            chars[int(rng.integers(0, len(chars)))] = chr(int(rng.integers(0, 256)))
        line = "".join(chars)
    elif op == 2:
        tabs = [i for i, c in enumerate(line) if c == "\t"]
        t = tabs[int(rng.integers(0, len(tabs)))]
        line = line[:t] + line[t + 1:]
    elif op in (3, 4, 6):
        f = int(rng.choice([f for f in B64_FIELDS if f < len(parts)]))
        v = parts[f]
        a = int(rng.integers(0, len(v) + 1))
        if op == 3:
            junk = "".join(rng.choice(list(B64_CHARS), int(rng.integers(1, 5))))
            v = v[:a] + junk + v[a + len(junk):]
        elif op == 4:
            n = int(rng.integers(1, 9))
            v = v[:a] + v[a + n:] if rng.random() < 0.5 else v[:a] + "QUJD"[: n % 5] + v[a:]
        else:
            v = v.rstrip("=") + "=" * int(rng.integers(0, 4))
        parts[f] = v
        line = "\t".join(parts)
    elif op == 5:
        parts[int(rng.choice([f for f in INT_FIELDS if f < len(parts)]))] = \
            str(rng.choice(INT_VALUES))
        line = "\t".join(parts)
    elif op == 7:
        lines.insert(int(rng.integers(0, len(lines))), line)
    else:
        i, j = rng.choice(len(parts), 2, replace=False)
        parts[i], parts[j] = parts[j], parts[i]
        line = "\t".join(parts)
    lines[k] = line
    return lines


def test_fuzz_corrupted_tsv_lines(tmp_path):
    rng = np.random.default_rng(0)
    base = [format_line(r) for r in random_records(6, dim=4, boxes=(0, 1, 2, 3), seed=3)]
    cases = []
    for i in range(NUM_CASES):
        lines = _mutate(rng, base)
        if rng.random() < 0.3:
            lines = _mutate(rng, lines)
        path = tmp_path / f"case{i}.tsv"
        ending = "\r\n" if rng.random() < 0.1 else "\n"
        path.write_bytes(ending.join(lines).encode("latin-1") + b"\n")
        cases.append([str(path)] if i % 4 else [str(path), str(tmp_path / "case0.tsv")])
    manifest, results = tmp_path / "cases.json", tmp_path / "results.json"
    manifest.write_text(json.dumps(cases))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(manifest), str(tmp_path),
                           str(results)], capture_output=True, text=True, timeout=600,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    last = proc.stdout.strip().splitlines()[-1:] or ["(none)"]
    assert proc.returncode == 0, (f"fuzz child died (rc {proc.returncode}) after case "
                                  f"{last[0]}: {proc.stderr[-2000:]}")
    data = json.loads(results.read_text())
    assert data["b64_mismatches"] == []
    kinds = set()
    for case in data["cases"]:
        (c_kind, c_msg), (p_kind, p_msg) = case["cpp"], case["py"]
        kinds.add(c_kind)
        assert c_kind == p_kind, case
        if c_kind == "ok":
            assert case["same"], case
        else:
            assert c_kind == "TsvFormatError", case
            assert c_msg.split(" (byte offset")[0] == p_msg.split(" (byte offset")[0], case
    assert kinds == {"ok", "TsvFormatError"}
    assert not [p for p in os.listdir(tmp_path) if ".tmp." in p]


def test_float16_cast_matches_numpy():
    specials = np.array([0.0, -0.0, 1.0, 65504.0, 65519.996, 65520.0, 1e9, -1e9, 5.96e-8,
                         2.98e-8, 2.980233e-8, 1e-10, 6.1035e-5, 6.1e-5, 1.00048828125,
                         1.00146484375, np.inf, -np.inf, np.nan, -np.nan], dtype=np.float32)
    bits = np.concatenate([specials.view(np.uint32),
                           np.random.default_rng(0).integers(0, 2 ** 32, 1 << 20, dtype=np.uint64)
                           .astype(np.uint32),
                           np.array([0x7f800001, 0x7fc00000, 0xffbfffff, 0x7f802000, 0x33000000,
                                     0x33000001, 0x387fe000, 0x38800000, 0x477fefff, 0x477ff000],
                                    dtype=np.uint32)])
    x = bits.view(np.float32)
    with np.errstate(all="ignore"):
        want = x.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(_featstore.float_to_half(x), want)
