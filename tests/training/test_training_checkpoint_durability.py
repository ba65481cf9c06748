"""Checkpoint durability (issue 15) on a real single-process CPU DeepSpeed engine with a toy
model: the manifest and fsyncs before `latest` moves, verified resume falling back past a
truncated / garbage / deleted file with a bit-identical continuation, a broken `latest`, a save
that fails part-way, a pre-manifest checkpoint, rotation counting only verified checkpoints,
and export verifying what it exports, a save killed mid-way skipped. Launched multi-rank cases:
test_train_multinode.py."""
import os
import shutil
import zlib

import numpy as np
import pytest
import torch

from lxmert_fast.training import checkpoint_manifest as mf
from lxmert_fast.training import env
from lxmert_fast.training.checkpoint import (CheckpointError, Checkpointer, CheckpointSaveError,
                                             tag_for)
from tiny_engine import tiny_engine, tiny_step

STEPS = 4          # checkpoints at steps 1..4; the reference continues to step 7



@pytest.fixture(scope="module")
def run(process_group, tmp_path_factory):
    """A run dir with checkpoints 1..4 and the losses of steps 1..7 of the uninterrupted run."""
    out = str(tmp_path_factory.mktemp("run"))
    engine, ckpt = tiny_engine(), Checkpointer(out, keep_last=10)
    env.seed_everything(0, 0)
    losses = {}
    for step in range(1, 8):
        losses[step] = tiny_step(engine)
        if step <= STEPS:
            ckpt.save(engine, step, {"note": step})
    return out, losses


def _copy(run, tmp_path):
    dst = str(tmp_path / "run")
    shutil.copytree(run[0], dst)
    return dst, Checkpointer(dst, keep_last=10)


def _resume(ckpt, capsys):
    engine = tiny_engine()
    env.seed_everything(123, 0)        # a fresh process: the checkpoint's RNG must replace this
    state = ckpt.load(engine)
    return engine, state, capsys.readouterr().out


def test_manifest_lists_every_file_and_everything_is_fsynced_before_latest(process_group,
                                                                          tmp_path, monkeypatch):
    events = []
    monkeypatch.setattr(mf, "fsync_path", lambda p: events.append(("fsync", p)))
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", b)),
                                                     real_replace(a, b)))
    engine, ckpt = tiny_engine(), Checkpointer(str(tmp_path))
    tiny_step(engine)
    ckpt.save(engine, 1, {})
    tag_dir = os.path.join(ckpt.dir, tag_for(1))
    body = mf.read_manifest(tag_dir)
    names = sorted(e["name"] for e in body["files"])
    assert names == sorted(n for n in os.listdir(tag_dir) if n != mf.MANIFEST)
    assert {"mp_rank_00_model_states.pt", "rng_rank00000.pt"} <= set(names)
    assert body["world_size"] == 1 and body["step"] == 1
    for e in body["files"]:
        with open(os.path.join(tag_dir, e["name"]), "rb") as f:
            data = f.read()
        assert (e["size"], e["crc32"], e["rank"]) == (len(data), zlib.crc32(data), 0)
    latest_at = events.index(("replace", os.path.join(ckpt.dir, "latest")))
    manifest_at = events.index(("replace", os.path.join(tag_dir, mf.MANIFEST)))
    synced = [p for kind, p in events[:manifest_at] if kind == "fsync"]
    assert {os.path.join(tag_dir, n) for n in names} | {tag_dir} <= set(synced)
    assert manifest_at < latest_at and ("fsync", ckpt.dir) in events[latest_at:]


def test_crc32_file_streams_across_block_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(mf, "BLOCK", 7)
    data = os.urandom(7 * 5 + 3)
    (tmp_path / "f").write_bytes(data)
    assert mf.crc32_file(str(tmp_path / "f")) == zlib.crc32(data)


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _garbage(path):
    size = os.path.getsize(path)
    with open(path, "wb") as f:
        f.write(np.random.default_rng(0).bytes(size))     # same size: only the CRC tells


@pytest.mark.parametrize("name,damage,what", [
    ("mp_rank_00_model_states.pt", _truncate, "truncated"),
    ("mp_rank_00_model_states.pt", _garbage, "corrupt"),
    ("rng_rank00000.pt", os.remove, "is missing"),
])
def test_damaged_latest_falls_back_and_continues_bit_identically(run, tmp_path, capsys, name,
                                                                  damage, what):
    out, ckpt = _copy(run, tmp_path)
    bad = os.path.join(ckpt.dir, tag_for(STEPS), name)
    damage(bad)
    engine, state, said = _resume(ckpt, capsys)
    assert state["step"] == STEPS - 1 and state["note"] == STEPS - 1
    assert f"checkpoint {tag_for(STEPS)} failed verification: {bad}" in said and what in said
    assert f"falling back to {tag_for(STEPS - 1)}" in said
    assert ckpt.latest_tag() == tag_for(STEPS - 1)     # `latest` no longer names the bad one
    assert [tiny_step(engine) for _ in range(STEPS, 8)] == [run[1][s] for s in range(STEPS, 8)]


@pytest.mark.parametrize("content,what", [(b"", "is empty"),
                                          (b"\x00\xffgarbage", "not a checkpoint tag"),
                                          (b"step_00000099", "not a directory"), (None, "")])
def test_broken_latest_falls_back_to_the_newest_verified(run, tmp_path, capsys, content, what):
    out, ckpt = _copy(run, tmp_path)
    latest = os.path.join(ckpt.dir, "latest")
    if content is None:
        os.remove(latest)
    else:
        with open(latest, "wb") as f:
            f.write(content)
    engine, state, said = _resume(ckpt, capsys)
    assert state["step"] == STEPS
    assert f"--resume: {latest} " in said and (what or "does not exist") in said
    assert "looking for the newest checkpoint that verifies" in said
    assert [tiny_step(engine) for _ in range(STEPS, 7)] == [run[1][s] for s in range(STEPS + 1, 8)]


def test_nothing_verifies_lists_every_checkpoint(run, tmp_path, capsys):
    out, ckpt = _copy(run, tmp_path)
    for tag in ckpt.tags():
        _truncate(os.path.join(ckpt.dir, tag, "mp_rank_00_model_states.pt"))
    with pytest.raises(CheckpointError) as e:
        _resume(ckpt, capsys)
    for step in range(1, STEPS + 1):
        assert f"checkpoint {tag_for(step)} failed verification" in str(e.value)
    assert "truncated" in str(e.value)


def test_a_checkpoint_without_manifest_loads_unverified(run, tmp_path, capsys):
    out, ckpt = _copy(run, tmp_path)
    os.remove(os.path.join(ckpt.dir, tag_for(STEPS), mf.MANIFEST))
    engine, state, said = _resume(ckpt, capsys)
    assert state["step"] == STEPS
    assert f"checkpoint {tag_for(STEPS)} has no manifest.json" in said and "unverified" in said


def test_a_save_failing_part_way_keeps_latest_and_resumes_bit_identically(run, tmp_path,
                                                                          capsys, monkeypatch):
    out, ckpt = _copy(run, tmp_path)
    engine, state, _ = _resume(ckpt, capsys)
    tiny_step(engine)
    real_save = torch.save

    def enospc(obj, f, *args, **kwargs):
        if "model_states" in str(f):
            raise OSError(28, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", enospc)
    with pytest.raises(CheckpointSaveError, match=rf"{tag_for(STEPS + 1)} .*rank 0: OSError: "
                                                  rf"\[Errno 28\] No space left.*still names "
                                                  rf"{tag_for(STEPS)}"):
        ckpt.save(engine, STEPS + 1, {})
    monkeypatch.setattr(torch, "save", real_save)
    assert ckpt.latest_tag() == tag_for(STEPS)
    assert tag_for(STEPS + 1) not in ckpt.tags()
    engine, state, _ = _resume(ckpt, capsys)
    assert state["step"] == STEPS
    assert [tiny_step(engine) for _ in range(STEPS, 7)] == [run[1][s] for s in range(STEPS + 1, 8)]


def test_rotation_counts_only_verified_checkpoints(run, tmp_path, capsys):
    out, ckpt = _copy(run, tmp_path)
    ckpt.keep_last = 2
    _truncate(os.path.join(ckpt.dir, tag_for(STEPS), "mp_rank_00_model_states.pt"))
    engine, state, _ = _resume(ckpt, capsys)           # falls back to STEPS - 1
    tiny_step(engine)
    ckpt.save(engine, STEPS, {})                       # rewrites the damaged step
    assert ckpt.tags() == [tag_for(STEPS - 1), tag_for(STEPS)]
    _truncate(os.path.join(ckpt.dir, tag_for(STEPS), "rng_rank00000.pt"))
    tiny_step(engine)
    ckpt.save(engine, STEPS + 1, {})
    # the damaged STEPS does not count: STEPS - 1 stays for a fallback
    assert ckpt.tags() == [tag_for(STEPS - 1), tag_for(STEPS), tag_for(STEPS + 1)]


def test_export_verifies_the_checkpoint(run, tmp_path, capsys):
    from lxmert_fast.training import export

    out, ckpt = _copy(run, tmp_path)
    bad = os.path.join(ckpt.dir, tag_for(STEPS), "mp_rank_00_model_states.pt")
    _garbage(bad)
    with pytest.raises(CheckpointError, match=f"{tag_for(STEPS)} failed verification: {bad}"):
        export.consolidated_state_dict(out, tag_for(STEPS))
    state = export.consolidated_state_dict(out)
    assert f"falling back to {tag_for(STEPS - 1)}" in capsys.readouterr().err
    ref = torch.load(os.path.join(ckpt.dir, tag_for(STEPS - 1), "mp_rank_00_model_states.pt"),
                     weights_only=False)["module"]
    assert sorted(state) == sorted(ref)
    assert all(torch.equal(state[k], ref[k].float()) for k in ref)


def test_a_save_killed_mid_way_is_skipped_and_replaced(run, tmp_path, capsys):
    out, ckpt = _copy(run, tmp_path)
    partial = os.path.join(ckpt.dir, tag_for(STEPS + 1))     # a rank died while writing it
    os.makedirs(partial)
    with open(os.path.join(partial, "mp_rank_00_model_states.pt"), "wb") as f:
        f.write(b"PK\x03\x04")
    engine, state, said = _resume(ckpt, capsys)
    assert state["step"] == STEPS
    assert f"{partial} is newer than 'latest' ({tag_for(STEPS)}): a save that did not " \
           f"complete; not used" in said
    tiny_step(engine)
    ckpt.save(engine, STEPS + 1, {})
    assert mf.quick_verify(partial) and ckpt.latest_tag() == tag_for(STEPS + 1)
