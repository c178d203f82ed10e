"""Read and check the study outputs the figures are drawn from (formats: docs/design.md, docs/figures.md).

Every input except the tables is optional: a figure whose inputs are absent is skipped with a logged
note. An input that is present but malformed (missing column, NaN loss, run not in runs.parquet) raises
``PlotInputError`` naming the file, the column and the run/row.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("cptlaws.plots")

RUNS_COLS = ("run_id", "phase", "parent", "domain", "ratio", "pt_schedule", "cpt_schedule", "peak_lr",
             "cpt_peak_lr", "transfer_step", "loss_potential", "steps", "total_steps", "schedule_json")
CURVES_COLS = ("run_id", "phase", "step", "tokens", "lr", "split", "loss", "S1", "S2", "S1_pt", "S1_cpt",
               "S2_pt", "S2_cpt")
LRS_COLS = ("run_id", "step", "lr")
PRED_COLS = ("run_id", "step", "split", "loss", "pred", "pred_lo", "pred_hi")
FIT_KEYS = ("law", "split", "params")
METRICS = ("mae", "rmse", "r2", "mean_rel", "worst_rel", "huber")
HELDOUT_COLS = ("run_id",)  # plus at least one metric column


class PlotInputError(ValueError):
    """Malformed figure input; the message names the file and the column / key / run."""


def check_columns(df: pd.DataFrame, cols, path) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise PlotInputError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(map(str, df.columns))})")


def _check_finite(df: pd.DataFrame, col: str, path) -> None:
    vals = pd.to_numeric(df[col], errors="coerce").to_numpy(np.float64)
    bad = np.flatnonzero(~np.isfinite(vals))
    if bad.size:
        i = int(bad[0])
        rid = df["run_id"].iloc[i] if "run_id" in df.columns else "?"
        raise PlotInputError(f"{path}: column {col!r} row {i} (run {rid!r}) is not a finite number: {df[col].iloc[i]!r}")


def read_table(path: Path, cols, finite=()) -> pd.DataFrame:
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise PlotInputError(f"{path}: cannot read parquet ({exc})") from None
    check_columns(df, cols, path)
    for c in finite:
        _check_finite(df, c, path)
    df["run_id"] = df["run_id"].astype(str)
    return df


@dataclass
class Study:
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
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PlotInputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise PlotInputError(f"{path}: expected a JSON object")
    return obj


def _predictions(d: Path) -> pd.DataFrame | None:
    """Every predictions table (columns of docs/design.md) in ``d``, with its file stem as ``source``."""
    out = []
    for p in sorted(d.glob("*.parquet")):
        try:
            cols = pq_columns(p)
        except Exception as exc:  # corrupt parquet
            raise PlotInputError(f"{p}: cannot read parquet ({exc})") from None
        if {"pred", "loss"} <= set(cols):  # other parquet files (params, heldout, CMR) are not predictions
            df = read_table(p, PRED_COLS, finite=("step", "loss"))
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
        raise PlotInputError(f"{path}: fit JSON misses key(s) {', '.join(missing)}")
    if not isinstance(obj["params"], dict) or not obj["params"]:
        raise PlotInputError(f"{path}: key 'params' must be a non-empty object")
    for k, v in obj["params"].items():
        if not isinstance(v, (int, float)) or not np.isfinite(v):
            raise PlotInputError(f"{path}: params.{k} = {v!r} is not a finite number")
    obj["split"] = str(obj["split"])
    obj["_path"] = str(path)
    return obj


def is_cmr(obj: dict) -> bool:
    """A cmr_from_curves result (as the workflow writes it) rather than a law fit."""
    return obj.get("analysis") == "cmr" or ("cmr" in obj and "loss_vs_ratio" in obj)


def load_study(tables: str | Path | None, fits: str | Path | None = None, checks: str | Path | None = None) -> Study:
    """Read whatever of the study outputs exists; validate what is read."""
    st = Study()
    if tables:
        tables = Path(tables)
        p = tables / "runs.parquet"
        if p.exists():
            st.runs = read_table(p, RUNS_COLS)
            for c in ("domain", "parent", "pt_schedule", "cpt_schedule"):
                st.runs[c] = st.runs[c].fillna("").astype(str)
            dup = st.runs["run_id"][st.runs["run_id"].duplicated()]
            if len(dup):
                raise PlotInputError(f"{p}: run_id {dup.iloc[0]!r} appears more than once")
        else:
            log.info("no %s: figures that need the run table are skipped", p)
        p = tables / "curves.parquet"
        if p.exists():
            st.curves = read_table(p, CURVES_COLS, finite=("step", "loss"))
            st.curves["split"] = st.curves["split"].astype(str)
            _check_known_runs(st.curves, st.runs, p)
        p = tables / "lrs.parquet"
        if p.exists():
            st.lrs = read_table(p, LRS_COLS, finite=("step", "lr"))
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
                raise PlotInputError(f"{p}: no metric column (expected some of {', '.join(METRICS)})")
            st.heldout = df
    return st


def _check_known_runs(df: pd.DataFrame, runs: pd.DataFrame | None, path) -> None:
    if runs is None:
        return
    unknown = sorted(set(df["run_id"]) - set(runs["run_id"]))
    if unknown:
        raise PlotInputError(f"{path}: run {unknown[0]!r} is not in runs.parquet ({len(unknown)} unknown run(s))")
