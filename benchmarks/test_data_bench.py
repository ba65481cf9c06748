"""The pretraining data path at the real corpus's scale (issue 23), the old path beside the new.

Records of LXMERT's shape (benchmarks/corpus_shape.py: 51 sentences per image, words of the BERT
vocab, soft labels) at ``LXMERT_DATA_BENCH_IMAGES`` images (default 180,000: 9.18M sentences;
40 under --benchmark-disable, as CI runs it; ``LXMERT_DATA_BENCH_DIR``: records and store already
written there by ``python -m benchmarks.corpus_shape DIR``), on this machine:

- prepare: records -> prepared corpus, seconds (target <= 180 at 9.18M);
- open: a prepared corpus opened as train.py opens it (PretrainDataset over the feature store),
  seconds (target <= 2) and the process's anonymous memory growth (target <= 150 MB: mapped
  pages aside), beside the old PretrainDataset built from the JSON (a Python object per sentence)
  at min(1M, all) sentences;
- worker memory: a DataLoader with 2 workers building batches of 32 for 1,000 batches; each
  worker's anonymous memory growth from batch 10 to the end (target <= 50 MB);
- batch building: batch 256 of 36 x 2048 float16 features (a store of 2,048 images, page cache)
  on one core, samples/s (target >= 8,000; old path 1,232) and bytes per sample sent to the
  device (targets <= 160 KB; <= 2 KB with the feature table on the device; old 592 KB);
- step: the CPU training step of the small model at batch 32 with each input path and with one
  batch kept resident (no input work at all): the loader is not what limits it.

Memory is read from /proc/PID/smaps_rollup (Anonymous: the process's own memory, not the page
cache it maps).
"""
import gc
import glob
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from benchmarks.common import benchmarks_disabled, record
from benchmarks.corpus_shape import write_corpus, write_features

FULL_IMAGES = 180_000
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _images(quick: bool) -> int:
    return 40 if quick else int(os.environ.get("LXMERT_DATA_BENCH_IMAGES", FULL_IMAGES))


def _rollup(pid: int, field: str) -> float:
    with open(f"/proc/{pid or os.getpid()}/smaps_rollup", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} line in /proc/{pid}/smaps_rollup")


def anon_mb(pid: int = None) -> float:
    """Anonymous memory of a process (smaps_rollup), MB: its own, not the page cache it maps."""
    return _rollup(pid, "Anonymous")


def pss_mb(pid: int = None) -> float:
    """Proportional set size (smaps_rollup), MB: shared pages divided among their users."""
    return _rollup(pid, "Pss")


def _tokenizer():
    from lxmert_fast.data.tokenization import load_tokenizer, resolve_vocab

    return load_tokenizer(resolve_vocab(None))


@pytest.fixture(scope="module")
def corpus(request, tmp_path_factory):
    """Record files, a feature store of every image (dim 16) and the prepared directory path."""
    quick = benchmarks_disabled(request.config)
    n = _images(quick)
    root = str(tmp_path_factory.mktemp("corpus"))
    given = os.environ.get("LXMERT_DATA_BENCH_DIR")
    if given and not quick:
        paths = sorted(glob.glob(os.path.join(given, "pretrain_*.json")))
        store = os.path.join(given, "features.store")
        from lxmert_fast.features import FeatureStore

        n = len(FeatureStore(store))
    else:
        paths = write_corpus(root, n)
        store = write_features(os.path.join(root, "features.store"), n, dim=16)
    return {"quick": quick, "images": n, "records": paths, "store": store,
            "prepared": os.path.join(root, "prepared"), "root": root}


def test_prepare(benchmark, corpus):
    from lxmert_fast.data.prepare import prepare_corpus

    benchmark.group = "data-prepare"
    tok = _tokenizer()
    out = benchmark.pedantic(prepare_corpus, args=(corpus["records"], corpus["prepared"], tok,
                                                   20), kwargs={"show": False},
                             rounds=1, iterations=1)
    n = len(out)
    assert n == corpus["images"] * 51
    info = record(benchmark, variant="prepare", shapes={"sentences": n,
                                                        "images": corpus["images"]})
    seconds = benchmark.stats.stats.median if benchmark.stats else None
    if seconds is not None:
        info["seconds"] = seconds
        info["disk_mb"] = sum(os.path.getsize(p) for p in glob.glob(
            os.path.join(corpus["prepared"], "*"))) / 2**20
        if corpus["images"] >= FULL_IMAGES:
            assert seconds <= 180, seconds


def _open(prepared, store):
    from lxmert_fast.data.pretrain import PretrainDataset
    from lxmert_fast.features import FeatureStore

    return PretrainDataset(prepared, FeatureStore(store), _tokenizer())


def test_open(benchmark, corpus):
    from lxmert_fast.data.prepared import open_prepared

    benchmark.group = "data-open"
    if not os.path.exists(corpus["prepared"]):
        pytest.skip("test_prepare did not run")
    gc.collect()
    before = anon_mb()
    started = time.perf_counter()
    ds = _open(corpus["prepared"], corpus["store"])
    seconds = time.perf_counter() - started
    grown = anon_mb() - before
    benchmark.pedantic(open_prepared, args=(corpus["prepared"],), rounds=3, iterations=1)
    record(benchmark, variant="prepared", shapes={"sentences": len(ds)},
           dataset_open_seconds=seconds, anon_growth_mb=grown)
    if not corpus["quick"]:
        assert seconds <= 2.0 and grown <= 150, (seconds, grown)


_OLD = """
import sys, time, os, json
sys.path.insert(0, {root!r})
from benchmarks.baseline_pretrain import PretrainDataset
from benchmarks.test_data_bench import anon_mb, _tokenizer
from lxmert_fast.features import FeatureStore
tok = _tokenizer(); store = FeatureStore({store!r})
before = anon_mb(); t = time.perf_counter()
ds = PretrainDataset({records!r}, store, tok)
print(json.dumps({{"seconds": time.perf_counter() - t, "anon_growth_mb": anon_mb() - before,
                  "sentences": len(ds)}}))
"""


def test_open_old_path(benchmark, corpus):
    """The old PretrainDataset from JSON (a fresh process), on the first files up to ~1M."""
    import json

    benchmark.group = "data-open"
    paths, total = [], 0
    for p in corpus["records"]:
        if total >= 1_000_000:
            break
        paths.append(p)
        total += corpus["images"] * 51 // len(corpus["records"])
    script = _OLD.format(root=ROOT, store=corpus["store"], records=paths)
    out = benchmark.pedantic(lambda: subprocess.run([sys.executable, "-c", script], check=True,
                                                    capture_output=True, text=True, cwd=ROOT),
                             rounds=1, iterations=1)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    record(benchmark, variant="old-json-objects", shapes={"sentences": figures["sentences"]},
           dataset_open_seconds=figures["seconds"], anon_growth_mb=figures["anon_growth_mb"])


class _Packed(torch.utils.data.Dataset):
    def __init__(self, ds, batch):
        self.ds, self.batch = ds, batch

    def __len__(self):
        return len(self.ds) // self.batch

    def __getitem__(self, i):
        rng = np.random.default_rng(i)
        return self.ds.make_packed(rng.integers(0, len(self.ds), self.batch))


def test_worker_memory(benchmark, corpus):
    benchmark.group = "data-worker-memory"
    if not os.path.exists(corpus["prepared"]):
        pytest.skip("test_prepare did not run")
    ds = _open(corpus["prepared"], corpus["store"])
    batches = 60 if corpus["quick"] else 1000

    def run():
        loader = torch.utils.data.DataLoader(_Packed(ds, 32), batch_size=None, num_workers=2,
                                             sampler=range(batches), persistent_workers=True)
        it = iter(loader)
        for _ in range(10):
            next(it)
        pids = [w.pid for w in it._workers]
        early = [anon_mb(p) for p in pids]
        for _ in it:
            pass
        late = [anon_mb(p) for p in pids]
        summed_pss = pss_mb(os.getpid()) + sum(pss_mb(p) for p in pids)
        del it, loader
        return max(b - a for a, b in zip(early, late)), late, summed_pss

    growth, late, summed_pss = benchmark.pedantic(run, rounds=1, iterations=1)
    record(benchmark, variant="2-workers", shapes={"batches": batches, "batch": 32},
           worker_anon_growth_mb=growth, worker_anon_mb=late,
           rank_and_workers_pss_mb=summed_pss)
    if not corpus["quick"]:
        assert growth <= 50, growth


@pytest.fixture(scope="module")
def feats_corpus(request, tmp_path_factory):
    """2,048 images (40 when quick) with 36 x 2048 float16 features and their records."""
    quick = benchmarks_disabled(request.config)
    n = 40 if quick else 2048
    root = str(tmp_path_factory.mktemp("feats_corpus"))
    paths = write_corpus(root, n, files=1)
    store = write_features(os.path.join(root, "features.store"), n, dim=2048)
    return {"quick": quick, "records": paths, "store": store, "root": root,
            "batch": 16 if quick else 256}


def _bytes(batch) -> int:
    total = 0
    for v in (batch.values() if isinstance(batch, dict) else batch):
        if isinstance(v, torch.Tensor):
            total += v.numel() * v.element_size()
        elif isinstance(v, (dict, tuple, list)):
            total += _bytes(v)
    return total


@pytest.mark.parametrize("path", ["old", "host", "device-table"])
def test_batch_building(benchmark, feats_corpus, path):
    from lxmert_fast.data.pretrain import PretrainDataset
    from lxmert_fast.features import FeatureStore

    benchmark.group = "data-batch-building"
    B, tok, store = feats_corpus["batch"], _tokenizer(), FeatureStore(feats_corpus["store"])
    if path == "old":
        from benchmarks.baseline_pretrain import PretrainDataset as Old

        ds = Old(feats_corpus["records"], store, tok)
        build = ds.make_batch
    else:
        ds = PretrainDataset(feats_corpus["records"], store, tok,
                             cache_dir=feats_corpus["root"])
        build = (lambda i: ds.make_packed(i, features_on_device=path == "device-table"))
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, len(ds), B).tolist() for _ in range(8)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # one core, as a DataLoader worker (gather threads too)
    try:
        counter = iter(range(10 ** 9))
        out = benchmark(lambda: build(batches[next(counter) % len(batches)]))
    finally:
        torch.set_num_threads(threads)
    per_sample = _bytes(out) / B
    record(benchmark, variant=path, baselines=() if path == "old" else ("old",),
           shapes={"batch": B, "boxes": 36, "dim": 2048}, samples=B,
           bytes_per_sample=per_sample)
    if path == "host":
        assert per_sample <= 160_000, per_sample
    if path == "device-table":
        assert per_sample <= 2_000, per_sample


@pytest.mark.parametrize("path", ["resident", "host", "device-table"])
def test_cpu_step_with_each_input_path(benchmark, feats_corpus, path):
    """The small model's training step at batch 32 on this CPU, its batch built in the timed
    call (host, device-table) or one batch kept resident (no input work: the upper bound)."""
    from lxmert_fast import LxmertConfig, LxmertForPreTraining
    from lxmert_fast.data.batch import unpack_visual
    from lxmert_fast.data.feature_table import load_feature_table
    from lxmert_fast.data.pretrain import PretrainDataset
    from lxmert_fast.features import FeatureStore
    from lxmert_fast.training.step import prepare_pretrain

    benchmark.group = "data-cpu-step"
    B = 4 if feats_corpus["quick"] else 32
    ds = PretrainDataset(feats_corpus["records"], FeatureStore(feats_corpus["store"]),
                         _tokenizer(), cache_dir=feats_corpus["root"])
    table = load_feature_table(ds.features, ds.max_boxes, "cpu") \
        if path == "device-table" else None
    torch.manual_seed(0)
    model = LxmertForPreTraining(LxmertConfig(
        vocab_size=30522, hidden_size=128, num_attention_heads=4, intermediate_size=512,
        l_layers=2, x_layers=2, r_layers=2, num_qa_labels=len(ds.answer_table),
        kernel_impl="torch")).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)

    def inputs():
        batch = prepare_pretrain(ds.make_packed(rng.integers(0, len(ds), B),
                                                features_on_device=table is not None))
        kwargs = dict(batch["model"])
        kwargs.update(unpack_visual(batch["visual"], torch.float32, table=table))
        return kwargs

    resident = inputs()

    def step():
        out = model(**(resident if path == "resident" else inputs()))
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    benchmark.pedantic(step, rounds=2 if feats_corpus["quick"] else 10, iterations=1)
    record(benchmark, variant=path, baselines=() if path == "resident" else ("resident",),
           shapes={"batch": B, "model": "small 2/2/2 hidden 128"}, samples=B)


_OLD_TASK = """
import sys, time, json
sys.path.insert(0, {root!r})
from benchmarks.test_data_bench import anon_mb, _tokenizer
from lxmert_fast.features import FeatureStore
from lxmert_fast.tasks.answers import AnswerLabels
from lxmert_fast.tasks.dataset import TaskDataset
from lxmert_fast.tasks.records import load_records
tok = _tokenizer(); store = FeatureStore({store!r})
before = anon_mb(); t = time.perf_counter()
records = load_records("vqa", [{split!r}]) if {old} else None
if not {old}:
    from lxmert_fast.tasks.prepared_records import ensure_task_records
    records = ensure_task_records("vqa", [{split!r}], tok, 20, cache_dir={cache!r})
ds = TaskDataset("vqa", records, store, tok, answers=AnswerLabels(["yes"]))
print(json.dumps({{"seconds": time.perf_counter() - t, "anon_growth_mb": anon_mb() - before,
                  "questions": len(ds)}}))
"""


@pytest.mark.parametrize("path", ["old", "prepared"])
def test_finetune_split_open(benchmark, corpus, path):
    """A VQA split of 600k questions (quick: 400) opened as finetune.py does, in a fresh
    process (the prepared one already in the cache): seconds and anonymous memory growth."""
    import json

    from benchmarks.corpus_shape import write_vqa_split

    benchmark.group = "data-finetune-open"
    split = os.path.join(corpus["root"], "vqa_train.json")
    if not os.path.exists(split):
        write_vqa_split(split, 400 if corpus["quick"] else 600_000, corpus["images"])
    cache = os.path.join(corpus["root"], "cache")
    if path == "prepared":             # build the cache entry first (untimed)
        from lxmert_fast.tasks.prepared_records import ensure_task_records
        ensure_task_records("vqa", [split], _tokenizer(), 20, cache_dir=cache)
    script = _OLD_TASK.format(root=ROOT, store=corpus["store"], split=split,
                              old=path == "old", cache=cache)
    out = benchmark.pedantic(lambda: subprocess.run([sys.executable, "-c", script], check=True,
                                                    capture_output=True, text=True, cwd=ROOT),
                             rounds=1, iterations=1)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    record(benchmark, variant=path, shapes={"questions": figures["questions"]},
           dataset_open_seconds=figures["seconds"], anon_growth_mb=figures["anon_growth_mb"])


class _Loader(torch.utils.data.Dataset):
    """Packed batches of random examples (DataLoader workers build them)."""

    def __init__(self, ds, batch, on_device):
        self.ds, self.batch, self.on_device = ds, batch, on_device

    def __len__(self):
        return 10 ** 6

    def __getitem__(self, i):
        from lxmert_fast.training.step import prepare_pretrain

        idx = np.random.default_rng(i).integers(0, len(self.ds), self.batch)
        return prepare_pretrain(self.ds.make_packed(idx, features_on_device=self.on_device))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the input paths "
                    "feeding the base model's step at batch 256")
@pytest.mark.parametrize("path", ["resident", "host", "device-table"])
def test_gpu_step_with_each_input_path(benchmark, feats_corpus, path):
    """Base model (9/5/5), batch 256, bf16 autocast, fused AdamW, the Triton kernels: samples/s
    with batches from 8 DataLoader workers (pinned, non-blocking) on the host path, with the
    feature table on the device, and with one batch kept resident (the input-free bound)."""
    from lxmert_fast import LxmertConfig, LxmertForPreTraining
    from lxmert_fast.data.batch import unpack_visual
    from lxmert_fast.data.feature_table import load_feature_table
    from lxmert_fast.data.pretrain import PretrainDataset
    from lxmert_fast.features import FeatureStore
    from lxmert_fast.training.engine import to_device

    benchmark.group = "data-gpu-step"
    B, device = 256, torch.device("cuda")
    ds = PretrainDataset(feats_corpus["records"], FeatureStore(feats_corpus["store"]),
                         _tokenizer(), cache_dir=feats_corpus["root"])
    table = load_feature_table(ds.features, 36, device) if path == "device-table" else None
    torch.manual_seed(0)
    model = LxmertForPreTraining(LxmertConfig(num_qa_labels=len(ds.answer_table))).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    loader = iter(torch.utils.data.DataLoader(
        _Loader(ds, B, table is not None), batch_size=None, num_workers=8, pin_memory=True,
        persistent_workers=True, prefetch_factor=4))
    resident = to_device(next(loader), device, torch.float32)

    def step():
        batch = resident if path == "resident" else to_device(next(loader), device,
                                                              torch.float32)
        kwargs = dict(batch["model"])
        with torch.autocast("cuda", dtype=torch.bfloat16):
            kwargs.update(unpack_visual(batch["visual"], torch.bfloat16, table=table))
            loss = model(**kwargs).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()

    for _ in range(3):
        step()
    benchmark.pedantic(step, rounds=20, iterations=1)
    record(benchmark, variant=path, baselines=() if path == "resident" else ("resident",),
           shapes={"batch": B, "model": "base 9/5/5"}, samples=B)
