"""``import_features``: what today's PyTorch extractors write, into a feature store (issue 16).

Formats (layouts in each reader's docstring): ``tsv`` (LXMERT's TSV, = ``convert_tsv``),
``butd-npz`` (MILVLG bottom-up-attention.pytorch, ``import_npz.py``), ``mmf-npy`` (MMF's vmb,
frcnn and VinVL scripts, ``import_mmf.py``) and ``uniter-npz`` (UNITER's BUTD npz,
``import_npz.py``). A directory source is walked (recursively, sorted) for the format's files.

Each file is read and checked in Python (numpy; several files at once on ``num_threads``
threads), normalised into one LXMERT record and appended to a temporary TSV beside the output
(``OUT.import.<pid>.tsv``, removed afterwards; it needs about 1.33x the float32 features of free
space). The C++ converter then writes the store from it exactly as ``convert`` does (temporary
file, fsync with ``durable``, rename), so an import produces the same store as converting the
equivalent TSV. Any bad file raises ``ImportFormatError`` naming the file and the key before a
store exists: nothing is left behind, an existing OUT is untouched. Temporary TSVs of killed
imports (their pid no longer runs) are removed first.
"""
import collections
import concurrent.futures
import glob
import os
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from .import_npz import read_butd_npz, read_uniter_npz
from .import_common import ImportFormatError, fail
from .import_mmf import ImageSizes, read_mmf_npy
from .reference import PathList, as_path_list
from .store import DTYPES, FeatureStore, convert_tsv
from .tsv import format_line

FORMATS = ("tsv", "butd-npz", "mmf-npy", "uniter-npz")
_SUFFIX = {"tsv": ".tsv", "butd-npz": ".npz", "mmf-npy": ".npy", "uniter-npz": ".npz"}
_NOT_FEATURES = ("_info.npy", "_full.npy")  # mmf-npy side files (info, frcnn --visualize)
_SIZE_SOURCES = {"file": "as stored in the file", "sizes file": "from --image_sizes FILE",
                 "extent": "from the boxes' bounding extent (approximate)",
                 "normalised": "1 x 1 (boxes stored normalised)"}


@dataclass
class ImportOptions:
    """How to read the sources; every field is checked against the format."""
    format: str = "tsv"
    max_boxes: Optional[int] = None
    id_base: int = 0
    image_sizes: object = None       # None, "extent", or a JSON file {img_id: [h, w]}
    img_id_from: str = "stem"        # "stem", "info" (butd-npz), or "re:PATTERN"

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {list(FORMATS)}, got {self.format!r}")
        if self.max_boxes is not None and (isinstance(self.max_boxes, bool) or not isinstance(
                self.max_boxes, int) or self.max_boxes < 1):
            raise ValueError(f"max_boxes must be None or a positive int, got {self.max_boxes!r}")
        if self.id_base not in (0, 1) or isinstance(self.id_base, bool):
            raise ValueError(f"id_base must be 0 or 1, got {self.id_base!r}")
        only = {"max_boxes": (self.max_boxes is not None, FORMATS[1:]),
                "id_base": (self.id_base != 0, ("butd-npz",)),
                "image_sizes": (self.image_sizes is not None, ("mmf-npy",)),
                "img_id_from": (self.img_id_from != "stem", FORMATS[1:])}
        for name, (given, formats) in only.items():
            if given and self.format not in formats:
                raise ValueError(f"{name}={getattr(self, name)!r} does not apply to format "
                                 f"{self.format!r} (only to {', '.join(formats)})")
        if not isinstance(self.img_id_from, str):
            raise ValueError(f"img_id_from must be a str, got {self.img_id_from!r}")
        if self.img_id_from == "info" and self.format != "butd-npz":
            raise ValueError(f"img_id_from='info' needs butd-npz (info['image_id']), not "
                             f"{self.format!r}")
        if self.img_id_from not in ("stem", "info") and not self.img_id_from.startswith("re:"):
            raise ValueError(f"img_id_from must be 'stem', 'info' or 're:PATTERN', got "
                             f"{self.img_id_from!r}")
        if self.img_id_from.startswith("re:"):
            try:
                re.compile(self.img_id_from[3:])
            except re.error as e:
                raise ValueError(f"img_id_from={self.img_id_from!r}: bad pattern ({e})") from None


@dataclass
class ImportReport:
    """What an import did; ``lines()`` is what the command line prints."""
    out_path: str
    format: str
    images: int = 0
    boxes: int = 0
    feature_dim: int = 0
    seconds: float = 0.0
    counts: Dict[str, int] = field(default_factory=collections.Counter)

    def lines(self) -> List[str]:
        rate = self.images / self.seconds if self.seconds > 0 else float("inf")
        c = self.counts
        out = [f"wrote {self.out_path}: {self.images} images ({self.format}) in "
               f"{self.seconds:.1f} s ({rate:.0f} images/s), {self.boxes} boxes, dim "
               f"{self.feature_dim}"]
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(c.items()) if k.startswith("kind "))
        if kinds:
            out.append(f"files: {kinds.replace('kind ', '')}")
        for what, loss in (("objects", "obj"), ("attrs", "attr")):
            if c[f"{what}_missing"]:
                out.append(f"{what}: missing in {c[what + '_missing']} images: stored as id -100 "
                           f"with confidence 0, the {loss} loss ignores those boxes")
        sizes = ", ".join(f"{v} {_SIZE_SOURCES[k[5:]]}" for k, v in sorted(c.items())
                          if k.startswith("size "))
        if sizes:
            out.append(f"image sizes: {sizes}")
        if c["padding_dropped"]:
            out.append(f"padding rows dropped: {c['padding_dropped']} (rows after num_boxes)")
        if c["boxes_dropped"]:
            out.append(f"--max_boxes: {c['truncated_images']} images kept their most confident "
                       f"boxes, {c['boxes_dropped']} boxes dropped")
        if c["over_36"]:
            out.append(f"{c['over_36']} images have more than 36 boxes: gather(max_boxes=36) "
                       "takes the first 36; import with --max_boxes 36 to keep the most "
                       "confident")
        return out


def find_sources(srcs: PathList, fmt: str) -> List[str]:
    """The format's files: each file source as given, each directory walked (sorted)."""
    files = []
    for src in as_path_list(srcs):
        if os.path.isdir(src):
            found = sorted(p for p in glob.glob(os.path.join(glob.escape(src), "**",
                                                              "*" + _SUFFIX[fmt]),
                                                recursive=True)
                           if os.path.isfile(p) and not p.endswith(_NOT_FEATURES))
            if not found:
                raise FileNotFoundError(f"no *{_SUFFIX[fmt]} files ({fmt}) under {src}")
            files += found
        elif os.path.isfile(src):
            if fmt == "mmf-npy" and src.endswith("_info.npy"):
                src = src[:-len("_info.npy")] + ".npy"
            files.append(src)
        else:
            raise FileNotFoundError(f"feature source not found: {src}")
    return files


def image_id(path: str, opts: ImportOptions) -> Optional[str]:
    """The img_id of one file (None: the reader takes it from the file, ``info``)."""
    stem = os.path.basename(path)[:-len(_SUFFIX[opts.format])]
    if opts.img_id_from == "stem":
        return stem
    if opts.img_id_from == "info":
        return None
    m = re.search(opts.img_id_from[3:], stem)
    if m is None:
        fail(path, f"file name {stem!r} does not match --img_id_from {opts.img_id_from!r}")
    return m.group(1) if m.groups() else m.group(0)


def _reader(opts: ImportOptions) -> Callable[[str], Tuple[Dict, Dict]]:
    sizes = opts.image_sizes
    if sizes is not None and sizes != "extent":
        sizes = ImageSizes(sizes)
    if opts.format == "butd-npz":
        return lambda p: read_butd_npz(p, image_id(p, opts), opts.id_base, opts.max_boxes)
    if opts.format == "mmf-npy":
        return lambda p: read_mmf_npy(p, image_id(p, opts), sizes, opts.max_boxes)
    return lambda p: read_uniter_npz(p, image_id(p, opts), opts.max_boxes)


def ordered_map(fn: Callable, items: List, threads: int) -> Iterator:
    """``map(fn, items)`` on ``threads`` threads, in order, at most 2 x threads ahead."""
    if threads <= 1:
        yield from map(fn, items)
        return
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        window = collections.deque()
        for item in items:
            window.append(pool.submit(fn, item))
            if len(window) >= 2 * threads:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


class _Checker:
    """Checks across images (one img_id once, one feature dimension) and sums the notes."""

    def __init__(self, report: ImportReport):
        self.report, self.seen, self.dim_from = report, {}, None

    def add(self, path: str, rec: Dict, notes: Dict):
        img_id, n = rec["img_id"], rec["num_boxes"]
        if not img_id or not img_id.isascii() or any(ch in img_id for ch in "\t\r\n"):
            fail(path, f"img_id {img_id!r} is empty or not printable ASCII without tabs")
        if img_id in self.seen:
            fail(path, f"img_id {img_id!r} again (first from {self.seen[img_id]})")
        self.seen[img_id] = path
        r = self.report
        dim = rec["features"].shape[1]
        if n and self.dim_from and dim != r.feature_dim:
            fail(path, f"features have dimension {dim}, {self.dim_from} had {r.feature_dim}")
        if n and not self.dim_from:
            r.feature_dim, self.dim_from = dim, path
        r.images, r.boxes = r.images + 1, r.boxes + n
        c = r.counts
        for key in ("objects_missing", "attrs_missing", "padding_dropped", "boxes_dropped"):
            c[key] += int(notes.get(key, 0))
        c["truncated_images"] += int(notes.get("boxes_dropped", 0) > 0)
        c["over_36"] += int(n > 36)
        kind = notes.get("variant", notes.get("mode"))
        if kind:
            c[f"kind {kind}"] += 1
        if notes.get("size_source"):
            c[f"size {notes['size_source']}"] += 1


def remove_stale_imports(out_path: str) -> int:
    """Unlink ``OUT.import.<pid>.tsv`` files whose pid no longer runs; returns the count."""
    removed = 0
    for p in glob.glob(glob.escape(out_path) + ".import.*.tsv"):
        pid = p[len(out_path) + len(".import."):-len(".tsv")]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            try:
                os.remove(p)
                removed += 1
            except OSError:
                pass
        except OSError:
            pass  # alive, another user's
    return removed


def _write_tsv(tmp: str, files: List[str], read, threads: int, report: ImportReport,
               progress) -> None:
    checker = _Checker(report)
    with open(tmp, "w", encoding="ascii", newline="") as f:
        for done, (path, (rec, notes)) in enumerate(
                zip(files, ordered_map(read, files, threads)), start=1):
            checker.add(path, rec, notes)
            f.write(format_line(rec))
            f.write("\n")
            if progress is not None:
                progress(done)


def import_features(srcs: PathList, out_path, format: str = "tsv", dtype: str = "float16",
                    num_threads: Optional[int] = None, progress=None, durable: bool = True,
                    max_boxes: Optional[int] = None, id_base: int = 0, image_sizes=None,
                    img_id_from: str = "stem") -> ImportReport:
    """Import extractor output ``srcs`` (files and/or directories) into the store ``out_path``.

    ``format``: one of ``FORMATS`` ("tsv" is ``convert_tsv``). ``max_boxes``: keep at most this
    many boxes per image, the most confident. ``id_base=1``: butd-npz files written before
    Sept 2020 (ids count the background as 0). ``image_sizes``: mmf-npy only, "extent" or a JSON
    file ``{img_id: [height, width]}`` (needed for extract_features_frcnn.py's files).
    ``img_id_from``: "stem" (the file name without extension), "info" (butd-npz's
    info['image_id']) or "re:PATTERN" (group 1, or the match, of a search in the stem).
    ``dtype`` / ``num_threads`` / ``durable`` as in ``convert_tsv``; ``progress(files_done)``.
    Bad input raises ImportFormatError (file and key) or OSError; no store is then written.
    """
    opts = ImportOptions(format, max_boxes, id_base, image_sizes, img_id_from)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    threads = num_threads or os.cpu_count() or 1
    out_path = os.fspath(out_path)
    files = find_sources(srcs, format)
    report = ImportReport(out_path, format)
    start = time.perf_counter()
    if format == "tsv":
        convert_tsv(files, out_path, dtype, threads, durable=durable)
        store = FeatureStore(out_path)
        report.images, report.boxes, report.feature_dim = len(store), store.num_boxes, store.dim
        if progress is not None:
            progress(len(files))
    else:
        read = _reader(opts)
        remove_stale_imports(out_path)
        tmp = f"{out_path}.import.{os.getpid()}.tsv"
        try:
            _write_tsv(tmp, files, read, threads, report, progress)
            convert_tsv([tmp], out_path, dtype, threads, durable=durable)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    report.seconds = time.perf_counter() - start
    return report


__all__ = ["FORMATS", "ImportFormatError", "ImportOptions", "ImportReport", "find_sources",
           "import_features"]
