"""Reading and writing files, one way each.

Writes are atomic: a file or directory is filled under a temporary name next to its target, fsynced and
renamed into place, so a killed job never leaves a half-written parquet, JSON or directory behind.
Reads name the file in every error (``InputError``): missing, unreadable, not JSON, a column missing.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cptlaws.errors import InputError, MissingFileError, StorageError

TABLE_SUFFIXES = (".parquet", ".pq", ".csv", ".tsv")
_STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def free_space(path: str | os.PathLike) -> str:
    """The free space of the file system holding ``path`` (its nearest existing parent), as text."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return f"{shutil.disk_usage(p).free / 2**20:.1f} MiB free there"
    except OSError:
        return "free space unknown"


def storage_error(exc: OSError, path: str | os.PathLike) -> StorageError | None:
    """A one-line ``StorageError`` naming ``path`` for an OSError that says the disk refused the write
    (no space, read-only, no permission); None for other errors."""
    why = _STORAGE_ERRNOS.get(getattr(exc, "errno", None))
    if why is None:
        return None
    extra = f" ({free_space(path)})" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return StorageError(f"cannot write {path}: {why}{extra}")


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn a refused write (no space, read-only, no permission) inside the block into a ``StorageError``."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        err = storage_error(exc, path)
        if err is None:
            raise
        raise err from None


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync and rename it onto ``path``."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix or ".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp)
        try:
            yield tmp
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory next to ``path``; on success fsync its files and let it replace
    ``path``. A kill leaves only a hidden ``.<name>.tmp-*`` directory (``clean_tmp_dirs`` removes those),
    never a half-filled ``path``; an existing ``path`` is moved aside first and deleted after the swap."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            yield tmp
            for f in tmp.rglob("*"):
                if f.is_file():
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
            old = None
            if path.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
                os.replace(path, old / "x")
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def clean_tmp_dirs(parent: str | os.PathLike) -> None:
    """Remove the debris ``atomic_dir`` leaves in ``parent`` when a process is killed mid-write."""
    parent = Path(parent)
    if parent.is_dir():
        for p in parent.glob(".*.tmp-*"):
            shutil.rmtree(p, ignore_errors=True)
        for p in parent.glob(".*.old-*"):
            shutil.rmtree(p, ignore_errors=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_parquet(path: str | os.PathLike, df) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def write_table(path: str | os.PathLike, df) -> None:
    """A DataFrame as parquet or CSV, by the file's suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        write_parquet(path, df)
    elif suffix == ".csv":
        with atomic_path(path) as tmp:
            df.to_csv(tmp, index=False)
    else:
        raise InputError(f"{path}: output must end in .parquet or .csv")


def read_json(path: str | os.PathLike, what: str = "") -> Any:
    """Parse a JSON file; every failure names the file (and ``what`` it was meant to be)."""
    path = Path(path)
    hint = f" ({what})" if what else ""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingFileError(f"{path}: no such file{hint}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a JSON text file (not UTF-8){hint}") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc}){hint}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: invalid JSON ({exc}){hint}") from None


def read_table(path: str | os.PathLike, columns: Sequence[str] = (), what: str = "table"):
    """A parquet / CSV / TSV table; names the file when it is missing, unreadable or lacks a column."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{path}: no such file ({what} not found)")
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise InputError(f"{path}: unknown {what} format '{suffix}' (use .parquet or .csv)")
    try:
        if suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    except Exception as exc:  # noqa: BLE001 - pyarrow and the CSV parser raise many types: name the file
        raise InputError(f"{path}: cannot read {what} ({exc})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; columns are {list(df.columns)}")
    return df


def _json_default(o: Any):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
