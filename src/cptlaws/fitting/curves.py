"""Loss curves with their full LR history: the input of every schedule-aware fit.

Readers:
* ``load_curves(path, lr_path=None, schedules_yaml=None)`` -- anyone's curves: CSV/parquet with columns
  ``run`` (or ``run_id``), ``step``, ``loss`` (+ optional ``split``); the LR of every update comes from a
  dense per-step table (``run, step, lr`` with steps 1..T; may be the curves file itself) or from a YAML
  file of schedule specs (docs/fitting.md).
* ``curves_from_tables(curves_df, lrs_df, runs_df, split)`` -- the workflow tables of docs/design.md.

Steps are global update counts (docs/design.md): the loss at step t was measured after t updates and
``lrs[i]`` is the LR of update i+1. Error messages name the file, run and (1-based data) row.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cptlaws.errors import InputError, ScheduleError
from cptlaws.io import read_table
from cptlaws.schedules import lr_array, phase_lrs, validate


@dataclass
class Curve:
    run_id: str
    lrs: np.ndarray  # LR of updates 1..T (whole history, PT then CPT)
    steps: np.ndarray  # global eval steps (updates done), strictly increasing
    loss: np.ndarray
    transfer: int | None = None  # PT updates before the branch (None: pure PT run)
    ratio: float | None = None  # domain share r_cpt of the CPT batches
    n_params: float | None = None  # N, millions of non-embedding parameters
    warmup_steps: int = 0  # PT warm-up length (counted at peak by default in the areas)
    split: str = "general"
    source: str = ""

    def __post_init__(self):
        where = f"{self.source + ': ' if self.source else ''}run '{self.run_id}'"
        self.lrs = np.asarray(self.lrs, dtype=np.float64)
        self.steps = np.asarray(self.steps)
        self.loss = np.asarray(self.loss, dtype=np.float64)
        if self.steps.ndim != 1 or self.steps.shape != self.loss.shape:
            raise InputError(f"{where}: steps and loss must be 1-D arrays of equal length")
        if self.steps.size and not np.all(np.isfinite(self.steps.astype(float))):
            raise InputError(f"{where}: non-finite step")
        if self.steps.size and np.any(self.steps.astype(float) != np.round(self.steps.astype(float))):
            raise InputError(f"{where}: steps must be integers (updates done)")
        self.steps = self.steps.astype(np.int64)
        if self.lrs.ndim != 1 or not np.all(np.isfinite(self.lrs)) or np.any(self.lrs < 0):
            raise InputError(f"{where}: the LR history must be finite and >= 0")
        bad = np.nonzero(np.diff(self.steps) <= 0)[0]
        if bad.size:
            i = int(bad[0]) + 1
            raise InputError(
                f"{where}: steps not strictly increasing at point {i + 1} (step {self.steps[i - 1]} then {self.steps[i]})"
            )
        bad = np.nonzero(~np.isfinite(self.loss) | (self.loss <= 0))[0]
        if bad.size:
            i = int(bad[0])
            raise InputError(f"{where}: loss must be finite and > 0, got {self.loss[i]!r} at step {self.steps[i]}")
        if self.steps.size and (self.steps[0] < 0 or self.steps[-1] > self.lrs.size):
            raise InputError(
                f"{where}: eval step {int(self.steps[-1] if self.steps[-1] > self.lrs.size else self.steps[0])} "
                f"is outside the LR history (0..{self.lrs.size} updates)"
            )
        if self.transfer is not None:
            self.transfer = int(self.transfer)
            if not 0 < self.transfer <= self.lrs.size:
                raise InputError(f"{where}: transfer step {self.transfer} outside the LR history (1..{self.lrs.size})")
        self.warmup_steps = int(self.warmup_steps or 0)


# --------------------------------------------------------------------------------------------- files
def _run_col(df: pd.DataFrame, path) -> str:
    for c in ("run", "run_id"):
        if c in df.columns:
            return c
    raise InputError(f"{path}: missing column 'run' (or 'run_id'); columns are {list(df.columns)}")


def _need(df: pd.DataFrame, cols, path) -> None:
    miss = [c for c in cols if c not in df.columns]
    if miss:
        raise InputError(f"{path}: missing column(s) {miss}; columns are {list(df.columns)}")


def _check_numeric(df: pd.DataFrame, col: str, path) -> np.ndarray:
    vals = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
    raw_na = df[col].isna().to_numpy()
    bad = np.nonzero(np.isnan(vals) & ~raw_na)[0]
    if bad.size:
        i = int(bad[0])
        raise InputError(f"{path}: row {i + 1}: column '{col}' is not a number ({df[col].iloc[i]!r})")
    return vals


def dense_lrs(df: pd.DataFrame, path, run_col: str) -> dict[str, np.ndarray]:
    """Per-run LR arrays from a dense per-step table (steps 1..T, one row per update)."""
    _need(df, ["step", "lr"], path)
    out = {}
    steps = _check_numeric(df, "step", path)
    lr = _check_numeric(df, "lr", path)
    for run, idx in df.groupby(run_col, sort=False).indices.items():
        s, v = steps[idx], lr[idx]
        order = np.argsort(s, kind="stable")
        s, v = s[order], v[order]
        if s.size and s[0] == 0:  # a step-0 row (init) carries no update
            s, v = s[1:], v[1:]
        expect = np.arange(1, s.size + 1)
        if s.size == 0 or not np.array_equal(s, expect):
            j = int(np.nonzero(s != expect)[0][0]) if s.size else 0
            row = int(idx[order[j]]) + 1 if s.size else 0
            raise InputError(
                f"{path}: run '{run}': the LR table must have one row per update, steps 1..T "
                f"(row {row}: step {s[j] if s.size else None}, expected {j + 1})"
            )
        bad = np.nonzero(~np.isfinite(v) | (v < 0))[0]
        if bad.size:
            row = int(idx[order[bad[0]]]) + 1
            raise InputError(f"{path}: run '{run}' row {row}: lr must be finite and >= 0, got {v[bad[0]]!r}")
        out[str(run)] = v
    return out


def infer_warmup(lrs: np.ndarray) -> int:
    """Length of the initial linear warm-up: updates until the LR first stops rising (0 if none)."""
    if lrs.size < 2 or lrs[1] <= lrs[0] or lrs[0] > 0.5 * lrs.max():
        return 0
    d = np.diff(lrs)
    stop = np.nonzero(d <= 0)[0]
    return int(stop[0] + 1) if stop.size else int(lrs.size)


# ------------------------------------------------------------------------------------ schedule YAML
def load_schedules(path: str | Path) -> dict[str, dict]:
    """Run entries from a schedules YAML: ``runs: {name: entry}`` with optional ``defaults:``."""
    import yaml

    from cptlaws.schema import load_yaml

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        doc = load_yaml(path.read_text())  # a key written twice is an error
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: invalid YAML ({exc})") from exc
    if not isinstance(doc, Mapping):
        raise InputError(f"{path}: must be a mapping with a 'runs' key")
    runs = doc.get("runs", doc)
    defaults = doc.get("defaults", {}) if "runs" in doc else {}
    if not isinstance(runs, Mapping) or not runs:
        raise InputError(f"{path}: 'runs' must be a non-empty mapping run -> schedule entry")
    out = {}
    for name, entry in runs.items():
        if not isinstance(entry, Mapping):
            raise InputError(f"{path}: run '{name}': entry must be a mapping, got {entry!r}")
        merged = {**defaults, **entry}
        out[str(name)] = merged
    return out


_ENTRY_KEYS = {"schedule", "steps", "pt_schedule", "pt_steps", "transfer", "ratio", "n_params", "warmup_steps"}


def entry_history(entry: Mapping[str, Any], where: str) -> dict[str, Any]:
    """LR history and curve attributes of one schedules-YAML run entry.

    PT run: ``schedule`` + ``steps``. CPT run: ``pt_schedule`` + ``pt_steps`` + ``transfer`` (PT updates
    before the branch) + ``schedule`` (the CPT spec) + ``steps`` (CPT updates).
    """
    unknown = sorted(set(entry) - _ENTRY_KEYS)
    if unknown:
        raise InputError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(sorted(_ENTRY_KEYS))})")
    for k in ("schedule", "steps"):
        if k not in entry:
            raise InputError(f"{where}: missing key '{k}'")
    try:
        if "pt_schedule" in entry or "transfer" in entry:
            for k in ("pt_schedule", "pt_steps", "transfer"):
                if k not in entry:
                    raise InputError(f"{where}: CPT entry missing key '{k}'")
            lrs = phase_lrs(
                entry["pt_schedule"],
                int(entry["pt_steps"]),
                int(entry["transfer"]),
                entry["schedule"],
                int(entry["steps"]),
            )
            transfer = int(entry["transfer"])
            warm = validate(entry["pt_schedule"]).get("warmup_steps", 0)
        else:
            lrs = lr_array(entry["schedule"], int(entry["steps"]))
            transfer = None
            warm = validate(entry["schedule"]).get("warmup_steps", 0)
    except ScheduleError as exc:
        raise InputError(f"{where}: {exc}") from exc
    except (TypeError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{where}: {exc}") from exc
    return {
        "lrs": lrs,
        "transfer": transfer,
        "warmup_steps": int(entry.get("warmup_steps", warm)),
        "ratio": None if entry.get("ratio") is None else float(entry["ratio"]),
        "n_params": None if entry.get("n_params") is None else float(entry["n_params"]),
    }


# --------------------------------------------------------------------------------------------- load
def _steps_and_losses(df: pd.DataFrame, rc: str, path) -> tuple[np.ndarray, np.ndarray]:
    """The step and loss columns as floats: steps present and whole, losses finite and > 0."""
    step = _check_numeric(df, "step", path)
    loss = _check_numeric(df, "loss", path)
    bad = np.nonzero(np.isnan(step))[0]
    if bad.size:
        raise InputError(f"{path}: row {int(bad[0]) + 1}: step is missing")
    bad = np.nonzero(step != np.round(step))[0]
    if bad.size:  # a step counts optimizer updates: 150.5 is a malformed file, not step 150
        i = int(bad[0])
        raise InputError(
            f"{path}: row {i + 1} (run '{df[rc].iloc[i]}'): step must be a whole number of updates, got {step[i]:g}"
        )
    bad = np.nonzero(~np.isfinite(loss) | (loss <= 0))[0]
    if bad.size:
        i = int(bad[0])
        raise InputError(
            f"{path}: row {i + 1} (run '{df[rc].iloc[i]}', step {step[i]:g}): loss must be finite and > 0, got {loss[i]:g}"
        )
    return step, loss


def _selected_rows(df: pd.DataFrame, rc: str, path, split: str | None, runs) -> tuple[np.ndarray, np.ndarray]:
    """(mask of the rows kept by ``split`` and ``runs``, run name of every row)."""
    keep = np.ones(len(df), bool)
    if "split" in df.columns and split is not None:
        keep = (df["split"].astype(str) == split).to_numpy()
        if not keep.any():
            raise InputError(
                f"{path}: no rows with split '{split}' (splits: {sorted(df['split'].astype(str).unique())})"
            )
    names = df[rc].astype(str).to_numpy()
    if runs is not None:
        missing = sorted(set(runs) - set(names[keep]))
        if missing:
            raise InputError(f"{path}: run(s) {missing} not found (runs: {sorted(set(names))})")
        keep = keep & np.isin(names, list(runs))  # pandas 3 hands out read-only arrays
    return keep, names


def _dense_histories(df: pd.DataFrame, path, run_col: str) -> dict[str, dict]:
    """Run -> history (``entry_history``'s keys) from a dense per-step LR table; warm-up inferred."""
    return {
        run: {"lrs": v, "transfer": None, "warmup_steps": infer_warmup(v), "ratio": None, "n_params": None}
        for run, v in dense_lrs(df, path, run_col).items()
    }


def _histories(df: pd.DataFrame, path, rc: str, lr_path, schedules_yaml, wanted: set[str]) -> dict[str, dict]:
    """Run -> LR history and curve attributes, from the LR table, the schedules YAML (runs in ``wanted``)
    or the curves file's own dense ``lr`` column, in that order of preference."""
    if lr_path is not None:
        ldf = read_table(lr_path)
        return _dense_histories(ldf, lr_path, _run_col(ldf, lr_path))
    if schedules_yaml is not None:
        return {
            run: entry_history(entry, f"{schedules_yaml}: run '{run}'")
            for run, entry in load_schedules(schedules_yaml).items()
            if run in wanted
        }
    if "lr" in df.columns:
        try:
            return _dense_histories(df, path, rc)
        except InputError as exc:
            raise InputError(
                f"{exc}; the 'lr' column of a curves file is only used when it is dense, otherwise give an LR table or a schedules YAML"
            ) from exc
    raise InputError(f"{path}: no LR source: give a dense per-step LR table or a schedules YAML")


def _run_steps(path, run: str, rows: np.ndarray, step: np.ndarray, n_updates: int) -> np.ndarray:
    """The eval steps of one curve: strictly increasing and within the LR history."""
    s = step[rows]
    d = np.nonzero(np.diff(s) <= 0)[0]
    if d.size:
        r = int(rows[d[0] + 1]) + 1
        raise InputError(
            f"{path}: run '{run}' row {r}: steps not strictly increasing ({s[d[0]]:g} then {s[d[0] + 1]:g})"
        )
    beyond = np.nonzero(s > n_updates)[0]
    if beyond.size:
        r = int(rows[beyond[0]]) + 1
        raise InputError(
            f"{path}: run '{run}' row {r}: eval step {s[beyond[0]]:g} is beyond the LR history ({n_updates} updates)"
        )
    return s


def load_curves(
    path: str | Path,
    lr_path: str | Path | None = None,
    schedules_yaml: str | Path | None = None,
    *,
    split: str | None = None,
    runs: list[str] | None = None,
    warmup_steps: int | None = None,
    ratios: Mapping[str, float] | None = None,
    n_params: Mapping[str, float] | None = None,
) -> list[Curve]:
    """Curves of a CSV/parquet file; one Curve per (run, split). See the module docstring.

    ``split`` keeps one validation set; ``runs`` keeps (and requires) the named runs.
    ``warmup_steps`` overrides the warm-up length (default: the schedule's, or inferred from a dense
    LR table). ``ratios`` / ``n_params`` give per-run r_cpt / N when the schedule source lacks them.
    """
    df = read_table(path)
    rc = _run_col(df, path)
    _need(df, ["step", "loss"], path)
    df = df.reset_index(drop=True)
    step, loss = _steps_and_losses(df, rc, path)
    keep, names = _selected_rows(df, rc, path, split, runs)
    histories = _histories(df, path, rc, lr_path, schedules_yaml, set(names[keep]))
    curves = []
    sub = df[keep]
    groups = [sub[rc].astype(str)] + ([sub["split"].astype(str)] if "split" in sub.columns else [])
    for key, idx in sub.groupby(groups, sort=False).indices.items():
        key = key if isinstance(key, tuple) else (key,)
        run = str(key[0])
        rows = sub.index.to_numpy()[idx]
        if run not in histories:
            src = lr_path or schedules_yaml or path
            raise InputError(f"{path}: row {int(rows[0]) + 1}: run '{run}' has no schedule / LR history in {src}")
        h = histories[run]
        curves.append(
            Curve(
                run_id=run,
                lrs=h["lrs"],
                steps=_run_steps(path, run, rows, step, h["lrs"].size).astype(np.int64),
                loss=loss[rows],
                transfer=h["transfer"],
                ratio=(ratios or {}).get(run, h["ratio"]),
                n_params=(n_params or {}).get(run, h["n_params"]),
                warmup_steps=h["warmup_steps"] if warmup_steps is None else warmup_steps,
                split=str(key[1]) if len(key) > 1 else (split or "general"),
                source=str(path),
            )
        )
    if not curves:
        raise InputError(f"{path}: no curve rows selected")
    return curves


def _spec(v) -> dict:
    if isinstance(v, str):
        return json.loads(v) if v.strip() else {}
    return dict(v) if isinstance(v, Mapping) else {}


def curves_from_tables(curves_df: pd.DataFrame, lrs_df: pd.DataFrame, runs_df: pd.DataFrame, split: str) -> list[Curve]:
    """Curves of one validation set from the workflow tables (curves / lrs / runs .parquet)."""
    for name, df, cols in (
        ("curves.parquet", curves_df, ["run_id", "step", "split", "loss"]),
        ("lrs.parquet", lrs_df, ["run_id", "step", "lr"]),
        ("runs.parquet", runs_df, ["run_id", "phase"]),
    ):
        _need(df, cols, name)
    sub = curves_df[curves_df["split"].astype(str) == split]
    if sub.empty:
        raise InputError(f"curves.parquet: no rows with split '{split}'")
    runs = runs_df.set_index("run_id")
    lr_by_run = {str(r): g.sort_values("step") for r, g in lrs_df.groupby("run_id", sort=False)}

    def history(run: str) -> np.ndarray:
        if run not in lr_by_run:
            raise InputError(f"lrs.parquet: run '{run}' has no LR history")
        g = lr_by_run[run]
        s = g["step"].to_numpy()
        v = g["lr"].to_numpy(dtype=np.float64)
        if s.size and s[0] > 1:  # CPT table holding only its own phase: prepend the parent's PT part
            parent = str(runs.loc[run].get("parent", "") or "")
            if not parent:
                raise InputError(f"lrs.parquet: run '{run}' starts at step {s[0]} and has no parent run")
            v = np.concatenate([history(parent)[: s[0] - 1], v])
            s = np.arange(1, v.size + 1)
        if not np.array_equal(s, np.arange(1, s.size + 1)):
            raise InputError(f"lrs.parquet: run '{run}': steps must be 1..T with one row per update")
        return v

    out = []
    for run, g in sub.groupby("run_id", sort=False):
        run = str(run)
        if run not in runs.index:
            raise InputError(f"runs.parquet: run '{run}' (in curves.parquet) is missing")
        meta = runs.loc[run]
        g = g.sort_values("step")
        cpt = str(meta["phase"]) == "cpt"
        transfer = int(meta["transfer_step"]) if cpt else None
        spec = _spec(meta.get("schedule_json", "{}"))
        nn = meta.get("n_nonembed", np.nan)
        out.append(
            Curve(
                run_id=run,
                lrs=history(run),
                steps=g["step"].to_numpy(),
                loss=g["loss"].to_numpy(dtype=np.float64),
                transfer=transfer,
                ratio=float(meta.get("ratio", 0.0) or 0.0) if cpt else 0.0,
                n_params=float(nn) / 1e6 if pd.notna(nn) else None,
                warmup_steps=int(spec.get("warmup_steps", 0)),
                split=split,
                source="curves.parquet",
            )
        )
    return out
