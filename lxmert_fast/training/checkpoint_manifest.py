"""Durable checkpoint files and the manifest that lets a resume verify them (issue 15).

A checkpoint directory is complete when its `manifest.json` exists: rank 0 writes it (temporary
file, fsync, rename, directory fsync, as the feature store writes its files) only after every
rank has fsynced the files it wrote and reported their size and CRC-32. The manifest lists every
file of every rank (relative name, size in bytes, zlib CRC-32 read back from disk in 4 MiB
blocks, the writing rank) plus the run's topology, so a later run can check each file before
DeepSpeed unpickles it, and knows the world size the ZeRO shards were cut for.

zlib.crc32 was chosen over xxhash (not a dependency here); its cost per GB is what the README
quotes (`crc32_file` streams, the page cache usually still holds the files just written).
"""
import json
import os
import re
import zlib

MANIFEST = "manifest.json"
FORMAT = 1
BLOCK = 4 << 20
# DeepSpeed names a rank's ZeRO files zero_pp_rank_<dp rank>_mp_rank_..; ours are rng_rank<rank>
_OWNER_RES = (re.compile(r"zero_pp_rank_(\d+)_"), re.compile(r"rng_rank(\d+)\."))


class ManifestError(RuntimeError):
    """A manifest that cannot be read or does not describe its directory."""


def crc32_file(path: str) -> int:
    """CRC-32 of a file, streamed in BLOCK-sized reads."""
    crc, buf = 0, bytearray(BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                return crc
            crc = zlib.crc32(view[:n], crc)


def fsync_path(path: str) -> None:
    """fsync a file or a directory (its entries: names created, renamed or removed in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def owner(name: str) -> int:
    """The rank that wrote `name` (DeepSpeed's ZeRO shard naming, our RNG files; else rank 0)."""
    for pattern in _OWNER_RES:
        m = pattern.search(os.path.basename(name))
        if m:
            return int(m.group(1))
    return 0


def list_files(tag_dir: str) -> list:
    """Relative paths of every regular file under `tag_dir` except the manifest, sorted."""
    out = []
    for root, dirs, files in os.walk(tag_dir):
        dirs.sort()
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), tag_dir)
            if rel != MANIFEST and not name.endswith(".tmp"):
                out.append(rel)
    return sorted(out)


def sync_own_files(tag_dir: str, rank: int) -> list:
    """fsync the files of `tag_dir` that `rank` wrote and describe them -> manifest entries."""
    entries = []
    for rel in list_files(tag_dir):
        if owner(rel) != rank:
            continue
        path = os.path.join(tag_dir, rel)
        fsync_path(path)
        entries.append({"name": rel, "size": os.path.getsize(path), "crc32": crc32_file(path),
                        "rank": rank})
    fsync_path(tag_dir)
    return entries


def write_manifest(tag_dir: str, entries: list, meta: dict) -> str:
    """Write manifest.json atomically and durably (temp file, fsync, rename, dir fsync)."""
    path = os.path.join(tag_dir, MANIFEST)
    body = dict(meta, format=FORMAT, files=sorted(entries, key=lambda e: e["name"]))
    with open(path + ".tmp", "w") as f:
        json.dump(body, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)
    fsync_path(tag_dir)
    return path


def read_manifest(tag_dir: str):
    """The manifest of `tag_dir` as a dict, None if it has none; ManifestError if unreadable."""
    path = os.path.join(tag_dir, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            body = json.load(f)
        files = body["files"]
        if body.get("format") != FORMAT or not all({"name", "size", "crc32"} <= set(e)
                                                    for e in files):
            raise ValueError(f"format {body.get('format')!r} or file entries not as expected")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ManifestError(f"{path} is unreadable or corrupt: {e}") from e
    return body


def check_file(tag_dir: str, entry: dict, checksum: bool = True):
    """What is wrong with one manifest entry's file (a sentence naming it), or None."""
    path = os.path.join(tag_dir, entry["name"])
    who = f"{path} (written by rank {entry.get('rank', '?')})"
    if not os.path.isfile(path):
        return f"{who} is missing"
    size = os.path.getsize(path)
    if size != entry["size"]:
        kind = "truncated" if size < entry["size"] else "grown"
        return f"{who} is {size} bytes, the manifest says {entry['size']} ({kind})"
    if checksum:
        crc = crc32_file(path)
        if crc != entry["crc32"]:
            return (f"{who} has CRC-32 {crc:#010x}, the manifest says {entry['crc32']:#010x} "
                    f"(corrupt)")
    return None


def check_files(tag_dir: str, entries: list, rank: int, world_size: int,
                checksum: bool = True) -> list:
    """Problems of the entries this rank checks (writer rank modulo the current world size)."""
    mine = [e for e in entries if e.get("rank", 0) % world_size == rank]
    return [p for p in (check_file(tag_dir, e, checksum) for e in mine) if p]


def quick_verify(tag_dir: str) -> bool:
    """Manifest readable and every file present with its size (no checksum): for rotation."""
    try:
        body = read_manifest(tag_dir)
    except ManifestError:
        return False
    return body is not None and not check_files(tag_dir, body["files"], 0, 1, checksum=False)
