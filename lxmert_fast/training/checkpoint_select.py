"""Which checkpoint a resume (or an export) loads: `latest` verified, else a fallback (issue 15).

The candidates are the checkpoint that `latest` names, then the older step directories, newest
first. A directory newer than `latest` is a save that never completed (its manifest is written
only after every rank's files are on disk, `latest` right after) and is skipped. When `latest` is
missing, empty, garbage or names a missing directory, every directory is a candidate, newest
first. Each candidate is checked against its manifest (checkpoint_manifest.py): every rank reads
its share of the files (writer rank modulo the current world size), the problems are gathered
on every rank, and the first candidate without problems is chosen by all ranks alike. A
checkpoint saved before manifests existed loads only when `latest` names it, unverified.
`choose(..., collective=False)` is the one-process form (an export, which may run on rank 0 of a
live process group while the other ranks wait elsewhere): this process checks every file and
enters no collective.
"""
import os
import re
from dataclasses import dataclass, field
from typing import List, Optional

import torch

from . import checkpoint_manifest as mf
from . import dist_watch, env

TAG_RE = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    """No checkpoint can be loaded (each candidate and what is wrong with it is listed)."""


def step_of(tag: str) -> int:
    return int(TAG_RE.match(tag).group(1))


def gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (a plain list without a group)."""
    if not torch.distributed.is_initialized():
        return [obj]
    if dist_watch.skip_collective():   # test hook: this rank enters another collective instead
        torch.distributed.barrier()
        return [obj] * env.world_size()
    out = [None] * env.world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


@dataclass
class Choice:
    tag: str
    manifest: Optional[dict]          # None: a checkpoint from before manifests (unverified)
    notes: List[str] = field(default_factory=list)


def read_latest(ckpt_dir: str):
    """-> (tag or None, problem or None): what `latest` names and why it cannot be used."""
    path = os.path.join(ckpt_dir, "latest")
    if not os.path.exists(path):
        return None, f"{path} does not exist"
    try:
        with open(path, "rb") as f:
            raw = f.read(256)
    except OSError as e:
        return None, f"{path} is unreadable ({e.__class__.__name__}: {e})"
    tag = raw.decode("ascii", errors="replace").strip()
    if not tag:
        return None, f"{path} is empty"
    if not TAG_RE.match(tag):
        return None, f"{path} holds {raw[:40]!r}, not a checkpoint tag like step_00000100"
    if not os.path.isdir(os.path.join(ckpt_dir, tag)):
        return None, f"{path} names {tag}, which is not a directory in {ckpt_dir}"
    return tag, None


def step_dirs(ckpt_dir: str) -> list:
    """step_* directories, oldest first."""
    if not os.path.isdir(ckpt_dir):
        return []
    found = [t for t in os.listdir(ckpt_dir)
             if TAG_RE.match(t) and os.path.isdir(os.path.join(ckpt_dir, t))]
    return sorted(found, key=step_of)


def _problems_here(tag_dir: str, named_by_latest: bool, collective: bool):
    """(manifest or None, this rank's problems) for one candidate: its share of the files, or
    every file when not `collective`."""
    try:
        body = mf.read_manifest(tag_dir)
    except mf.ManifestError as e:
        return None, [str(e)]
    if body is None:
        if named_by_latest:
            return None, []
        return None, [f"{tag_dir} has no {mf.MANIFEST} (a save that did not complete, or one "
                      f"written before manifests existed)"]
    rank, world = (env.rank(), env.world_size()) if collective else (0, 1)
    return body, mf.check_files(tag_dir, body["files"], rank, world)


def verify(ckpt_dir: str, tag: str, named_by_latest: bool, collective: bool = True):
    """(manifest, problems of every rank) of checkpoint `tag`, agreed across ranks; with
    `collective` False this process checks every file alone (no collective)."""
    tag_dir = os.path.join(ckpt_dir, tag)
    if not os.path.isdir(tag_dir):
        local = (None, [f"{tag_dir} does not exist"])
    else:
        local = _problems_here(tag_dir, named_by_latest, collective)
    gathered = gather_objects(local[1]) if collective else [local[1]]
    return local[0], [p for rank_problems in gathered for p in rank_problems]


def has_any(ckpt_dir: str) -> bool:
    """True when the directory holds a `latest` file or a step_* directory."""
    return os.path.exists(os.path.join(ckpt_dir, "latest")) or bool(step_dirs(ckpt_dir))


def candidates(ckpt_dir: str, requested: Optional[str]):
    """-> (tags to try in order, latest tag or None, notes)."""
    if requested:
        return [requested], None, []
    latest, problem = read_latest(ckpt_dir)
    dirs = step_dirs(ckpt_dir)
    if latest is None:
        exists = os.path.exists(os.path.join(ckpt_dir, "latest"))
        note = [f"{problem}; looking for the newest checkpoint that verifies"] if exists or dirs \
            else []
        return dirs[::-1], None, note
    newer = [t for t in dirs if step_of(t) > step_of(latest)]
    notes = [f"{ckpt_dir}/{t} is newer than 'latest' ({latest}): a save that did not complete; "
             f"not used" for t in newer]
    return [latest] + [t for t in dirs[::-1] if step_of(t) < step_of(latest)], latest, notes


def choose(ckpt_dir: str, requested: Optional[str] = None, collective: bool = True) -> Choice:
    """The checkpoint to load, agreed by all ranks (a collective: every rank calls it, or with
    `collective` False one process alone). Choice.tag is None when the run never completed a
    checkpoint (no `latest` and no manifest): training starts at step 0."""
    tags, latest, notes = candidates(ckpt_dir, requested)
    if not requested and not os.path.exists(os.path.join(ckpt_dir, "latest")) and not any(
            os.path.exists(os.path.join(ckpt_dir, t, mf.MANIFEST)) for t in tags):
        if tags:
            notes = [f"{ckpt_dir} holds only incomplete saves ({', '.join(tags)}), no 'latest'"]
        return Choice(None, None, notes)
    failed = []
    for tag in tags:
        manifest, problems = verify(ckpt_dir, tag, named_by_latest=tag in (latest, requested),
                                    collective=collective)
        if not problems:
            if failed:
                notes.append(f"falling back to {tag}, the newest checkpoint that verifies")
            if manifest is None:
                notes.append(f"checkpoint {tag} has no {mf.MANIFEST} (saved before manifests "
                             f"existed): loading it unverified")
            return Choice(tag, manifest, notes)
        failed.append(f"checkpoint {tag} failed verification: " + "; ".join(problems))
        notes.append(failed[-1])
    found = "\n  ".join(notes) or f"no step_* directories in {ckpt_dir}"
    raise CheckpointError(f"no checkpoint in {ckpt_dir} verifies; found:\n  {found}")
