"""``python -m lxmert_fast.data prepare RECORDS.json... OUT --vocab vocab.txt``: LXMERT
pretraining records -> a prepared corpus directory (prepared.py), read by train.py as
``--train_json OUT`` (a prepared directory is opened as is; JSON records are prepared and cached
automatically). ``info OUT`` prints what a prepared corpus holds and was made from."""
import argparse
import json
import sys


def _prepare(args) -> None:
    from .answers import AnswerTable
    from .prepare import prepare_corpus
    from .tokenization import load_tokenizer, resolve_vocab

    tokenizer = load_tokenizer(resolve_vocab(args.vocab))
    table = AnswerTable.load(args.answers) if args.answers else None
    corpus = prepare_corpus(args.records, args.out, tokenizer, args.max_seq_len, table,
                            show=not args.quiet)
    print(f"{args.out}: {corpus.num_sentences:,} sentences over {corpus.num_images:,} images, "
          f"{len(corpus.answers):,} answers, sources {corpus.sources}")


def _info(args) -> None:
    from .prepared import open_prepared

    corpus = open_prepared(args.path)
    meta = dict(corpus.meta)
    print(json.dumps({k: meta[k] for k in ("num_sentences", "num_images", "sources", "key")},
                     indent=1))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m lxmert_fast.data",
                                description="prepare LXMERT pretraining records once")
    sub = p.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="records -> prepared corpus directory")
    prep.add_argument("records", nargs="+", help="LXMERT pretraining record JSON file(s)")
    prep.add_argument("out", help="output directory (written atomically)")
    prep.add_argument("--vocab", help="BERT vocab.txt (default: installed BERT uncased)")
    prep.add_argument("--max_seq_len", type=int, default=20)
    prep.add_argument("--answers", help="answer table JSON (default: built from the records; "
                                        "give the training corpus's for a held-out split)")
    prep.add_argument("--quiet", action="store_true")
    info = sub.add_parser("info", help="what a prepared corpus holds")
    info.add_argument("path")
    args = p.parse_args(argv)
    from .prepared import PreparedCorpusError
    from .records import RecordFormatError

    try:
        (_prepare if args.command == "prepare" else _info)(args)
    except (PreparedCorpusError, RecordFormatError, FileNotFoundError, ValueError) as e:
        sys.exit(f"{args.command} failed: {e}")


if __name__ == "__main__":
    main()
