"""Text -> token ids -> packed fixed-length rows, saved as a ``datasets`` token directory.

Layout of a token dir (the contract with the training data loader, see docs/design.md):

    <out>/train/, <out>/valid/   datasets.Dataset.save_to_disk, one column ``input_ids``:
                                 fixed-length int32 rows of seq_len + 1 ids
    <out>/meta.json              vocab_size, seq_len, n_tokens / n_bytes per split, tokenizer, corpus

Each split's documents are encoded (``datasets.map(batched=True)``, ``num_proc`` workers), each
followed by EOS, and concatenated in document order into one stream; row ``i`` is
``stream[i*seq_len : i*seq_len + seq_len + 1]`` (consecutive rows overlap by one id, so every stream
token after the first is a target exactly once). Rows are then shuffled with a seeded permutation
(``shuffle=False`` keeps stream order). The tail shorter than a row is dropped. The result depends only
on the corpus, tokenizer, seq_len and seed, not on num_proc or batch size.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from cptlaws.data.corpora import iter_documents, read_provenance, sha256_file
from cptlaws.data.tokenizer import EOS, PAD, load_tokenizer, tokenizer_kind
from cptlaws.errors import DataError
from cptlaws.io import atomic_dir, write_json

FORMAT = "cptlaws-tokens-v1"
SPLITS = ("train", "valid")


# ---- encoding (shared by the local and the hub path; module-level so num_proc workers can pickle it)

_TOKENIZERS: dict[str, object] = {}


def _get_tokenizer(path: str):
    # keyed on mtime/size too: a retrained file at the same path must not be served stale
    try:
        st = os.stat(path)
        key = f"{path}\0{st.st_mtime_ns}\0{st.st_size}"
    except OSError:
        return load_tokenizer(path)  # raises the error that names the file
    tok = _TOKENIZERS.get(key)
    if tok is None:
        tok = _TOKENIZERS[key] = load_tokenizer(path)
    return tok


def encode_batch(batch: dict, tokenizer_path: str, text_column: str = "text") -> dict:
    """``datasets.map`` function: texts -> ``ids`` (each document + EOS) and its UTF-8 ``n_bytes``."""
    tok = _get_tokenizer(tokenizer_path)
    eos = tok.token_to_id(EOS)
    texts = batch[text_column]
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise DataError(f"column {text_column!r}: row {bad} of a batch is {type(texts[bad]).__name__}, not text")
    # encode_batch_fast skips offset tracking (unused here); several times faster on long documents
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    encs = encode(texts, add_special_tokens=False)
    return {"ids": [e.ids + [eos] for e in encs], "n_bytes": [len(t.encode("utf-8")) for t in texts]}


def pack_rows(stream: np.ndarray, seq_len: int) -> np.ndarray:
    """Rows of ``seq_len + 1`` ids with stride ``seq_len`` (overlap of one) from a 1-D stream."""
    if seq_len < 1:
        raise DataError(f"seq_len must be >= 1, got {seq_len}")
    n_rows = (len(stream) - 1) // seq_len
    if n_rows < 1:
        return np.zeros((0, seq_len + 1), dtype=np.int32)
    # a strided view, copied once into int32 rows: no (n_rows x row_len) int64 index (2x the stream)
    windows = np.lib.stride_tricks.sliding_window_view(np.asarray(stream, dtype=np.int32), seq_len + 1)
    return np.ascontiguousarray(windows[: n_rows * seq_len : seq_len])


def _stream_of(ds) -> np.ndarray:
    """Concatenate the ``ids`` column of an (in-memory / on-disk) Dataset without Python loops."""
    col = ds.data.column("ids").combine_chunks()
    return np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.int32)


def _row_features(seq_len: int):
    from datasets import Features, Sequence, Value

    return Features({"input_ids": Sequence(Value("int32"), length=seq_len + 1)})


class RowSpool:
    """Packs a token stream into rows as it arrives and spools them to an Arrow file, so a hub-scale
    stream (10^10 tokens) never sits in memory: RAM holds one chunk plus the carried tail.

    Rows are exactly ``pack_rows`` of the whole stream: each chunk keeps its last ``< seq_len + 1`` tokens
    (the one-id overlap included) to start the next row.
    """

    def __init__(self, path: str | os.PathLike, seq_len: int, chunk_tokens: int = 1 << 24):
        from datasets.arrow_writer import ArrowWriter

        if seq_len < 1:
            raise DataError(f"seq_len must be >= 1, got {seq_len}")
        self.path, self.seq_len, self.chunk_tokens = Path(path), seq_len, max(int(chunk_tokens), seq_len + 1)
        self._writer = ArrowWriter(features=_row_features(seq_len), path=str(self.path))
        self._parts: list[np.ndarray] = []
        self._pending = 0
        self.n_tokens = 0
        self.n_rows = 0

    def add(self, ids: np.ndarray) -> None:
        self._parts.append(np.asarray(ids, dtype=np.int32))
        self._pending += len(ids)
        self.n_tokens += len(ids)
        if self._pending >= self.chunk_tokens:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        stream = np.concatenate(self._parts) if len(self._parts) > 1 else self._parts[0]
        n = (len(stream) - 1) // self.seq_len
        if n > 0:
            rows = pack_rows(stream[: n * self.seq_len + 1], self.seq_len)
            col = pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), self.seq_len + 1)
            self._writer.write_table(pa.table({"input_ids": col}))
            self.n_rows += n
        tail = stream[n * self.seq_len :]
        self._parts, self._pending = [tail], len(tail)

    def close(self):
        """Finish the file; returns the rows as a memory-mapped ``datasets.Dataset``."""
        from datasets import Dataset

        if self._pending:
            self._flush()
        self._writer.finalize()
        return Dataset.from_file(str(self.path))


def _write_split(rows, path: Path, seq_len: int) -> None:
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()
    ds = rows if isinstance(rows, Dataset) else Dataset.from_dict({"input_ids": rows}, features=_row_features(seq_len))
    ds.save_to_disk(str(path))


def _tokenizer_record(tokenizer_path: str | os.PathLike, tok) -> dict:
    return {
        "path": str(tokenizer_path),
        "sha256": sha256_file(tokenizer_path),
        "kind": tokenizer_kind(tokenizer_path),
        "eos_id": tok.token_to_id(EOS),
        "pad_id": tok.token_to_id(PAD),
    }


def write_token_dir(
    out_dir: str | os.PathLike,
    split_streams: dict[str, tuple[np.ndarray, int, int]],
    seq_len: int,
    tokenizer_path: str | os.PathLike,
    source: dict,
    seed: int = 0,
    shuffle: bool = True,
) -> dict:
    """Pack each split's stream into rows and write the token dir atomically; return meta.

    ``split_streams``: split -> (token stream incl. EOS, or a closed-over ``RowSpool`` of it, n_docs,
    n_bytes of the documents' text)."""
    tok = _get_tokenizer(str(tokenizer_path))
    meta = {
        "format": FORMAT,
        "vocab_size": tok.get_vocab_size(),
        "seq_len": seq_len,
        "row_len": seq_len + 1,
        "row_stride": seq_len,
        "shuffled": shuffle,
        "seed": seed,
        "tokenizer": _tokenizer_record(tokenizer_path, tok),
        "source": source,
        "n_tokens": {},
        "n_bytes": {},
        "splits": {},
    }
    with atomic_dir(out_dir) as tmp:
        for split, (stream, n_docs, n_bytes) in split_streams.items():
            if isinstance(stream, RowSpool):
                rows, n_tokens = stream.close(), stream.n_tokens
            else:
                rows, n_tokens = pack_rows(stream, seq_len), int(len(stream))
            if len(rows) == 0:
                raise DataError(
                    f"split {split!r} of {source.get('name', source)} has {n_tokens} tokens, "
                    f"fewer than one row of seq_len + 1 = {seq_len + 1}"
                )
            if shuffle:  # a per-split seed keeps train and valid permutations independent
                perm = np.random.default_rng([seed, SPLITS.index(split) if split in SPLITS else 99]).permutation(
                    len(rows)
                )
                rows = rows.select(perm) if isinstance(stream, RowSpool) else rows[perm]
            _write_split(rows, tmp / split, seq_len)
            meta["n_tokens"][split] = n_tokens
            meta["n_bytes"][split] = int(n_bytes)
            meta["splits"][split] = {
                "n_docs": int(n_docs),
                "n_rows": int(len(rows)),
                "n_tokens": n_tokens,
                "n_target_tokens": int(len(rows) * seq_len),
                "n_bytes": int(n_bytes),
                "tokens_per_byte": n_tokens / n_bytes if n_bytes else None,
            }
        write_json(tmp / "meta.json", meta)
    return meta


# ---- local corpora


def tokenize_corpus(
    corpus_dir: str | os.PathLike,
    tokenizer_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    seq_len: int = 128,
    num_proc: int = 1,
    batch_size: int = 256,
    seed: int = 0,
    shuffle: bool = True,
) -> dict:
    """Tokenize both splits of a corpus directory (from :func:`cptlaws.data.corpora.fetch_corpus`)."""
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()
    if seq_len < 1:
        raise DataError(f"seq_len must be >= 1, got {seq_len}")
    if num_proc < 1:
        raise DataError(f"num_proc must be >= 1, got {num_proc}")
    prov = read_provenance(corpus_dir)
    load_tokenizer(tokenizer_path)  # fail early, naming the file
    streams = {}
    for split in SPLITS:
        docs = list(iter_documents(corpus_dir, split))
        if not docs:
            raise DataError(f"corpus {corpus_dir}: split {split!r} has no documents")
        ds = Dataset.from_dict({"id": [d for d, _ in docs], "text": [t for _, t in docs]})
        enc = ds.map(
            encode_batch,
            batched=True,
            batch_size=batch_size,
            num_proc=num_proc if num_proc > 1 else None,
            remove_columns=["id", "text"],
            fn_kwargs={"tokenizer_path": str(tokenizer_path)},
            keep_in_memory=True,
            load_from_cache_file=False,
            desc=f"tokenize {split}",
        )
        streams[split] = (_stream_of(enc), len(docs), int(np.sum(enc["n_bytes"])))
    source = {"kind": "corpus", "name": prov.get("corpus"), "dir": str(corpus_dir), "provenance": prov}
    return write_token_dir(out_dir, streams, seq_len, tokenizer_path, source, seed=seed, shuffle=shuffle)


# ---- readers used by the loader, tests and reports


def read_token_meta(token_dir: str | os.PathLike) -> dict:
    p = Path(token_dir) / "meta.json"
    if not p.is_file():
        raise DataError(f"{token_dir} is not a token directory (no meta.json); build it with `cptlaws tokenize`")
    import json

    meta = json.loads(p.read_text())
    if meta.get("format") != FORMAT:
        raise DataError(f"{p}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load_split(token_dir: str | os.PathLike, split: str):
    """The ``datasets.Dataset`` of one split (column ``input_ids``)."""
    from datasets import load_from_disk

    read_token_meta(token_dir)
    p = Path(token_dir) / split
    if not p.is_dir():
        raise DataError(f"token directory {token_dir} has no split {split!r}")
    return load_from_disk(str(p))


def tokens_per_byte(meta: dict, split: str) -> float:
    try:
        return meta["n_tokens"][split] / meta["n_bytes"][split]
    except (KeyError, ZeroDivisionError):
        raise DataError(f"token meta has no n_tokens/n_bytes for split {split!r}") from None


def bits_per_byte(nats_per_token: float | np.ndarray, meta: dict, split: str):
    """Convert a per-token cross-entropy (nats) into bits per UTF-8 byte of the split's text."""
    return np.asarray(nats_per_token) * tokens_per_byte(meta, split) / math.log(2)


def decode_rows(rows: Iterable[Iterable[int]], tokenizer_path: str | os.PathLike) -> list[str]:
    tok = _get_tokenizer(str(tokenizer_path))
    return [tok.decode(list(map(int, r)), skip_special_tokens=False) for r in rows]


__all__ = [
    "FORMAT",
    "RowSpool",
    "DataError",
    "bits_per_byte",
    "decode_rows",
    "encode_batch",
    "load_split",
    "pack_rows",
    "read_token_meta",
    "tokenize_corpus",
    "tokens_per_byte",
    "write_token_dir",
]
