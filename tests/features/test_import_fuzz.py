"""Fuzzing the importers' readers (issue 22): truncated, bit-flipped and random files of each
format end in ImportFormatError naming the file, or (a flip that leaves the file valid, e.g. in
a feature value) in a record, never in another exception, a crash or a hang.

Base files are the extractors' layouts (``extractor_files.py``: butd caffe and d2 mode with
torch tensors, mmf vmb / frcnn / VinVL, uniter), small (3 boxes of dim 4). Mutations: the file
cut short, 1-8 bytes or bits flipped, random bytes (some behind a valid .npy / zip magic), and
for .npz the same done to one member re-zipped with a valid CRC (else the zip's CRC catches
nearly every flip before the pickle is read); for mmf-npy either file of the pair. The cases
run in a child process (this file as a script) so that a segfault or a hang fails the test
naming the case; seeded, ~1-2 s per format here.
"""
import faulthandler
import json
import os
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

CASES = {"butd-npz": 300, "mmf-npy": 300, "uniter-npz": 240}


def _bases(fmt: str, root: str):
    """Valid files of the format: [(feature file, [files the mutations may hit])]."""
    from lxmert_fast.features import extractor_files as ef
    from lxmert_fast.features.synthetic import random_records

    recs = list(random_records(3, dim=4, boxes=(3, 3, 1), seed=5))
    os.makedirs(root, exist_ok=True)
    if fmt == "butd-npz":
        paths = [ef.write_butd_caffe(recs[0], root), ef.write_butd_d2(recs[1], root),
                 ef.write_butd_caffe(recs[2], root, attrs=False, id_base=1)]
        return [(p, [p]) for p in paths]
    if fmt == "mmf-npy":
        paths = [ef.write_mmf_vmb(recs[0], root, num_features=5),
                 ef.write_mmf_frcnn(recs[1], root, resized=(60, 80)),
                 ef.write_mmf_vinvl(recs[2], root)]
        return [(p, [p[:-4] + "_info.npy", p]) for p in paths]
    paths = [ef.write_uniter(r, root, prefix="") for r in recs]
    return [(p, [p]) for p in paths]


def _flip(rng, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        i = int(rng.integers(0, len(b)))
        b[i] = b[i] ^ (1 << int(rng.integers(0, 8))) if rng.random() < 0.5 \
            else int(rng.integers(0, 256))
    return bytes(b)


def _opcode_flip(rng, data: bytes) -> bytes:
    """1-3 bytes changed at or just after pickle opcodes (an opcode, a length, a memo index),
    where a flip changes what the unpickler does rather than a value (.npy with a pickle)."""
    import io
    import pickletools
    from numpy.lib import format as npformat

    fp = io.BytesIO(data)
    npformat.read_magic(fp)
    npformat.read_array_header_1_0(fp)
    start = fp.tell()
    places = [start + pos for _, _, pos in pickletools.genops(data[start:])]
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        i = min(places[int(rng.integers(0, len(places)))] + int(rng.integers(0, 3)), len(b) - 1)
        b[i] = int(rng.integers(0, 256))
    return bytes(b)


def _mutate(rng, data: bytes, kind: str) -> bytes:
    if kind == "truncate":
        return data[:int(rng.integers(0, len(data)))]
    if kind == "flip":
        return _flip(rng, data)
    if kind == "opcode":
        return _opcode_flip(rng, data)
    junk = rng.integers(0, 256, int(rng.integers(0, 600)), dtype=np.uint8).tobytes()
    prefix = [b"", b"\x93NUMPY\x01\x00", b"PK\x03\x04", data[:int(rng.integers(0, 80))]]
    return prefix[int(rng.integers(0, len(prefix)))] + junk


def _mutate_member(rng, path: str, kind: str) -> bytes:
    """The .npz with one member mutated and re-zipped (valid CRC)."""
    import io
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    names = sorted(members)
    # the pickled info most often: that is what the restricted unpickler reads
    name = "info.npy" if "info.npy" in members and (kind == "opcode" or rng.random() < 0.6) \
        else names[int(rng.integers(0, len(names)))]
    members[name] = _mutate(rng, members[name], kind)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for n in names:
            zf.writestr(n, members[n])
    return buf.getvalue()


def _read(fmt: str, path: str):
    from lxmert_fast.features.import_mmf import read_mmf_npy
    from lxmert_fast.features.import_npz import read_butd_npz, read_uniter_npz

    if fmt == "butd-npz":   # the first base takes info['image_id'], the third id_base 1
        name = os.path.basename(path)
        return read_butd_npz(path, None if name == "img0000000.npz" else "a",
                             id_base=int(name == "img0000002.npz"))
    if fmt == "mmf-npy":
        return read_mmf_npy(path, "a", image_sizes="extent")
    return read_uniter_npz(path, "a")


def run_cases(fmt: str, root: str, results: str) -> None:
    """Child: every case in turn (its number on stdout first), outcomes to ``results``."""
    from lxmert_fast.features import ImportFormatError

    faulthandler.enable()
    faulthandler.dump_traceback_later(240, exit=True)
    rng = np.random.default_rng(22)
    bases = _bases(fmt, os.path.join(root, "base"))
    for feat, _ in bases:
        _read(fmt, feat)   # every base file imports
    out, slowest = [], 0.0
    for i in range(CASES[fmt]):
        feat, targets = bases[i % len(bases)]
        kinds = ("truncate", "flip", "random") + (("opcode",) if fmt != "uniter-npz" else ())
        kind = kinds[int(rng.integers(0, len(kinds)))]
        # mmf-npy: the info file 3 times in 4 (or always, for opcode flips)
        target = targets[0 if kind == "opcode" or rng.random() < 0.75 else -1]
        with open(target, "rb") as f:
            data = f.read()
        case_dir = os.path.join(root, f"case{i:04d}")
        os.makedirs(case_dir)
        inner = target.endswith(".npz") and kind != "random" and (
            kind == "opcode" or rng.random() < 0.8)
        for p in targets:
            with open(p, "rb") as f:
                original = f.read()
            if p == target:
                original = _mutate_member(rng, p, kind) if inner else _mutate(rng, data, kind)
            with open(os.path.join(case_dir, os.path.basename(p)), "wb") as f:
                f.write(original)
        path = os.path.join(case_dir, os.path.basename(feat))
        print(i, path, flush=True)
        start = time.perf_counter()
        try:
            _read(fmt, path)
            outcome = ["ok", ""]
        except ImportFormatError as e:
            outcome = ["ImportFormatError", str(e)]
        except Exception as e:  # noqa: BLE001 - what the test must never see
            import traceback
            outcome = [type(e).__name__, traceback.format_exc()]
        slowest = max(slowest, time.perf_counter() - start)
        out.append({"case": i, "kind": kind + ("-member" if inner else ""), "path": path,
                    "files": [os.path.join(case_dir, os.path.basename(p)) for p in targets],
                    "outcome": outcome})
    with open(results, "w") as f:
        json.dump({"cases": out, "slowest_s": slowest}, f)


@pytest.mark.parametrize("fmt", list(CASES))
def test_fuzzed_files_end_in_a_named_error(tmp_path, fmt):
    results = tmp_path / "results.json"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), fmt, str(tmp_path),
                           str(results)], capture_output=True, text=True, timeout=300)
    last = (proc.stdout.strip().splitlines() or ["(none)"])[-1]
    assert proc.returncode == 0, (f"fuzz child died (rc {proc.returncode}) at case {last}: "
                                  f"{proc.stderr[-3000:]}")
    data = json.loads(results.read_text())
    cases = data["cases"]
    assert len(cases) == CASES[fmt] >= 200
    kinds = {}
    for c in cases:
        kind, msg = c["outcome"]
        kinds[kind] = kinds.get(kind, 0) + 1
        assert kind in ("ok", "ImportFormatError"), f"case {c['case']} ({c['kind']}): {msg}"
        if kind == "ok":   # a flip that kept the file valid; cut or random files never are
            assert c["kind"].startswith(("flip", "opcode")), c
        else:
            named = any(msg.startswith(f + ":") for f in c["files"])
            assert named, f"case {c['case']} ({c['kind']}) names no file of the image: {msg}"
    assert kinds.get("ImportFormatError", 0) > 0.8 * len(cases), kinds
    assert data["slowest_s"] < 2.0, data["slowest_s"]
    print(f"{fmt}: {kinds}, slowest case {data['slowest_s'] * 1e3:.0f} ms, "
          f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    run_cases(*sys.argv[1:4])
