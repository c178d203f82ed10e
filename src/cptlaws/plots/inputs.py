"""Read and check the study outputs the figures are drawn from (formats: docs/design.md, docs/figures.md).

Every input except the tables is optional: a figure whose inputs are absent is skipped with a logged
note. An input that is present but malformed (missing column, NaN loss, run not in runs.parquet) raises
``InputError`` naming the file, the column and the run/row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cptlaws.errors import InputError
from cptlaws.io import read_json
from cptlaws.io import read_table as read_table_checked
from cptlaws.study.columns import CURVE_COLUMNS, LR_COLUMNS, METRICS, PRED_COLUMNS, RUN_COLUMNS

log = logging.getLogger("cptlaws.plots")

FIT_KEYS = ("law", "split", "params")
HELDOUT_COLS = ("run_id",)  # plus at least one metric column


def _check_finite(df: pd.DataFrame, col: str, path) -> None:
    vals = pd.to_numeric(df[col], errors="coerce").to_numpy(np.float64)
    bad = np.flatnonzero(~np.isfinite(vals))
    if bad.size:
        i = int(bad[0])
        rid = df["run_id"].iloc[i] if "run_id" in df.columns else "?"
        raise InputError(f"{path}: column {col!r} row {i} (run {rid!r}) is not a finite number: {df[col].iloc[i]!r}")


def read_table(path: Path, cols, finite=()) -> pd.DataFrame:
    df = read_table_checked(path, cols)
    for c in finite:
        _check_finite(df, c, path)
    df["run_id"] = df["run_id"].astype(str)
    return df


@dataclass
class StudyOutputs:
    """Everything a figure may draw from; ``None`` / empty = not available."""

    runs: pd.DataFrame | None = None
    curves: pd.DataFrame | None = None
    lrs: pd.DataFrame | None = None
    fits: list[dict] = field(default_factory=list)
    predictions: pd.DataFrame | None = None  # held-out predictions (checks/); fig. 4
    fit_predictions: pd.DataFrame | None = None  # in-sample predictions of the study fits (fits/)
    heldout: pd.DataFrame | None = None
    cmr: list[dict] = field(default_factory=list)

    def cpt_runs(self) -> pd.DataFrame:
        return self.runs[self.runs["phase"] == "cpt"]

    def domains(self) -> list[str]:
        if self.runs is None:
            return []
        return sorted(d for d in self.runs["domain"].astype(str).unique() if d)

    def fits_for(self, split: str, run_id: str | None = None, laws=None) -> list[dict]:
        """Fits of validation set ``split`` whose fitted or held-out runs include ``run_id``."""
        out = []
        for f in self.fits:
            if f["split"] != split or (laws and f["law"] not in laws):
                continue
            if run_id is None or run_id in fit_scope(f):
                out.append(f)
        return out


def fit_scope(fit: dict) -> set[str]:
    """Runs a fit speaks for: those it was fitted on plus those it was checked on."""
    scope = set(map(str, fit.get("fit_runs") or []))
    heldout = fit.get("heldout") or {}
    scope |= set(map(str, (heldout.get("per_run") or {}).keys()))
    scope |= set(map(str, fit.get("predict_runs") or []))
    return scope


def _read_json(path: Path) -> dict:
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a JSON object")
    return obj


def _predictions(d: Path) -> pd.DataFrame | None:
    """Every predictions table (columns of docs/design.md) in ``d``, with its file stem as ``source``."""
    out = []
    for p in sorted(d.glob("*.parquet")):
        try:
            cols = pq_columns(p)
        except Exception as exc:  # corrupt parquet
            raise InputError(f"{p}: cannot read parquet ({exc})") from None
        if {"pred", "loss"} <= set(cols):  # other parquet files (params, heldout, CMR) are not predictions
            df = read_table(p, PRED_COLUMNS, finite=("step", "loss"))
            df["split"] = df["split"].astype(str)
            df = df[np.isfinite(df["pred"].to_numpy(dtype=float))]  # step 0: the law is undefined there
            df["source"] = p.stem
            out.append(df)
    return pd.concat(out, ignore_index=True) if out else None


def pq_columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return list(pq.read_schema(path).names)


def load_fit(path: Path, obj: dict | None = None) -> dict:
    """A FitResult JSON (FitResult.to_dict() plus the workflow's group keys), checked."""
    obj = _read_json(path) if obj is None else obj
    missing = [k for k in FIT_KEYS if k not in obj]
    if missing:
        raise InputError(f"{path}: fit JSON misses key(s) {', '.join(missing)}")
    if not isinstance(obj["params"], dict) or not obj["params"]:
        raise InputError(f"{path}: key 'params' must be a non-empty object")
    for k, v in obj["params"].items():
        if not isinstance(v, (int, float)) or not np.isfinite(v):
            raise InputError(f"{path}: params.{k} = {v!r} is not a finite number")
    obj["split"] = str(obj["split"])
    obj["_path"] = str(path)
    return obj


def is_cmr(obj: dict) -> bool:
    """A cmr_from_curves result (as the workflow writes it) rather than a law fit."""
    return obj.get("analysis") == "cmr" or ("cmr" in obj and "loss_vs_ratio" in obj)


def load_outputs(
    tables: str | Path | None, fits: str | Path | None = None, checks: str | Path | None = None
) -> StudyOutputs:
    """Read whatever of the study outputs exists; validate what is read."""
    st = StudyOutputs()
    if tables:
        tables = Path(tables)
        p = tables / "runs.parquet"
        if p.exists():
            st.runs = read_table(p, RUN_COLUMNS)
            for c in ("domain", "parent", "pt_schedule", "cpt_schedule"):
                st.runs[c] = st.runs[c].fillna("").astype(str)
            dup = st.runs["run_id"][st.runs["run_id"].duplicated()]
            if len(dup):
                raise InputError(f"{p}: run_id {dup.iloc[0]!r} appears more than once")
        else:
            log.info("no %s: figures that need the run table are skipped", p)
        p = tables / "curves.parquet"
        if p.exists():
            st.curves = read_table(p, CURVE_COLUMNS, finite=("step", "loss"))
            st.curves["split"] = st.curves["split"].astype(str)
            _check_known_runs(st.curves, st.runs, p)
        p = tables / "lrs.parquet"
        if p.exists():
            st.lrs = read_table(p, LR_COLUMNS, finite=("step", "lr"))
            _check_known_runs(st.lrs, st.runs, p)
    if fits:
        fits = Path(fits)
        if fits.is_dir():
            for p in sorted(fits.glob("*.json")):  # top level only: summary/ holds per-analysis digests
                obj = _read_json(p)
                if is_cmr(obj):
                    obj["_path"] = str(p)
                    st.cmr.append(obj)
                elif "law" in obj or "params" in obj:
                    st.fits.append(load_fit(p, obj))
            st.fit_predictions = _predictions(fits)
        else:
            log.info("no directory %s: figures that need fits are skipped", fits)
    if checks:
        checks = Path(checks)
        if checks.is_dir():
            st.predictions = _predictions(checks)
        else:
            log.info("no directory %s: figures that need held-out checks are skipped", checks)
    if checks:
        p = Path(checks) / "heldout.parquet"
        if p.exists():
            df = read_table(p, HELDOUT_COLS)
            if not any(m in df.columns for m in METRICS):
                raise InputError(f"{p}: no metric column (expected some of {', '.join(METRICS)})")
            st.heldout = df
    return st


def _check_known_runs(df: pd.DataFrame, runs: pd.DataFrame | None, path) -> None:
    if runs is None:
        return
    unknown = sorted(set(df["run_id"]) - set(runs["run_id"]))
    if unknown:
        raise InputError(f"{path}: run {unknown[0]!r} is not in runs.parquet ({len(unknown)} unknown run(s))")
