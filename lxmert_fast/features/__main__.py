"""Command line of the feature store.

    python -m lxmert_fast.features convert IN.tsv [IN.tsv ...] OUT [--dtype float16|float32]
                                           [--threads N] [--no-fsync]
    python -m lxmert_fast.features info OUT

``convert`` shows a progress bar over the bytes of all input TSV files; ``--no-fsync`` leaves the
write-back to the kernel (``convert_tsv(durable=False)``: safe against a crash of the process,
not of the OS). ``info`` prints the number of images, dtype, feature dimension, boxes per image
(min/mean/max) and size on disk.
"""
import argparse
import os
import sys
import time

from tqdm import tqdm

from .errors import StoreFormatError, TsvFormatError
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
    ])


def _info(args) -> int:
    print(describe(FeatureStore(args.store)))
    return 0


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
    info = sub.add_parser("info", help="describe a feature store")
    info.add_argument("store")
    args = parser.parse_args(argv)
    try:
        return _convert(args) if args.command == "convert" else _info(args)
    except (TsvFormatError, StoreFormatError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
