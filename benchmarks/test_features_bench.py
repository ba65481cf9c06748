"""RoI-feature loading (issue 4): the C++ feature store against the original pure-Python reader,
measured in the same run on this machine (CPU only; nothing here needs a GPU).

- convert: TSV -> store throughput (images/s and MB/s of TSV), C++ (all threads, float16) vs
  the original loader decoding the same TSV into RAM (``load_obj_tsv``), in two variants:
  "cpp" is durable (fsync'ed before the rename: bound by the disk's write speed here) and
  "cpp-page-cache" is ``durable=False`` (left in the page cache, written back by the kernel
  later, like the Python reader's result that is never written at all). Target: >= 10x.
  CPU milliseconds per image are recorded too (steadier on a shared machine). Each round
  writes a new file (the previous round's store is removed untimed): renaming over an existing
  store would make ext4 start write-back at the rename (auto_da_alloc) in both variants.
- import: extractor files -> store (issue 16), in the same group and run as convert: the same
  images written as MILVLG's butd-npz (compressed npz with a pickled info dict), MMF's vmb npy
  (padded to 100 rows) and UNITER's float16 npz, imported durably with all threads; images/s and
  ``ratio_vs_cpp`` (convert's time / import's: the cost of reading the extractors' files).
- gather: random-order batches of 256 images x 36 boxes x 2048 from a float16 store in the page
  cache, into reused buffers, with 1 thread and all threads (and freshly allocated buffers), vs
  ``TsvFeatures.gather`` (float32 in RAM) and against one contiguous memcpy of the same bytes
  (the machine's copy speed at that moment). Target: >= 2 GB/s of features (~14,000 images/s).
- dataloader_memory: resident memory (RSS and PSS from /proc/<pid>/smaps_rollup, summed over the
  main process and its workers) of a DataLoader that gathers every image once, 1 worker vs 4.
  The mapping is shared page cache, so total PSS must stay within a small constant.

Under ``--benchmark-disable`` (CI) everything runs once on a tiny feature set.
"""
import itertools
import os
import resource

import numpy as np
import pytest
import torch

from benchmarks.common import benchmarks_disabled, record
from lxmert_fast.features import FeatureStore, TsvFeatures, convert_tsv, import_features
from lxmert_fast.features.extractor_files import write_butd_caffe, write_mmf_vmb, write_uniter
from lxmert_fast.features.synthetic import random_records
from lxmert_fast.features.tsv import load_obj_tsv, write_obj_tsv

THREADS = os.cpu_count() or 1


def _sizes(quick):
    """(images, boxes per image, feature dim, gather batch) of one benchmark setting."""
    return (12, 36, 64, 8) if quick else (512, 36, 2048, 256)


@pytest.fixture(scope="module")
def data(request, tmp_path_factory):
    quick = benchmarks_disabled(request.config)
    n, boxes, dim, batch = _sizes(quick)
    root = tmp_path_factory.mktemp("featbench")
    tsv = root / "features.tsv"
    write_obj_tsv(tsv, random_records(n, dim=dim, boxes=(boxes,), seed=0))
    store_path = root / "features.lxf"
    convert_tsv([tsv], store_path, dtype="float16")
    return {"quick": quick, "n": n, "boxes": boxes, "dim": dim, "batch": batch, "tsv": str(tsv),
            "tsv_bytes": os.path.getsize(tsv), "store": str(store_path), "root": root}


def _rounds(data, full):
    return {"rounds": 1, "iterations": 1} if data["quick"] else full


class _CpuTime:
    """Wraps a benchmarked call and sums the process CPU time (user + sys, all threads) it used:
    on a shared machine, CPU time per image is steadier than wall time."""

    def __init__(self, fn):
        self.fn, self.seconds, self.calls = fn, 0.0, 0

    def __call__(self, *args, **kwargs):
        before = resource.getrusage(resource.RUSAGE_SELF)
        out = self.fn(*args, **kwargs)
        after = resource.getrusage(resource.RUSAGE_SELF)
        self.seconds += (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        self.calls += 1
        return out

    def per_call_ms(self):
        return 1e3 * self.seconds / max(1, self.calls)


CONVERT_DURABLE = {"cpp": True, "cpp-page-cache": False}


@pytest.mark.parametrize("variant", ["python", *CONVERT_DURABLE])
def test_convert(benchmark, data, variant):
    benchmark.group = "features-convert"
    out = data["root"] / "bench.lxf"
    if variant == "python":
        fn = _CpuTime(load_obj_tsv)
        result = benchmark.pedantic(fn, args=(data["tsv"],),
                                    **_rounds(data, {"rounds": 2, "iterations": 1}))
        assert len(result) == data["n"]
    else:
        fn = _CpuTime(convert_tsv)
        kwargs = {"dtype": "float16", "num_threads": THREADS, "durable": CONVERT_DURABLE[variant]}

        def fresh_output():
            """Untimed: remove the previous round's store, so each round writes a new file as
            a user's conversion does (renaming over an existing file makes ext4 start
            write-back at the rename, auto_da_alloc, and frees the old file's blocks)."""
            if out.exists():
                out.unlink()
            return ([data["tsv"]], out), kwargs

        benchmark.pedantic(fn, setup=fresh_output,
                           **_rounds(data, {"rounds": 3, "iterations": 1, "warmup_rounds": 1}))
        assert len(FeatureStore(out)) == data["n"]
    info = record(benchmark, variant=variant, baselines=() if variant == "python" else ("python",),
                  shapes={"images": data["n"], "boxes": data["boxes"], "dim": data["dim"],
                          "tsv_bytes": data["tsv_bytes"]},
                  samples=data["n"], threads=1 if variant == "python" else THREADS,
                  durable=CONVERT_DURABLE.get(variant),
                  cpu_ms_per_image=fn.per_call_ms() / data["n"])
    if "samples/s" in info:
        info["images/s"] = info["samples/s"]
        info["MB/s TSV"] = data["tsv_bytes"] / (data["n"] / info["samples/s"]) / 1e6


IMPORT_WRITERS = {"butd-npz": write_butd_caffe, "mmf-npy": write_mmf_vmb,
                  "uniter-npz": write_uniter}


def _extractor_dir(data, fmt):
    """Factory: the benchmark's images (the TSV's records) as ``fmt``'s extractor writes them,
    one directory per format, written once per module."""
    src = data["root"] / fmt
    if not src.exists():
        src.mkdir()
        for rec in random_records(data["n"], dim=data["dim"], boxes=(data["boxes"],), seed=0):
            IMPORT_WRITERS[fmt](rec, str(src))
    return src


@pytest.mark.parametrize("fmt", list(IMPORT_WRITERS))
def test_import(benchmark, data, fmt):
    benchmark.group = "features-convert"
    src, out = _extractor_dir(data, fmt), data["root"] / "import.lxf"
    fn = _CpuTime(import_features)
    kwargs = {"format": fmt, "num_threads": THREADS, "durable": True}

    def fresh_output():
        """Untimed, as for convert: each round writes a new file."""
        if out.exists():
            out.unlink()
        return ([src], out), kwargs

    benchmark.pedantic(fn, setup=fresh_output,
                       **_rounds(data, {"rounds": 2, "iterations": 1, "warmup_rounds": 0}))
    assert len(FeatureStore(out)) == data["n"]
    src_bytes = sum(p.stat().st_size for p in src.iterdir())
    info = record(benchmark, variant=f"import-{fmt}", baselines=("cpp",),
                  shapes={"images": data["n"], "boxes": data["boxes"], "dim": data["dim"],
                          "source_bytes": src_bytes},
                  samples=data["n"], threads=THREADS, durable=True,
                  cpu_ms_per_image=fn.per_call_ms() / data["n"])
    if "samples/s" in info:
        info["images/s"] = info["samples/s"]
        info["MB/s source"] = src_bytes / (data["n"] / info["samples/s"]) / 1e6


GATHER_VARIANTS = {"python": None, "memcpy-reference": 1, "cpp-1thread": 1,
                   "cpp-all-threads": THREADS, "cpp-all-threads-alloc": THREADS}


@pytest.fixture(scope="module")
def sources(data):
    return {"store": FeatureStore(data["store"]), "python": TsvFeatures(data["tsv"])}


@pytest.mark.parametrize("variant", list(GATHER_VARIANTS))
def test_gather(benchmark, data, sources, variant):
    benchmark.group = "features-gather"
    store, batch = sources["store"], data["batch"]
    rng = np.random.default_rng(0)
    batches = itertools.cycle([rng.choice(data["n"], batch, replace=False) for _ in range(16)])
    with open(data["store"], "rb") as f:  # the store in the page cache
        while f.read(1 << 24):
            pass
    if variant == "python":
        fn = lambda: sources["python"].gather(next(batches))  # noqa: E731
    elif variant == "memcpy-reference":
        # One contiguous copy of the same bytes: what this machine's memory allows right now.
        src = store._arrays["features"][: batch * data["boxes"]]
        dst = np.empty_like(src)
        fn = lambda: np.copyto(dst, src)  # noqa: E731
    elif variant.endswith("alloc"):
        fn = lambda: store.gather(next(batches), num_threads=THREADS)  # noqa: E731
    else:
        out = store.gather(next(batches))
        threads = GATHER_VARIANTS[variant]
        fn = lambda: store.gather(next(batches), out=out, num_threads=threads)  # noqa: E731
    result = benchmark.pedantic(fn, **_rounds(data, {"rounds": 40, "iterations": 1,
                                                     "warmup_rounds": 4}))
    if variant != "memcpy-reference":
        assert result["features"].shape == (batch, 36, data["dim"])
    feat_bytes = batch * data["boxes"] * data["dim"] * 2  # float16 features delivered
    baselines = () if variant in ("python", "memcpy-reference") else ("python", "memcpy-reference")
    record(benchmark, variant=variant, baselines=baselines,
           shapes={"batch": batch, "max_boxes": 36, "dim": data["dim"], "images": data["n"]},
           bytes_moved=feat_bytes, samples=batch,
           threads=GATHER_VARIANTS[variant] or 1)
    if "samples/s" in benchmark.extra_info:
        benchmark.extra_info["images/s"] = benchmark.extra_info["samples/s"]


def _memory_kb(pid):
    """Rss, Pss and private kB of one process (smaps_rollup; Rss alone when unavailable)."""
    fields = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                    fields[parts[0][:-1]] = int(parts[1])
    except OSError:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    fields["Rss"] = int(line.split()[1])
    private = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return fields.get("Rss", 0), fields.get("Pss", 0), private


class _Indices(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


class _Gather:
    """collate_fn: the worker gathers its batch from the (pickled, re-opened) store."""

    def __init__(self, store):
        self.store = store

    def __call__(self, indices):
        return self.store.gather(indices)


def _epoch_memory(store, n, workers, batch):
    loader = torch.utils.data.DataLoader(_Indices(n), batch_size=batch, num_workers=workers,
                                         collate_fn=_Gather(store), persistent_workers=True,
                                         shuffle=True)
    it = iter(loader)
    seen = sum(int(b["num_boxes"].numel()) for b in it)
    pids = [os.getpid()] + [w.pid for w in it._workers]
    usage = [_memory_kb(p) for p in pids]
    del it, loader
    return seen, {"rss_mb": sum(u[0] for u in usage) / 1024, "pss_mb": sum(u[1] for u in usage) / 1024,
                  "worker_private_mb": [u[2] / 1024 for u in usage[1:]]}


_MEMORY = {}


@pytest.mark.parametrize("workers", [1, 4])
def test_dataloader_memory(benchmark, data, workers):
    benchmark.group = "features-dataloader-memory"
    store = FeatureStore(data["store"])
    batch = max(1, data["batch"] // 8)
    seen, mem = benchmark.pedantic(_epoch_memory, args=(store, data["n"], workers, batch),
                                   rounds=1, iterations=1)
    assert seen == data["n"]
    _MEMORY[workers] = mem
    extra = {}
    if 1 in _MEMORY and workers != 1:
        extra = {"pss_over_1_worker_mb": mem["pss_mb"] - _MEMORY[1]["pss_mb"],
                 "rss_over_1_worker_mb": mem["rss_mb"] - _MEMORY[1]["rss_mb"]}
    record(benchmark, variant=f"{workers}-workers", shapes={"images": data["n"], "batch": batch},
           samples=data["n"], workers=workers, store_mb=os.path.getsize(data["store"]) / 2**20,
           **mem, **extra)
