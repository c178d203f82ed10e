"""Time the default study's data preparation end to end and print the corpus figures.

    python benchmarks/data_pipeline.py [--out benchmarks/out/data] [--corpora general,code,legal,math]
        [--vocab 1024] [--seq-len 128] [--num-proc 1]

Steps: fetch every corpus (source archives from the cache, downloaded once), train the BPE tokenizer
on general/train, tokenize every corpus. Prints per-corpus docs / bytes / tokens / tokens-per-byte and
the wall time of each step. Goal: all of it < 60 s on 2 CPU cores once the archives are cached.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cptlaws.data.corpora import fetch_corpus
from cptlaws.data.tokenize import tokenize_corpus
from cptlaws.data.tokenizer import train_tokenizer
from cptlaws.errors import DataError


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/out/data")
    ap.add_argument("--corpora", default="general,code,legal,math")
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--num-proc", type=int, default=1)
    args = ap.parse_args()
    out = Path(args.out)
    names = args.corpora.split(",")
    times: dict[str, float] = {}
    provs = {}
    t_all = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        try:
            provs[name] = fetch_corpus(name, out / "corpora" / name)
        except DataError as exc:
            if name != "math":
                raise
            print(f"skipping optional corpus math: {exc}")
            continue
        times[f"fetch {name}"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tmeta = train_tokenizer(out / "corpora" / "general", out / "tokenizer" / f"bpe{args.vocab}.json", args.vocab)
    times["tokenizer train"] = time.perf_counter() - t0
    metas = {}
    for name in provs:
        t0 = time.perf_counter()
        metas[name] = tokenize_corpus(
            out / "corpora" / name,
            out / "tokenizer" / f"bpe{args.vocab}.json",
            out / "tokens" / name,
            seq_len=args.seq_len,
            num_proc=args.num_proc,
        )
        times[f"tokenize {name}"] = time.perf_counter() - t0
    total = time.perf_counter() - t_all

    print(
        f"\ntokenizer: byte-level BPE, vocab {tmeta['vocab_size']}, trained on general/train "
        f"({tmeta['train_corpus']['n_bytes'] / 1e6:.2f} MB) in {tmeta['train_s']:.2f} s"
    )
    print(f"\n{'corpus':8s} {'split':5s} {'docs':>6s} {'MB':>7s} {'tokens':>10s} {'rows':>8s} {'tok/byte':>9s}")
    for name, m in metas.items():
        for split, s in m["splits"].items():
            print(
                f"{name:8s} {split:5s} {s['n_docs']:6d} {s['n_bytes'] / 1e6:7.2f} {s['n_tokens']:10d} "
                f"{s['n_rows']:8d} {s['tokens_per_byte']:9.4f}"
            )
    print()
    for k, v in times.items():
        print(f"{k:20s} {v:7.2f} s")
    print(f"{'total':20s} {total:7.2f} s  (goal < 60 s on 2 cores, archives cached)")


if __name__ == "__main__":
    main()
