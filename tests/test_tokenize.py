"""Tokenizer training/loading and packed token dirs (the format the training loader reads)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cptlaws.cli import main
from cptlaws.data.corpora import fetch_corpus, read_texts
from cptlaws.data.tokenize import (
    bits_per_byte,
    decode_rows,
    load_split,
    pack_rows,
    read_token_meta,
    tokenize_corpus,
    tokens_per_byte,
)
from cptlaws.data.tokenizer import load_tokenizer, train_tokenizer
from cptlaws.errors import DataError

SAMPLES = [
    "To be, or not to be: that is the question.",
    "def f(x):\n\treturn {'a': x ** 2}  # trailing  \n",
    "naïve café — ∀x ∈ ℝ, 😀; literal <eos> and <pad> are text",
    "",
    " leading space",
    "\n\n\n",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("c") / "code"
    fetch_corpus("code", out, max_mb=0.4, valid_frac=0.2)
    return out


@pytest.fixture(scope="module")
def bpe(corpus, tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "bpe512.json"
    meta = train_tokenizer(corpus, path, vocab_size=512)
    return path, meta


def test_bpe_deterministic_and_roundtrip(bpe, corpus, tmp_path):
    path, meta = bpe
    again = tmp_path / "again.json"
    meta2 = train_tokenizer(corpus, again, vocab_size=512)
    assert again.read_bytes() == path.read_bytes() and meta2["sha256"] == meta["sha256"]
    assert meta["vocab_size"] == 512 and meta["eos_id"] == 0 and meta["pad_id"] == 1
    assert meta["train_corpus"]["split"] == "train"
    tok = load_tokenizer(path)
    for s in SAMPLES + read_texts(corpus, "valid")[:3]:
        ids = tok.encode(s, add_special_tokens=False).ids
        assert tok.decode(ids, skip_special_tokens=False) == s
        assert 0 not in ids and 1 not in ids  # a literal "<eos>" in text is not a document boundary
    long = read_texts(corpus, "valid")[0]
    assert len(tok.encode(long).ids) < 0.8 * len(long.encode())  # merges actually compress


def test_bytes_tokenizer(tmp_path):
    meta = train_tokenizer(None, tmp_path / "bytes.json", kind="bytes")
    assert meta["vocab_size"] == 258 and meta["eos_id"] == 256
    tok = load_tokenizer(tmp_path / "bytes.json")
    for s in SAMPLES:
        ids = tok.encode(s, add_special_tokens=False).ids
        assert ids == list(s.encode("utf-8"))
        assert tok.decode(ids) == s


def test_tokenizer_errors(tmp_path, corpus):
    with pytest.raises(DataError, match=r"missing\.json does not exist"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json is not a valid tokenizer"):
        load_tokenizer(tmp_path / "bad.json")
    with pytest.raises(DataError, match="vocab_size 100"):
        train_tokenizer(corpus, tmp_path / "t.json", vocab_size=100)
    with pytest.raises(DataError, match="unknown tokenizer kind 'wordpiece'"):
        train_tokenizer(corpus, tmp_path / "t.json", kind="wordpiece")
    with pytest.raises(DataError, match="no provenance.json"):
        train_tokenizer(tmp_path, tmp_path / "t.json")


def test_pack_rows_overlap_by_one():
    rows = pack_rows(np.arange(10, dtype=np.int32), 3)
    assert rows.tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert pack_rows(np.arange(3), 3).shape == (0, 4)


def test_token_dir_rows_decode_to_source(bpe, corpus, tmp_path):
    path, _ = bpe
    out = tmp_path / "tok"
    meta = tokenize_corpus(corpus, path, out, seq_len=32, shuffle=False)
    assert read_token_meta(out) == json.loads(json.dumps(meta))
    tok = load_tokenizer(path)
    for split in ("train", "valid"):
        ds = load_split(out, split)
        rows = np.asarray(ds["input_ids"])
        assert rows.shape == (meta["splits"][split]["n_rows"], 33) and rows.dtype.kind == "i"
        assert (rows[1:, 0] == rows[:-1, -1]).all()  # stride seq_len: consecutive rows share one id
        stream = np.concatenate([rows[0], rows[1:, 1:].ravel()])
        docs = read_texts(corpus, split)
        text = "".join(d + "<eos>" for d in docs)
        decoded = decode_rows([stream], path)[0]
        assert text.startswith(decoded) and len(text) - len(decoded) < 33 * 8  # only the short tail is dropped
        # counts: tokens include one EOS per document; bytes are the documents' UTF-8 text
        n_tok = sum(len(tok.encode(d, add_special_tokens=False).ids) + 1 for d in docs)
        assert meta["n_tokens"][split] == n_tok == meta["splits"][split]["n_tokens"]
        assert meta["n_bytes"][split] == sum(len(d.encode()) for d in docs)
        assert (len(stream) - 1) // 32 == meta["splits"][split]["n_rows"] == (n_tok - 1) // 32
    assert meta["vocab_size"] == 512 and meta["seq_len"] == 32
    assert meta["tokenizer"]["sha256"] == bpe[1]["sha256"]
    assert meta["source"]["provenance"]["corpus"] == "code"


def test_shuffle_seeded_and_independent_of_num_proc(bpe, corpus, tmp_path):
    path, _ = bpe
    tokenize_corpus(corpus, path, tmp_path / "a", seq_len=16, shuffle=False)
    plain = np.asarray(load_split(tmp_path / "a", "train")["input_ids"])
    tokenize_corpus(corpus, path, tmp_path / "b", seq_len=16, seed=0)
    tokenize_corpus(corpus, path, tmp_path / "c", seq_len=16, seed=0, num_proc=2, batch_size=7)
    tokenize_corpus(corpus, path, tmp_path / "d", seq_len=16, seed=1)
    b, c, d = (np.asarray(load_split(tmp_path / x, "train")["input_ids"]) for x in "bcd")
    assert (b == c).all()  # same seed -> same rows, whatever num_proc / batch size
    assert not (b == plain).all() and not (b == d).all()
    key = lambda a: sorted(map(tuple, a.tolist()))  # noqa: E731
    assert key(b) == key(plain)  # a permutation of the same rows


def test_bits_per_byte_and_loader_contract(bpe, corpus, tmp_path):
    from cptlaws.data.rows import load_rows

    path, _ = bpe
    meta = tokenize_corpus(corpus, path, tmp_path / "t", seq_len=24)
    tpb = tokens_per_byte(meta, "valid")
    assert tpb == meta["n_tokens"]["valid"] / meta["n_bytes"]["valid"] and 0.2 < tpb < 1.0
    assert bits_per_byte(math.log(2), meta, "valid") == pytest.approx(tpb)
    assert bits_per_byte(np.array([1.0, 2.0]), meta, "valid") == pytest.approx(np.array([1, 2]) * tpb / math.log(2))
    rows = load_rows(tmp_path / "t", "train", seq_len=24)  # the training loader reads this format
    assert tuple(rows.shape) == (meta["splits"]["train"]["n_rows"], 25) and int(rows.max()) < meta["vocab_size"]
    # raw bytes: tokens per byte is exactly 1 + one EOS per document
    train_tokenizer(None, tmp_path / "bytes.json", kind="bytes")
    mb = tokenize_corpus(corpus, tmp_path / "bytes.json", tmp_path / "tb", seq_len=24)
    s = mb["splits"]["valid"]
    assert s["n_tokens"] == s["n_bytes"] + s["n_docs"]


def test_tokenize_errors(bpe, corpus, tmp_path):
    path, _ = bpe
    with pytest.raises(DataError, match=r"nope\.json does not exist"):
        tokenize_corpus(corpus, tmp_path / "nope.json", tmp_path / "o")
    with pytest.raises(ValueError, match="no provenance.json"):
        tokenize_corpus(tmp_path, path, tmp_path / "o")
    with pytest.raises(DataError, match="seq_len"):
        tokenize_corpus(corpus, path, tmp_path / "o", seq_len=0)
    with pytest.raises(DataError, match=r"split 'train' of code has \d+ tokens, fewer than one row"):
        tokenize_corpus(corpus, path, tmp_path / "o", seq_len=10**7)
    assert not (tmp_path / "o").exists()  # nothing half-written
    with pytest.raises(DataError, match="no meta.json"):
        read_token_meta(tmp_path)


def test_cli_end_to_end(tmp_path, capsys):
    c, t, o = tmp_path / "corpus", tmp_path / "tok.json", tmp_path / "tokens"
    assert main(["corpus", "fetch", "code", "--out", str(c), "--max-mb", "0.2", "--valid-frac", "0.2"]) == 0
    assert main(["tokenizer", "train", "--corpus", str(c), "--vocab", "300", "--out", str(t)]) == 0
    assert main(["tokenize", "--corpus", str(c), "--tokenizer", str(t), "--seq-len", "16", "--out", str(o)]) == 0
    out = capsys.readouterr().out
    assert "tokens/byte" in out and (o / "train").is_dir() and (o / "valid").is_dir()
    assert json.loads((t.parent / "tok.json.meta.json").read_text())["vocab_size"] == 300
    assert main(["corpus", "fetch", "wiki", "--out", str(tmp_path / "w")]) == 2
    assert "unknown corpus 'wiki'" in capsys.readouterr().err
    assert main(["tokenize", "--corpus", str(c), "--tokenizer", str(tmp_path / "no.json"), "--out", str(o)]) == 2
    assert "no.json does not exist" in capsys.readouterr().err
    assert main(["tokenize", "--corpus", str(c), "--tokenizer", str(t), "--out", str(o), "--token-budget", "5"]) == 2
    assert "--token-budget only applies with --hub" in capsys.readouterr().err


@pytest.mark.parametrize("seq_len, chunk", [(16, 17), (16, 40), (7, 1000), (64, 65)])
def test_row_spool_chunks_equal_packing_the_whole_stream(tmp_path, seq_len, chunk):
    from cptlaws.data.tokenize import RowSpool, pack_rows

    rng = np.random.default_rng(seq_len)
    docs = [rng.integers(0, 500, rng.integers(1, 90)).astype(np.int32) for _ in range(60)]
    spool = RowSpool(tmp_path / "rows.arrow", seq_len, chunk_tokens=chunk)
    for d in docs:
        spool.add(d)
    ds = spool.close()
    whole = pack_rows(np.concatenate(docs), seq_len)
    assert spool.n_rows == len(whole) == len(ds) and spool.n_tokens == sum(map(len, docs))
    np.testing.assert_array_equal(np.asarray(ds["input_ids"]), whole)
