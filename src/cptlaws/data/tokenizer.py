"""Byte-level tokenizers saved as a Hugging Face ``tokenizer.json``.

``bpe``: byte-level BPE trained with ``tokenizers`` on the TRAIN split of the general corpus only (so
validation text never shapes the vocabulary). ``bytes``: raw UTF-8 bytes, id = byte value (0..255),
then the special tokens. Both round-trip any text exactly and share one loader.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from cptlaws.data.corpora import read_provenance, read_texts, sha256_file
from cptlaws.errors import DataError
from cptlaws.io import atomic_path, write_json

EOS, PAD = "<eos>", "<pad>"
SPECIALS = (EOS, PAD)
KINDS = ("bpe", "bytes")


def _bytes_tokenizer() -> Tokenizer:
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    # ByteLevel maps byte b to a printable char; order the vocab by byte value so id == byte.
    byte_to_char = _byte_level_map()
    vocab = {byte_to_char[b]: b for b in range(256)}
    assert set(vocab) == set(alphabet)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIALS))
    tok.encode_special_tokens = True
    return tok


def _byte_level_map() -> dict[int, str]:
    """GPT-2's bytes -> unicode table (what ``pre_tokenizers.ByteLevel`` uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def train_bpe(texts: list[str], vocab_size: int = 1024, min_frequency: int = 2) -> Tokenizer:
    """Byte-level BPE on ``texts`` (deterministic for the same texts in the same order)."""
    n_base = 256 + len(SPECIALS)
    if vocab_size < n_base:
        raise DataError(f"vocab_size {vocab_size} is below the {n_base} byte + special tokens of byte-level BPE")
    if not texts:
        raise DataError("no training text for the tokenizer")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=False,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    tok.encode_special_tokens = True
    return tok


def train_tokenizer(
    corpus_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    vocab_size: int = 1024,
    kind: str = "bpe",
    min_frequency: int = 2,
) -> dict:
    """Train (``bpe``) or build (``bytes``) a tokenizer; write ``out_path`` (tokenizer.json) and
    ``<out_path>.meta.json`` atomically; return the metadata."""
    if kind not in KINDS:
        raise DataError(f"unknown tokenizer kind {kind!r}; expected one of {KINDS}")
    t0 = time.perf_counter()
    corpus_rec = None
    if kind == "bpe":
        try:
            prov = read_provenance(corpus_dir)
            texts = read_texts(corpus_dir, "train")
        except DataError as exc:
            raise DataError(f"tokenizer training corpus: {exc}") from None
        tok = train_bpe(texts, vocab_size, min_frequency)
        corpus_rec = {
            "dir": str(corpus_dir),
            "corpus": prov.get("corpus"),
            "split": "train",
            "sha256": prov["splits"]["train"]["sha256"],
            "n_bytes": prov["splits"]["train"]["n_bytes"],
        }
    else:
        tok = _bytes_tokenizer()
    train_s = time.perf_counter() - t0
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        tok.save(str(tmp))
    meta = {
        "kind": kind,
        "vocab_size": tok.get_vocab_size(),
        "requested_vocab_size": vocab_size if kind == "bpe" else None,
        "min_frequency": min_frequency if kind == "bpe" else None,
        "eos_id": tok.token_to_id(EOS),
        "pad_id": tok.token_to_id(PAD),
        "train_corpus": corpus_rec,
        "train_s": round(train_s, 3),
        "sha256": sha256_file(out_path),
    }
    write_json(meta_path(out_path), meta)
    return meta


def meta_path(tokenizer_path: str | os.PathLike) -> Path:
    p = Path(tokenizer_path)
    return p.with_name(p.name + ".meta.json")


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer.json written by :func:`train_tokenizer` (or any byte-level one with ``<eos>``)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"tokenizer file {p} does not exist; train one with `cptlaws tokenizer train`")
    try:
        tok = Tokenizer.from_file(str(p))
    except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
        raise DataError(f"tokenizer file {p} is not a valid tokenizer.json ({exc})") from None
    if tok.token_to_id(EOS) is None:
        raise DataError(f"tokenizer {p} has no {EOS} token")
    # A literal "<eos>" inside a document is text, not a document boundary.
    tok.encode_special_tokens = True
    return tok


def eos_id(tok: Tokenizer) -> int:
    return tok.token_to_id(EOS)


def pad_id(tok: Tokenizer) -> int:
    i = tok.token_to_id(PAD)
    return eos_id(tok) if i is None else i


def tokenizer_kind(path: str | os.PathLike) -> str:
    m = meta_path(path)
    if m.is_file():
        return json.loads(m.read_text()).get("kind", "unknown")
    return "unknown"


__all__ = [
    "EOS",
    "PAD",
    "KINDS",
    "DataError",
    "eos_id",
    "load_tokenizer",
    "meta_path",
    "pad_id",
    "tokenizer_kind",
    "train_bpe",
    "train_tokenizer",
]
