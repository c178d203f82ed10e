"""Tokenized datasets in memory, the exact-share mixture sampler and fixed validation batches.

A tokenized corpus is a directory written by ``datasets.Dataset.save_to_disk`` with one column
``input_ids`` of fixed-length rows of ``seq_len + 1`` token ids (inputs = row[:-1], targets = row[1:]),
and a ``meta.json`` with at least ``vocab_size`` and ``seq_len``. A corpus token dir holds the splits
as sub-directories ``train/`` and ``valid/``; ``meta.json`` sits in the corpus dir or the split dir.

Mixture: every batch of ``B`` rows has exactly ``n_domain = floor(r * B + 0.5)`` domain rows (round half
up in float64: r = 0.5, B = 5 gives 3, where Python's banker's ``round`` would give 2), followed by
``B - n_domain`` general rows. Each source is
read in epochs; epoch ``e`` of source ``s`` is a permutation drawn from ``numpy.random.default_rng(
[seed, s_id, e])``, so the whole stream is a pure function of (seed, cursor) and a resumed run draws
exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cptlaws.errors import DataError

if TYPE_CHECKING:  # torch is imported where rows are made: checking a run config must not import it
    import torch


def _is_dataset_dir(p: Path) -> bool:
    return (p / "dataset_info.json").is_file() or (p / "state.json").is_file()


def split_dir(path: str | Path, split: str, key: str = "") -> Path:
    """The saved dataset dir of ``split`` for a corpus token dir (``path/split``), or ``path`` itself
    when it already is a saved dataset."""
    p = Path(path)
    where = f"key '{key}': " if key else ""
    if not p.exists():
        raise DataError(f"{where}tokenized data path does not exist: {p}")
    if _is_dataset_dir(p / split):
        return p / split
    if _is_dataset_dir(p):
        return p
    raise DataError(
        f"{where}{p} is not a tokenized dataset (no {split}/ sub-directory written by "
        f"datasets.save_to_disk, no dataset_info.json)"
    )


def read_meta(path: str | Path) -> dict[str, Any]:
    """``meta.json`` of a split dir or its corpus dir ({} if neither has one)."""
    p = Path(path)
    for cand in (p / "meta.json", p.parent / "meta.json"):
        if cand.is_file():
            try:
                return json.loads(cand.read_text())
            except json.JSONDecodeError as exc:
                raise DataError(f"{cand}: invalid JSON ({exc})") from exc
    return {}


def load_rows(path: str | Path, split: str = "train", seq_len: int | None = None, key: str = "") -> torch.Tensor:
    """All rows of a split as an int64 tensor ``[n_rows, seq_len + 1]`` (read straight from Arrow)."""
    import datasets
    import torch

    d = split_dir(path, split, key)
    where = f"key '{key}': " if key else ""
    try:
        ds = datasets.load_from_disk(str(d))
    except Exception as exc:  # datasets raises several types for a bad dir
        raise DataError(f"{where}cannot load tokenized dataset {d}: {exc}") from exc
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{where}{d} is a DatasetDict without split '{split}' (has {list(ds)})")
        ds = ds[split]
    if "input_ids" not in ds.column_names:
        raise DataError(f"{where}{d} has no 'input_ids' column (columns: {ds.column_names})")
    if len(ds) == 0:
        raise DataError(f"{where}{d} has no rows")
    import pyarrow as pa

    col = ds.data.column("input_ids").combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        width = col.type.list_size
        if seq_len is not None and width != seq_len + 1:
            raise DataError(
                f"{where}{d}: rows hold {width} ids but seq_len = {seq_len} needs seq_len + 1 = {seq_len + 1}"
            )
        arr = np.asarray(col.flatten()).astype(np.int64, copy=False).reshape(len(ds), width)
        return torch.from_numpy(np.ascontiguousarray(arr))
    offsets = np.asarray(col.offsets)
    lengths = np.diff(offsets)
    width = int(lengths[0])
    if not (lengths == width).all():
        bad = int(np.nonzero(lengths != width)[0][0])
        raise DataError(
            f"{where}{d}: row {bad} has {lengths[bad]} ids, row 0 has {width}; rows must have a fixed length"
        )
    if seq_len is not None and width != seq_len + 1:
        raise DataError(f"{where}{d}: rows hold {width} ids but seq_len = {seq_len} needs seq_len + 1 = {seq_len + 1}")
    values = np.asarray(col.flatten())[: len(ds) * width]  # flatten() honours the array offset
    arr = values.astype(np.int64, copy=False).reshape(len(ds), width)
    if arr.min() < 0:
        raise DataError(f"{where}{d}: negative token id {int(arr.min())}")
    return torch.from_numpy(np.ascontiguousarray(arr))


def save_rows(path: str | Path, rows, vocab_size: int, extra_meta: Mapping | None = None) -> None:
    """Write rows as a saved dataset plus ``meta.json`` (used by tests and benchmarks for synthetic data)."""
    import datasets

    from cptlaws.io import write_json

    rows = np.asarray(rows, dtype=np.int32)
    p = Path(path)
    datasets.Dataset.from_dict({"input_ids": rows.tolist()}).save_to_disk(str(p))
    meta = {"vocab_size": int(vocab_size), "seq_len": int(rows.shape[1] - 1), "n_rows": int(rows.shape[0])}
    meta.update(extra_meta or {})
    write_json(p / "meta.json", meta)


def n_domain_rows(ratio: float, batch_size: int) -> int:
    """Domain rows per batch: round half up of ``ratio * batch_size``."""
    return int(math.floor(ratio * batch_size + 0.5))


def _stream_id(name: str) -> int:
    return zlib.crc32(name.encode())


class EpochStream:
    """Rows of one source in seeded per-epoch permutations; ``take(n)`` advances a (epoch, pos) cursor."""

    def __init__(self, rows: torch.Tensor, name: str, seed: int):
        self.rows, self.name, self.seed = rows, name, int(seed)
        self.epoch, self.pos = 0, 0
        self._perm_epoch, self._perm = -1, None

    def _permutation(self) -> np.ndarray:
        if self._perm_epoch != self.epoch:
            rng = np.random.default_rng([self.seed, _stream_id(self.name), self.epoch])
            self._perm = rng.permutation(len(self.rows))
            self._perm_epoch = self.epoch
        return self._perm

    def take_indices(self, n: int) -> np.ndarray:
        out = []
        while n > 0:
            perm = self._permutation()
            k = min(n, len(perm) - self.pos)
            out.append(perm[self.pos : self.pos + k])
            self.pos += k
            n -= k
            if self.pos == len(perm):
                self.epoch, self.pos = self.epoch + 1, 0
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "n_rows": len(self.rows), "seed": self.seed}

    def load_state_dict(self, st: Mapping) -> None:
        if st.get("n_rows", len(self.rows)) != len(self.rows):
            raise DataError(
                f"data stream '{self.name}': checkpoint cursor is for {st['n_rows']} rows, "
                f"the dataset now has {len(self.rows)} (tokenized data changed since the checkpoint)"
            )
        self.epoch, self.pos = int(st["epoch"]), int(st["pos"])
        if "seed" in st:
            self.seed = int(st["seed"])


class MixtureSampler:
    """Deterministic batches with an exact domain share.

    ``next_batch()`` -> ``(rows [B, seq_len+1], n_domain)``: the first ``n_domain`` rows are domain rows,
    the rest general. ``state_dict()`` / ``load_state_dict()`` make it resumable.
    """

    def __init__(
        self, general: torch.Tensor | None, domain: torch.Tensor | None, ratio: float, batch_size: int, seed: int
    ):
        if not 0.0 <= ratio <= 1.0:
            raise DataError(f"mixture ratio {ratio!r} must be in [0, 1]")
        self.batch_size = int(batch_size)
        self.n_domain = n_domain_rows(ratio, self.batch_size)
        self.n_general = self.batch_size - self.n_domain
        if self.n_domain and domain is None:
            raise DataError(f"mixture ratio {ratio} needs a domain dataset")
        if self.n_general and general is None:
            raise DataError(f"mixture ratio {ratio} needs a general dataset")
        self.streams: dict[str, EpochStream] = {}
        if general is not None:
            self.streams["general"] = EpochStream(general, "general", seed)
        if domain is not None:
            self.streams["domain"] = EpochStream(domain, "domain", seed)
        self.batches_drawn = 0

    def next_indices(self) -> dict[str, np.ndarray]:
        out = {}
        if self.n_domain:
            out["domain"] = self.streams["domain"].take_indices(self.n_domain)
        if self.n_general:
            out["general"] = self.streams["general"].take_indices(self.n_general)
        self.batches_drawn += 1
        return out

    def next_batch(self) -> tuple[torch.Tensor, int]:
        import torch

        idx = self.next_indices()
        parts = []
        if "domain" in idx:
            parts.append(self.streams["domain"].rows[torch.from_numpy(idx["domain"])])
        if "general" in idx:
            parts.append(self.streams["general"].rows[torch.from_numpy(idx["general"])])
        return torch.cat(parts, 0), self.n_domain

    def state_dict(self) -> dict:
        return {"batches_drawn": self.batches_drawn, "streams": {k: s.state_dict() for k, s in self.streams.items()}}

    def load_state_dict(self, st: Mapping, only: tuple[str, ...] | None = None) -> None:
        """Restore cursors; ``only`` restores just those streams (a CPT run continuing the PT general stream)."""
        for k, sst in st["streams"].items():
            if k in self.streams and (only is None or k in only):
                self.streams[k].load_state_dict(sst)
        if only is None:
            self.batches_drawn = int(st["batches_drawn"])


def validation_rows(rows: torch.Tensor, eval_batches: int, batch_size: int) -> torch.Tensor:
    """The fixed validation set: the first ``eval_batches * batch_size`` rows (all rows if fewer)."""
    return rows[: eval_batches * batch_size]
