"""Hub datasets (FineWeb, Knowledge-Pile, Pile-of-Law, ...) streamed into the same token-dir format.

For cluster users: ``datasets.load_dataset(..., streaming=True)`` reads documents lazily, the same
``encode_batch`` as the local path tokenizes them (``IterableDataset.map(batched=True)``), each document
goes to train or valid by a seeded hash of its id (or its position in the stream), and reading stops
once the TRAIN split holds ``token_budget`` tokens. Packing and writing are shared with local corpora
(:func:`cptlaws.data.tokenize.write_token_dir`). Local files work through the packaged builders
(``dataset="json"`` / ``"text"`` / ``"parquet"`` with ``data_files``), which is how the tests run it
with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from cptlaws.data.corpora import _unit_hash
from cptlaws.data.tokenize import RowSpool, encode_batch, write_token_dir
from cptlaws.data.tokenizer import load_tokenizer
from cptlaws.errors import DataError


@dataclass(frozen=True)
class HubSource:
    path: str
    config: str | None
    text_column: str
    id_column: str | None
    licence: str


# Names the study config may use; any other hub id works too with explicit options.
HUB_PRESETS: dict[str, HubSource] = {
    "fineweb": HubSource("HuggingFaceFW/fineweb", "sample-10BT", "text", "id", "ODC-By 1.0"),
    "knowledge-pile": HubSource("Query-of-CC/Knowledge_Pile", None, "content", None, "see dataset card"),
    "pile-of-law": HubSource(
        "pile-of-law/pile-of-law", "r_legaladvice", "text", None, "CC-BY-NC-SA 4.0 (mixed; see card)"
    ),
}

LOCAL_BUILDERS = {"json", "text", "csv", "parquet", "arrow"}


def _offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _check_reachable(dataset: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not after minutes of retries, when the hub cannot be reached."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise DataError(
            f"hub dataset {dataset!r}: cannot reach {host}:{port} ({exc}); this needs network access "
            "(or a pre-populated HF cache with HF_HUB_OFFLINE=1)"
        ) from None


def open_stream(dataset: str, config: str | None = None, split: str = "train", data_files=None, **kwargs):
    """``load_dataset(..., streaming=True)`` with errors that name the dataset."""
    from datasets import load_dataset

    is_local = dataset in LOCAL_BUILDERS or Path(dataset).exists()
    if is_local and dataset in LOCAL_BUILDERS and not data_files:
        raise DataError(f"dataset {dataset!r} is a local file builder and needs data_files")
    if not is_local and not _offline():
        _check_reachable(dataset)
    try:
        return load_dataset(dataset, name=config, split=split, data_files=data_files, streaming=True, **kwargs)
    except Exception as exc:  # datasets raises ConnectionError, FileNotFoundError, ValueError, ...
        hint = " (HF_HUB_OFFLINE is set and it is not cached)" if _offline() and not is_local else ""
        raise DataError(
            f"cannot open dataset {dataset!r} (config {config!r}, split {split!r}){hint}: {type(exc).__name__}: {exc}"
        ) from None


def _plain(data_files):
    """Paths -> str so data_files is JSON-serialisable in meta.json."""
    if data_files is None or isinstance(data_files, str):
        return data_files
    if isinstance(data_files, os.PathLike):
        return os.fspath(data_files)
    if isinstance(data_files, dict):
        return {k: _plain(v) for k, v in data_files.items()}
    return [_plain(v) for v in data_files]


def tokenize_stream(
    dataset: str,
    tokenizer_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    token_budget: int,
    seq_len: int = 128,
    text_column: str | None = None,
    id_column: str | None = None,
    config: str | None = None,
    split: str = "train",
    data_files=None,
    valid_frac: float = 0.01,
    seed: int = 0,
    batch_size: int = 256,
    shuffle: bool = True,
) -> dict:
    """Stream ``dataset`` (a hub id, a preset name from :data:`HUB_PRESETS`, or a local builder with
    ``data_files``) into a token dir holding >= ``token_budget`` train tokens (or the whole stream) and
    >= ``valid_frac * token_budget`` valid tokens (documents whose id hashes below ``valid_frac``)."""
    preset = HUB_PRESETS.get(dataset)
    if preset is not None:
        dataset, config = preset.path, config if config is not None else preset.config
        text_column = text_column or preset.text_column
        id_column = id_column if id_column is not None else preset.id_column
    text_column = text_column or "text"
    data_files = _plain(data_files)
    if token_budget <= 0:
        raise DataError(f"token_budget must be > 0, got {token_budget}")
    if not 0.0 < valid_frac < 1.0:
        raise DataError(f"valid_frac must be in (0, 1), got {valid_frac}")
    load_tokenizer(tokenizer_path)  # fail early, naming the file
    enc = _encoded_stream(dataset, config, split, data_files, tokenizer_path, text_column, id_column, batch_size)
    # valid gets its share of the budget (at least one row), so a tiny valid_frac still yields a valid set
    min_valid = max(seq_len + 1, int(valid_frac * token_budget))
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # rows are spooled to disk as the stream arrives (bounded memory); the spool goes once the dir is written
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.spool-", dir=out_dir.parent) as spool:
        parts = {s: RowSpool(Path(spool) / f"{s}.arrow", seq_len) for s in ("train", "valid")}
        counts = _split_documents(enc, parts, dataset, id_column, seed, valid_frac, token_budget, min_valid)
        streams = {s: (parts[s], counts[s]["docs"], counts[s]["bytes"]) for s in parts}
        source = {
            "kind": "hub",
            "name": dataset,
            "config": config,
            "split": split,
            "text_column": text_column,
            "id_column": id_column,
            "data_files": data_files,
            "token_budget": int(token_budget),
            "valid_frac": valid_frac,
            "licence": preset.licence if preset else None,
            "budget_reached": counts["train"]["tokens"] >= token_budget,
        }
        return write_token_dir(out_dir, streams, seq_len, tokenizer_path, source, seed=seed, shuffle=shuffle)


def _encoded_stream(dataset, config, split, data_files, tokenizer_path, text_column, id_column, batch_size):
    """The opened stream, reduced to its text (and id) column and tokenized lazily by ``encode_batch``."""
    stream = open_stream(dataset, config, split, data_files)
    cols = getattr(stream, "column_names", None)
    if cols is not None and text_column not in cols:
        raise DataError(f"dataset {dataset!r} has no text column {text_column!r}; columns: {cols}")
    keep = [text_column] + ([id_column] if id_column else [])
    return stream.select_columns(keep).map(
        encode_batch,
        batched=True,
        batch_size=batch_size,
        fn_kwargs={"tokenizer_path": str(tokenizer_path), "text_column": text_column},
    )


def _split_documents(enc, parts, dataset, id_column, seed, valid_frac, token_budget, min_valid) -> dict:
    """Read encoded documents into the train/valid spools until train holds ``token_budget`` tokens and
    valid ``min_valid``; returns the per-split token, document and byte counts."""
    counts = {s: {"tokens": 0, "docs": 0, "bytes": 0} for s in parts}
    try:
        for i, ex in enumerate(enc):
            doc_id = ex[id_column] if id_column else i
            # same hash as local corpora: a document id lands in the same split everywhere
            s = "valid" if _unit_hash("split", seed, doc_id) < valid_frac else "train"
            if s == "train" and counts["train"]["tokens"] >= token_budget:
                continue  # train is full; still reading only to fill valid
            ids = np.asarray(ex["ids"], dtype=np.int32)
            parts[s].add(ids)
            counts[s]["tokens"] += len(ids)
            counts[s]["docs"] += 1
            counts[s]["bytes"] += int(ex["n_bytes"])
            if counts["train"]["tokens"] >= token_budget and counts["valid"]["tokens"] >= min_valid:
                break
    except DataError:
        raise
    except Exception as exc:
        raise DataError(
            f"reading dataset {dataset!r} failed after {sum(c['docs'] for c in counts.values())} "
            f"documents: {type(exc).__name__}: {exc}"
        ) from None
    for s in parts:
        if not counts[s]["docs"]:
            raise DataError(
                f"dataset {dataset!r}: no documents went to split {s!r} (stream too short for valid_frac={valid_frac}?)"
            )
    return counts


__all__ = ["HUB_PRESETS", "DataError", "HubSource", "open_stream", "tokenize_stream"]
