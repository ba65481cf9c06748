"""Command line of the feature store.

    python -m lxmert_fast.features convert IN.tsv [IN.tsv ...] OUT [--dtype float16|float32]
                                           [--threads N] [--no-fsync]
    python -m lxmert_fast.features import [--format FORMAT] SRC [SRC ...] OUT
                                          [--max_boxes N] [--id_base 1] [--image_sizes FILE|extent]
                                          [--img_id_from stem|info|re:PATTERN] [--dtype ...]
                                          [--threads N] [--no-fsync]
    python -m lxmert_fast.features info OUT

``import`` reads what a feature extractor wrote (FORMAT: tsv, butd-npz, mmf-npy, uniter-npz;
layouts in importers.py) from files or directories and writes the same store as ``convert``;
it prints what each format lacked (labels stored as missing, image sizes taken from the boxes).
``convert`` shows a progress bar over the bytes of all input TSV files; ``--no-fsync`` leaves the
write-back to the kernel (``convert_tsv(durable=False)``: safe against a crash of the process,
not of the OS). ``info`` prints the number of images, dtype, feature dimension, boxes per image
(min/mean/max), size on disk, and the boxes whose object / attribute labels are missing
(imported from a format without them: id -100, ignored by the losses).
"""
import argparse
import os
import sys
import time

import numpy as np
from tqdm import tqdm

from .import_common import MISSING_ID
from .importers import FORMATS, ImportOptions, find_sources, import_features
from .store import DTYPES, FeatureStore, convert_tsv


def _convert(args) -> int:
    total = 0
    for p in args.inputs:
        if not os.path.isfile(p):
            print(f"error: feature TSV not found: {p}", file=sys.stderr)
            return 2
        total += os.path.getsize(p)
    start = time.perf_counter()
    with tqdm(total=total, unit="B", unit_scale=True, desc="convert", disable=args.quiet) as bar:
        convert_tsv(args.inputs, args.output, dtype=args.dtype, num_threads=args.threads,
                    progress=lambda done: bar.update(done - bar.n), durable=not args.no_fsync)
    secs = time.perf_counter() - start
    store = FeatureStore(args.output)
    print(f"wrote {args.output}: {len(store)} images in {secs:.1f} s "
          f"({len(store) / secs:.0f} images/s, {total / secs / 1e6:.0f} MB/s of TSV)")
    return 0


def _import(args) -> int:
    ImportOptions(args.format, args.max_boxes, args.id_base, args.image_sizes,
                  args.img_id_from)  # option errors before the files are listed
    files = find_sources(args.inputs, args.format)
    with tqdm(total=len(files), unit="file", desc=f"import {args.format}",
              disable=args.quiet) as bar:
        report = import_features(files, args.output, format=args.format, dtype=args.dtype,
                                 num_threads=args.threads, durable=not args.no_fsync,
                                 progress=lambda done: bar.update(done - bar.n),
                                 max_boxes=args.max_boxes, id_base=args.id_base,
                                 image_sizes=args.image_sizes, img_id_from=args.img_id_from)
    print("\n".join(report.lines()))
    return 0


def missing_labels(store: FeatureStore) -> str:
    """Boxes whose object / attribute ids are MISSING_ID (imported from a format without them)."""
    counts = []
    for key in ("objects_id", "attrs_id"):
        ids = store._arrays[key]
        n = int(np.count_nonzero(ids == MISSING_ID))
        counts.append(f"{key} {n}" + (" (ignored by the losses)" if n else ""))
    return "missing labels  " + ", ".join(counts) + f" of {store.num_boxes} boxes"


def describe(store: FeatureStore) -> str:
    """The ``info`` report of one store."""
    per = store.boxes_per_image
    size = os.path.getsize(store.path)
    return "\n".join([
        f"path            {store.path}",
        f"images          {len(store)}",
        f"dtype           {store.dtype}",
        f"feature dim     {store.dim}",
        f"boxes           {store.num_boxes} total; per image min {per.min()} "
        f"mean {per.mean():.2f} max {per.max()}",
        f"size on disk    {size} bytes ({size / 2 ** 20:.1f} MiB)",
        missing_labels(store),
    ])


def _info(args) -> int:
    print(describe(FeatureStore(args.store)))
    return 0


def _add_import(sub) -> None:
    imp = sub.add_parser("import", help="import a feature extractor's files into one store")
    imp.add_argument("inputs", nargs="+", help="files or directories (walked) of the format")
    imp.add_argument("output", help="the store to write")
    imp.add_argument("--format", choices=FORMATS, default="tsv")
    imp.add_argument("--max_boxes", type=int, default=None,
                     help="keep at most N boxes per image, the most confident")
    imp.add_argument("--id_base", type=int, choices=(0, 1), default=0,
                     help="butd-npz: 1 for files written before Sept 2020 (background = 0)")
    imp.add_argument("--image_sizes", default=None, metavar="FILE|extent",
                     help="mmf-npy: JSON {img_id: [height, width]}, or 'extent' (the boxes' "
                          "bounding extent) where the file's size is not the image's")
    imp.add_argument("--img_id_from", default="stem", metavar="stem|info|re:PATTERN",
                     help="img_id: the file name stem (default), butd-npz info['image_id'], or "
                          "group 1 of a regex searched in the stem")
    imp.add_argument("--dtype", choices=sorted(DTYPES), default="float16")
    imp.add_argument("--threads", type=int, default=None, help="threads (all cores)")
    imp.add_argument("--no-fsync", action="store_true", help="as for convert")
    imp.add_argument("--quiet", action="store_true", help="no progress bar")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lxmert_fast.features",
                                     description="LXMERT RoI feature store tools")
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="convert TSV file(s) into one feature store")
    conv.add_argument("inputs", nargs="+", help="LXMERT feature TSV files")
    conv.add_argument("output", help="the store to write")
    conv.add_argument("--dtype", choices=sorted(DTYPES), default="float16")
    conv.add_argument("--threads", type=int, default=None, help="decoding threads (all cores)")
    conv.add_argument("--no-fsync", action="store_true",
                      help="do not flush the store to disk before publishing it (faster; an OS "
                           "crash soon after may lose or corrupt it, a process crash cannot)")
    conv.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_import(sub)
    info = sub.add_parser("info", help="describe a feature store")
    info.add_argument("store")
    args = parser.parse_args(argv)
    commands = {"convert": _convert, "import": _import, "info": _info}
    try:
        return commands[args.command](args)
    except (ValueError, OSError) as e:  # TsvFormatError, StoreFormatError, ImportFormatError
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
