"""Collect the run outputs into the study tables: ``runs.parquet``, ``curves.parquet`` and ``lrs.parquet``
under ``results/tables`` (columns: ``cptlaws.study.columns``, docs/design.md)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cptlaws import io, schedules
from cptlaws.areas import DEFAULT_LAMBDA, compute_areas
from cptlaws.errors import InputError
from cptlaws.study.columns import CURVE_COLUMNS, LR_COLUMNS, RUN_COLUMNS

LR_RTOL = 1e-6
RUN_OUTPUT = "a run output: did the run finish?"


# ------------------------------------------------------------------------------------------ run config
def write_run_config(spec: Mapping | str, config_out: str | Path, row_out: str | Path) -> None:
    """Split a run spec {"train": ..., "row": ...} (the workflow's per-run param) into the training
    config (docs/design.md) and the run's table row; both written atomically."""
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise InputError(f"run spec is not valid JSON: {exc}") from None
    for key in ("train", "row"):
        if key not in spec:
            raise InputError(f"run spec: missing key '{key}'")
    io.write_json(config_out, spec["train"])
    io.write_json(row_out, spec["row"])


# -------------------------------------------------------------------------------------------- collect
def _schedule_history(row: Mapping, train: Mapping) -> np.ndarray:
    """Whole LR history (PT then CPT) implied by the run's schedules."""
    if row["phase"] == "pt":
        return schedules.lr_array(train["schedule"], int(train["steps"]))
    init = train["init"]
    return schedules.phase_lrs(
        init["pt_schedule"], int(init["pt_steps"]), int(init["transfer_step"]), train["schedule"], int(train["steps"])
    )


def _logged_lrs(run_dir: Path, expect_steps: int, first_step: int) -> np.ndarray:
    log = io.read_table(run_dir / "trainlog.parquet", ["step", "lr"], RUN_OUTPUT).sort_values("step")
    steps = log["step"].to_numpy()
    want = np.arange(first_step, first_step + expect_steps)
    if first_step > 1 and np.array_equal(steps, want - first_step + 1):
        steps = want  # a CPT log counted within its phase (1..steps): same rows, shifted
    if not np.array_equal(steps, want):
        raise InputError(
            f"{run_dir / 'trainlog.parquet'}: expected one row per update, steps {want[0]}..{want[-1]}, "
            f"got {len(steps)} rows ({steps[:1].tolist()}..{steps[-1:].tolist()})"
        )
    return log["lr"].to_numpy(dtype=np.float64)


def collect(
    run_dirs: Sequence[str | Path], out_dir: str | Path, lam: float = DEFAULT_LAMBDA
) -> dict[str, pd.DataFrame]:
    """Read every run's run.json / meta.json / config.json / curve.parquet / trainlog.parquet and write
    runs.parquet, curves.parquet and lrs.parquet (docs/design.md) to ``out_dir``."""
    rows_by_id = _read_run_files(run_dirs)
    histories: dict[str, np.ndarray] = {}
    runs, curve_parts, lr_parts = [], [], []
    for rid, (d, row, meta, _) in rows_by_id.items():
        lrs = _lr_history(rid, rows_by_id, histories)
        runs.append(_run_record(row, meta))
        curve_parts.append(_curve_part(d, rid, row, lrs, lam))
        lr_parts.append(pd.DataFrame({"run_id": rid, "step": np.arange(1, lrs.size + 1), "lr": lrs}))
    tables = {
        "runs": pd.DataFrame(runs, columns=RUN_COLUMNS),
        "curves": pd.concat(curve_parts, ignore_index=True)
        .sort_values(["run_id", "split", "step"], kind="stable")
        .reset_index(drop=True),
        "lrs": pd.concat(lr_parts, ignore_index=True),
    }
    out_dir = Path(out_dir)
    for name, df in tables.items():
        io.write_parquet(out_dir / f"{name}.parquet", df)
    return tables


def _read_run_files(run_dirs: Sequence[str | Path]) -> dict[str, tuple]:
    """{run_id: (dir, run.json, meta.json, config.json)} in the order given; InputError on a run whose id
    is not its directory's name or that is listed twice."""
    rows_by_id = {}
    for d in map(Path, run_dirs):
        row = io.read_json(d / "run.json", RUN_OUTPUT)
        meta = io.read_json(d / "meta.json", RUN_OUTPUT)
        train = io.read_json(d / "config.json", RUN_OUTPUT)
        rid = row.get("run_id")
        if rid != d.name:
            raise InputError(f"{d / 'run.json'}: run_id {rid!r} does not match the directory name {d.name!r}")
        if rid in rows_by_id:
            raise InputError(f"{d}: run {rid!r} listed twice")
        rows_by_id[rid] = (d, row, meta, train)
    return rows_by_id


def _lr_history(rid: str, rows_by_id: Mapping, histories: dict) -> np.ndarray:
    """A run's whole logged LR history (a CPT run: its parent's first T updates, then its own), checked
    against the schedules it declares; cached in ``histories``."""
    if rid in histories:
        return histories[rid]
    d, row, meta, train = rows_by_id[rid]
    expected = _schedule_history(row, train)
    if row["phase"] == "pt":
        full = _logged_lrs(d, int(train["steps"]), 1)
    else:
        parent = row["parent"]
        if parent not in rows_by_id:
            raise InputError(f"{d}: parent PT run {parent!r} of run {rid!r} is not among the collected runs")
        T = int(row["transfer_step"])
        own = _logged_lrs(d, int(train["steps"]), T + 1)
        full = np.concatenate([_lr_history(parent, rows_by_id, histories)[:T], own])
    # The fits use these LRs: a run that did not train with the schedule it declares is an error.
    bad = np.nonzero(~np.isclose(full, expected, rtol=LR_RTOL, atol=1e-12))[0]
    if bad.size:
        i = int(bad[0])
        raise InputError(
            f"{d / 'trainlog.parquet'}: run {rid!r}: logged LR {full[i]!r} at step {i + 1} differs from "
            f"the schedule's {expected[i]!r} (step convention: lrs[i] is the LR of update i+1)"
        )
    histories[rid] = full
    return full


def _run_record(row: Mapping, meta: Mapping) -> dict:
    """The run's runs.parquet row: its table row plus size, timing and status from meta.json."""
    rec = {c: row.get(c) for c in RUN_COLUMNS}
    for k in ("n_params", "n_nonembed", "wall_time_s", "tokens_per_s"):
        v = meta.get(k)
        rec[k] = float(v) if isinstance(v, (int, float)) else math.nan
    rec["status"] = str(meta.get("status", "unknown"))
    return rec


def _curve_part(d: Path, rid: str, row: Mapping, lrs: np.ndarray, lam: float) -> pd.DataFrame:
    """The run's validation rows of curve.parquet with the LR areas at each eval step (CURVE_COLUMNS)."""
    cur = io.read_table(d / "curve.parquet", ["step", "tokens", "lr", "split", "loss"], RUN_OUTPUT)
    cur = cur[cur["split"].astype(str) != "train"].copy()
    if cur.empty:
        raise InputError(f"{d / 'curve.parquet'}: run {rid!r} has no validation rows")
    steps = cur["step"].to_numpy(dtype=np.int64)
    if steps.max() > lrs.size or steps.min() < 0:
        raise InputError(f"{d / 'curve.parquet'}: run {rid!r}: eval step {int(steps.max())} outside 0..{lrs.size}")
    transfer = int(row["transfer_step"]) if row["phase"] == "cpt" else None
    pt_spec = json.loads(row["schedule_json"])
    areas = compute_areas(lrs, lam, transfer, int(pt_spec.get("warmup_steps", 0)), True).at(steps)
    cur["run_id"] = rid
    cur["phase"] = row["phase"]
    cur["cpt_step"] = steps - transfer if transfer is not None else 0
    for k in ("S1", "S2", "S1_pt", "S1_cpt", "S2_pt", "S2_cpt"):
        cur[k] = getattr(areas, k)
    return cur[CURVE_COLUMNS]


def read_tables(tables_dir: str | Path) -> dict[str, pd.DataFrame]:
    tables_dir = Path(tables_dir)
    out = {}
    for name, cols in (("runs", RUN_COLUMNS), ("curves", CURVE_COLUMNS), ("lrs", LR_COLUMNS)):
        out[name] = io.read_table(tables_dir / f"{name}.parquet", cols)
    return out
