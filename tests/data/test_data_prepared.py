"""Prepared corpora (data/prepared.py, data/prepare.py, ``python -m lxmert_fast.data``): written
atomically, opened in O(images) Python state, and refused with a message naming the cause when
truncated, half-written, or made from other records, another vocab or another max_seq_len."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lxmert_fast.data.prepare import ensure_prepared, prepare_corpus
from lxmert_fast.data.prepared import PreparedCorpusError, open_prepared, vocab_digest
from lxmert_fast.data.records import RecordFormatError, flatten, load_records

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture()
def prepared(small_world, small_tokenizer, tmp_path):
    return prepare_corpus([small_world.splits["pretrain_train"]], str(tmp_path / "corpus"),
                          small_tokenizer, 20, show=False)


def test_arrays_hold_the_records(prepared, small_world, small_tokenizer):
    examples = flatten(load_records(small_world.splits["pretrain_train"]))
    assert len(prepared) == len(examples)
    for i in range(0, len(examples), 17):
        t = prepared.text_id[i]
        ids = prepared.tokens[prepared.tok_offsets[t]:prepared.tok_offsets[t + 1]]
        want = small_tokenizer.encode(examples[i].sent.strip(), add_special_tokens=False).ids
        assert list(ids) == want[:18] and prepared.uid(i) == examples[i].uid
    by = prepared.by_image
    assert sorted(by.tolist()) == list(range(len(prepared)))
    for p in range(prepared.num_images):
        s, e = prepared.image_start[p], prepared.image_start[p + 1]
        assert (prepared.image[by[s:e]] == p).all()
    assert isinstance(prepared.tokens, np.memmap) and prepared.tokens.dtype == np.uint16


def test_a_truncated_file_is_named(prepared):
    path = os.path.join(prepared.path, "tokens.bin")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 2)
    with pytest.raises(PreparedCorpusError, match=r"tokens\.bin: \d+ bytes, meta\.json says"):
        open_prepared(prepared.path)


def test_other_inputs_are_named(prepared, small_world, small_tokenizer, tmp_path):
    key = dict(prepared.key)
    with pytest.raises(PreparedCorpusError, match="max_seq_len 20 \\(expected 16\\)"):
        open_prepared(prepared.path, dict(key, max_seq_len=16))
    with pytest.raises(PreparedCorpusError, match="another vocab"):
        open_prepared(prepared.path, dict(key, vocab_sha256="0" * 64))
    other = dict(key, records=[dict(key["records"][0], sha256="1" * 64)])
    with pytest.raises(PreparedCorpusError, match="the content of \\['pretrain_train.json'\\]"):
        open_prepared(prepared.path, other)
    assert open_prepared(prepared.path, key).num_sentences == len(prepared)
    assert key["vocab_sha256"] == vocab_digest(small_tokenizer)


def test_half_written_is_never_opened(small_world, small_tokenizer, tmp_path, monkeypatch):
    import lxmert_fast.data.prepared as mod

    out = str(tmp_path / "corpus")

    def fail(path, data):
        if path.endswith("meta.json"):
            raise OSError(28, "No space left on device", path)
        with open(path, "wb") as f:
            f.write(data)

    monkeypatch.setattr(mod, "_write_synced", fail)
    with pytest.raises(OSError, match="No space left"):
        prepare_corpus([small_world.splits["pretrain_train"]], out, small_tokenizer, show=False)
    assert not os.path.exists(out) and os.listdir(tmp_path) == []      # temp removed
    os.makedirs(out)
    with pytest.raises(PreparedCorpusError, match="no meta.json"):
        open_prepared(out)


def test_cache_rebuilds_stale_or_damaged(small_world, small_tokenizer, tmp_path, capsys):
    recs = tmp_path / "r.json"
    recs.write_text(open(small_world.splits["pretrain_train"]).read())
    first = ensure_prepared([str(recs)], small_tokenizer, 20, cache_dir=str(tmp_path))
    assert ensure_prepared([str(recs)], small_tokenizer, 20, cache_dir=str(tmp_path)).path == \
        first.path                                                   # found, not rebuilt
    with open(os.path.join(first.path, "image.bin"), "r+b") as f:
        f.truncate(3)
    again = ensure_prepared([str(recs)], small_tokenizer, 20, cache_dir=str(tmp_path))
    assert again.path == first.path and len(again) == len(first)
    assert "image.bin: 3 bytes" in capsys.readouterr().err
    data = json.loads(recs.read_text())
    data[0]["sentf"]["mscoco"][0] = "a different caption"
    recs.write_text(json.dumps(data))
    changed = ensure_prepared([str(recs)], small_tokenizer, 20, cache_dir=str(tmp_path))
    assert changed.path != first.path and changed.sentence(0) == "a different caption"


def test_a_malformed_record_is_named_at_prepare_time(small_tokenizer, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"img_id": "a", "sentf": {"vqa": ["q?"]}, "labelf": {"vqa": [1]}}]')
    with pytest.raises(RecordFormatError, match=r"bad\.json: record 0: labelf\['vqa'\]"):
        prepare_corpus([str(bad)], str(tmp_path / "out"), small_tokenizer, show=False)
    assert not os.path.exists(tmp_path / "out")


def test_cli_prepare_and_info(small_world, tmp_path):
    out = str(tmp_path / "cli")
    env = dict(os.environ, PYTHONPATH=ROOT)
    run = subprocess.run([sys.executable, "-m", "lxmert_fast.data", "prepare",
                          small_world.splits["pretrain_train"], out, "--vocab", small_world.vocab,
                          "--quiet"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "sentences over" in run.stdout
    info = subprocess.run([sys.executable, "-m", "lxmert_fast.data", "info", out],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert json.loads(info.stdout)["num_images"] == open_prepared(out).num_images
    bad = subprocess.run([sys.executable, "-m", "lxmert_fast.data", "info", str(tmp_path)],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert bad.returncode != 0 and "no meta.json" in bad.stderr
