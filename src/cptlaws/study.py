"""Study-level steps run by the workflow: collect the run outputs into tables, fit the laws across the
study, and run the held-out checks declared in the config.

Tables (docs/design.md): ``runs.parquet``, ``curves.parquet``, ``lrs.parquet`` under ``results/tables``.
Fits: ``results/fits/{cpt,replay,cmr}.json`` + parquet. Checks: ``results/checks/heldout.{parquet,md}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cptlaws import io, schedules
from cptlaws.areas import DEFAULT_LAMBDA, compute_areas

RUN_COLUMNS = [
    "run_id", "phase", "parent", "model", "n_params", "n_nonembed", "domain", "ratio", "pt_schedule",
    "cpt_schedule", "peak_lr", "cpt_peak_lr", "transfer_step", "loss_potential", "steps", "total_steps",
    "seed", "batch_size", "seq_len", "status", "wall_time_s", "tokens_per_s", "schedule_json",
    "cpt_schedule_json",
]  # fmt: skip
CURVE_COLUMNS = [
    "run_id", "phase", "step", "cpt_step", "tokens", "lr", "split", "loss",
    "S1", "S2", "S1_pt", "S1_cpt", "S2_pt", "S2_cpt",
]  # fmt: skip
LR_RTOL = 1e-6


class StudyError(ValueError):
    """Bad or inconsistent run outputs / tables; the message names the file, run and key."""


# ------------------------------------------------------------------------------------------ run config
def write_run_config(spec: Mapping | str, config_out: str | Path, row_out: str | Path) -> None:
    """Split a run spec {"train": ..., "row": ...} (the workflow's per-run param) into the training
    config (docs/design.md) and the run's table row; both written atomically."""
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise StudyError(f"run spec is not valid JSON: {exc}") from None
    for key in ("train", "row"):
        if key not in spec:
            raise StudyError(f"run spec: missing key '{key}'")
    io.write_json(config_out, spec["train"])
    io.write_json(row_out, spec["row"])


# -------------------------------------------------------------------------------------------- collect
def _read_json(path: Path) -> dict:
    if not path.exists():
        raise StudyError(f"{path}: missing (did the run finish?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise StudyError(f"{path}: invalid JSON ({exc})") from None


def _read_parquet(path: Path, cols: Sequence[str]) -> pd.DataFrame:
    if not path.exists():
        raise StudyError(f"{path}: missing (did the run finish?)")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - any reader error: name the file
        raise StudyError(f"{path}: cannot read parquet ({exc})") from None
    miss = [c for c in cols if c not in df.columns]
    if miss:
        raise StudyError(f"{path}: missing column(s) {miss}; columns are {list(df.columns)}")
    return df


def _schedule_history(row: Mapping, train: Mapping) -> np.ndarray:
    """Whole LR history (PT then CPT) implied by the run's schedules."""
    if row["phase"] == "pt":
        return schedules.lr_array(train["schedule"], int(train["steps"]))
    init = train["init"]
    return schedules.phase_lrs(init["pt_schedule"], int(init["pt_steps"]), int(init["transfer_step"]), train["schedule"], int(train["steps"]))


def _logged_lrs(run_dir: Path, expect_steps: int, first_step: int) -> np.ndarray:
    log = _read_parquet(run_dir / "trainlog.parquet", ["step", "lr"]).sort_values("step")
    steps = log["step"].to_numpy()
    want = np.arange(first_step, first_step + expect_steps)
    if first_step > 1 and np.array_equal(steps, want - first_step + 1):
        steps = want  # a CPT log counted within its phase (1..steps): same rows, shifted
    if not np.array_equal(steps, want):
        raise StudyError(
            f"{run_dir / 'trainlog.parquet'}: expected one row per update, steps {want[0]}..{want[-1]}, "
            f"got {len(steps)} rows ({steps[:1].tolist()}..{steps[-1:].tolist()})"
        )
    return log["lr"].to_numpy(dtype=np.float64)


def collect(run_dirs: Sequence[str | Path], out_dir: str | Path, lam: float = DEFAULT_LAMBDA) -> dict[str, pd.DataFrame]:
    """Read every run's run.json / meta.json / config.json / curve.parquet / trainlog.parquet and write
    runs.parquet, curves.parquet and lrs.parquet (docs/design.md) to ``out_dir``."""
    runs, rows_by_id = [], {}
    for d in map(Path, run_dirs):
        row = _read_json(d / "run.json")
        meta = _read_json(d / "meta.json")
        train = _read_json(d / "config.json")
        rid = row.get("run_id")
        if rid != d.name:
            raise StudyError(f"{d / 'run.json'}: run_id {rid!r} does not match the directory name {d.name!r}")
        if rid in rows_by_id:
            raise StudyError(f"{d}: run {rid!r} listed twice")
        rows_by_id[rid] = (d, row, meta, train)

    histories: dict[str, np.ndarray] = {}

    def history(rid: str) -> np.ndarray:
        if rid in histories:
            return histories[rid]
        d, row, meta, train = rows_by_id[rid]
        expected = _schedule_history(row, train)
        if row["phase"] == "pt":
            own = _logged_lrs(d, int(train["steps"]), 1)
            full = own
        else:
            parent = row["parent"]
            if parent not in rows_by_id:
                raise StudyError(f"{d}: parent PT run {parent!r} of run {rid!r} is not among the collected runs")
            T = int(row["transfer_step"])
            own = _logged_lrs(d, int(train["steps"]), T + 1)
            full = np.concatenate([history(parent)[:T], own])
        # The fits use these LRs: a run that did not train with the schedule it declares is an error.
        bad = np.nonzero(~np.isclose(full, expected, rtol=LR_RTOL, atol=1e-12))[0]
        if bad.size:
            i = int(bad[0])
            raise StudyError(
                f"{d / 'trainlog.parquet'}: run {rid!r}: logged LR {full[i]!r} at step {i + 1} differs from "
                f"the schedule's {expected[i]!r} (step convention: lrs[i] is the LR of update i+1)"
            )
        histories[rid] = full
        return full

    curve_parts, lr_parts = [], []
    for rid, (d, row, meta, train) in rows_by_id.items():
        lrs = history(rid)
        rec = {c: row.get(c) for c in RUN_COLUMNS}
        for k in ("n_params", "n_nonembed", "wall_time_s", "tokens_per_s"):
            v = meta.get(k)
            rec[k] = float(v) if isinstance(v, (int, float)) else math.nan
        rec["status"] = str(meta.get("status", "unknown"))
        runs.append(rec)

        cur = _read_parquet(d / "curve.parquet", ["step", "tokens", "lr", "split", "loss"])
        cur = cur[cur["split"].astype(str) != "train"].copy()
        if cur.empty:
            raise StudyError(f"{d / 'curve.parquet'}: run {rid!r} has no validation rows")
        steps = cur["step"].to_numpy(dtype=np.int64)
        if steps.max() > lrs.size or steps.min() < 0:
            raise StudyError(f"{d / 'curve.parquet'}: run {rid!r}: eval step {int(steps.max())} outside 0..{lrs.size}")
        transfer = int(row["transfer_step"]) if row["phase"] == "cpt" else None
        pt_spec = json.loads(row["schedule_json"])
        areas = compute_areas(lrs, lam, transfer, int(pt_spec.get("warmup_steps", 0)), True).at(steps)
        cur["run_id"] = rid
        cur["phase"] = row["phase"]
        cur["cpt_step"] = steps - transfer if transfer is not None else 0
        for k in ("S1", "S2", "S1_pt", "S1_cpt", "S2_pt", "S2_cpt"):
            cur[k] = getattr(areas, k)
        curve_parts.append(cur[CURVE_COLUMNS])
        lr_parts.append(pd.DataFrame({"run_id": rid, "step": np.arange(1, lrs.size + 1), "lr": lrs}))

    tables = {
        "runs": pd.DataFrame(runs, columns=RUN_COLUMNS),
        "curves": pd.concat(curve_parts, ignore_index=True).sort_values(["run_id", "split", "step"], kind="stable").reset_index(drop=True),
        "lrs": pd.concat(lr_parts, ignore_index=True),
    }
    out_dir = Path(out_dir)
    for name, df in tables.items():
        io.write_parquet(out_dir / f"{name}.parquet", df)
    return tables


def read_tables(tables_dir: str | Path) -> dict[str, pd.DataFrame]:
    tables_dir = Path(tables_dir)
    out = {}
    for name, cols in (("runs", RUN_COLUMNS), ("curves", CURVE_COLUMNS), ("lrs", ["run_id", "step", "lr"])):
        out[name] = _read_parquet(tables_dir / f"{name}.parquet", cols)
    return out


# ----------------------------------------------------------------------------------------- selection
def _canon(v) -> str:
    from cptlaws.config import canonical_number

    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
        return canonical_number(float(v)) if not float(v).is_integer() else str(int(v))
    return str(v)


def select_runs(runs: pd.DataFrame, flt: Mapping | None) -> pd.DataFrame:
    """CPT runs matching a config filter {column: [values]} (numbers compared canonically)."""
    sel = runs[runs["phase"] == "cpt"]
    for col, values in (flt or {}).items():
        if col not in sel.columns:
            raise StudyError(f"filter key '{col}': not a runs.parquet column")
        want = {_canon(v) for v in values}
        sel = sel[sel[col].map(_canon).isin(want)]
    return sel


def ok_runs(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Runs usable for fitting (status ok), and the ids left out."""
    bad = runs[runs["status"].astype(str) != "ok"]["run_id"].astype(str).tolist()
    return runs[runs["status"].astype(str) == "ok"], bad


def _groups(cpt: pd.DataFrame):
    """CPT runs grouped as the laws want them: one parameter set per (model, domain, CPT peak LR)."""
    keys = ["model", "domain", "cpt_peak_lr"]
    for key, g in cpt.groupby(keys, sort=True, dropna=False):
        yield dict(zip(keys, key)), g


def _with_parents(runs: pd.DataFrame, cpt: pd.DataFrame) -> pd.DataFrame:
    parents = set(cpt["parent"].astype(str))
    return pd.concat([runs[runs["run_id"].isin(parents)], cpt], ignore_index=True)


def _curves(tables: Mapping[str, pd.DataFrame], runs: pd.DataFrame, split: str, curves_df: pd.DataFrame | None = None):
    from cptlaws.curves import curves_from_tables

    cdf = tables["curves"] if curves_df is None else curves_df
    cdf = cdf[cdf["run_id"].isin(set(runs["run_id"]))]
    return curves_from_tables(cdf, tables["lrs"], runs, split)


def _law_options(law: str, split: str) -> dict:
    from cptlaws.laws import get_law

    opts = get_law(law).options()
    if "split_role" in opts:
        return {"split_role": "general" if split == "general" else "domain"}
    return {}


def _fit(law: str, curves, fits: Mapping, bootstrap: bool = True, split: str = "general"):
    from cptlaws.fit import fit_law

    return fit_law(
        law, curves, n_starts=int(fits["n_starts"]), lam=float(fits["lam"]),
        bootstrap=int(fits["bootstrap"]) if bootstrap else 0, seed=int(fits["seed"]),
        law_options=_law_options(law, split),
    )  # fmt: skip


def _fit_quality(res, curves) -> dict:
    from cptlaws.fit import select_points
    from cptlaws.metrics import metrics

    sel, _, _ = select_points(curves)
    pred = np.concatenate(res.predict_arrays(sel))
    obs = np.concatenate([c.loss for c in sel])
    return metrics(obs, pred)


# ---------------------------------------------------------------------------------------- study fits
def _stem(analysis: str, key: Mapping, split: str | None = None, with_lr: bool = True) -> str:
    parts = [analysis, str(key["model"]), str(key["domain"])]
    if with_lr:
        parts.append(f"lr{_canon(key['cpt_peak_lr'])}")
    for k in ("cpt_schedule", "pt_schedule"):
        if k in key:
            parts.append(str(key[k]))
    if "transfer_step" in key:
        parts.append(f"T{int(key['transfer_step'])}")
    if split is not None:
        parts.append(split)
    return "_".join(parts)


def _clear_old(out_dir: Path, analysis: str) -> None:
    """Per-fit files are named by their group: remove the previous ones so a dropped group leaves none."""
    for p in out_dir.glob(f"{analysis}_*.json"):
        p.unlink()


def _several_lrs(groups: Sequence[Mapping]) -> bool:
    seen: dict[tuple, set] = {}
    for k in groups:
        seen.setdefault((k["model"], k["domain"]), set()).add(_canon(k["cpt_peak_lr"]))
    return any(len(v) > 1 for v in seen.values())


def fit_study(analysis: str, tables_dir: str | Path, settings: Mapping, out_dir: str | Path) -> dict:
    """Study-level fit of one analysis ('cpt', 'replay' or 'cmr').

    Writes one JSON per fit to ``out_dir`` (``FitResult.to_dict()`` plus the group keys and fit quality;
    for the CMR the ``cmr_from_curves`` result), ``<analysis>_params.parquet`` (value and bootstrap
    interval of every parameter), ``<analysis>_predictions.parquet`` and ``summary/<analysis>.json``
    (every group, with the reason when a fit was skipped or failed)."""
    fits = settings["fits"]
    tables = read_tables(tables_dir)
    runs, excluded = ok_runs(tables["runs"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear_old(out_dir, analysis)
    if analysis == "cmr":
        return _fit_cmr(tables, runs, excluded, fits, out_dir)
    if analysis not in ("cpt", "replay"):
        raise StudyError(f"unknown analysis {analysis!r} (cpt, replay, cmr)")
    conf = fits[analysis]
    law = "cpt" if analysis == "cpt" else conf["law"]
    r2_min = float(fits["cpt"]["r2_min"]) if "cpt" in fits else 0.99
    entries, param_rows, preds = [], [], []
    if conf["enabled"]:
        cpt = runs[runs["phase"] == "cpt"]
        if analysis == "cpt":
            cpt = cpt[np.isclose(cpt["ratio"].astype(float), float(conf["ratio"]))]
        groups = list(_groups(cpt))
        with_lr = _several_lrs([k for k, _ in groups])
        for key, g in groups:
            label = f"{analysis} fit (model {key['model']}, domain {key['domain']}, CPT peak LR {key['cpt_peak_lr']:g})"
            if analysis == "cpt" and len(g) < conf["min_runs"]:
                entries.append({**key, "skipped": f"{len(g)} CPT run(s) < fits.cpt.min_runs = {conf['min_runs']}"})
                continue
            if analysis == "replay" and g["ratio"].nunique() < conf["min_ratios"]:
                entries.append({**key, "skipped": f"{g['ratio'].nunique()} ratio(s) < fits.replay.min_ratios = {conf['min_ratios']}"})
                continue
            members = _with_parents(runs, g)
            for split in ("general", key["domain"]):
                entry = {**key, "split": split, "role": "general" if split == "general" else "domain", "law": law}
                try:
                    curves = _curves(tables, members, split)
                    res = _fit(law, curves, fits, split=split)
                except ValueError as exc:  # a failed group is reported, the others still fit
                    entry["error"] = f"{label}, split {split}: {exc}"
                    entries.append(entry)
                    continue
                q = _fit_quality(res, curves)
                stem = _stem(analysis, key, split, with_lr)
                doc = res.to_dict()
                doc.update({**key, "split": split, "role": entry["role"], "analysis": analysis, "fit_quality": q})
                io.write_json(out_dir / f"{stem}.json", doc)
                entry.update({
                    "file": f"{stem}.json", "params": res.params, "intervals": res.intervals, "fit_quality": q,
                    "r2_ok": bool(q["r2"] >= r2_min), "diagnostics": res.diagnostics, "fit_runs": res.fit_runs,
                })  # fmt: skip
                entries.append(entry)
                for p, v in res.params.items():
                    lo, hi = res.intervals.get(p, [math.nan, math.nan])
                    param_rows.append({**key, "split": split, "law": law, "param": p, "value": float(v), "lo": float(lo), "hi": float(hi)})
                pr = res.predict(curves, band=True)
                pr = pr[np.isfinite(pr["pred"].to_numpy(dtype=float))]  # step 0 (no LR area yet) has no prediction
                for k, v in key.items():
                    pr[k] = v
                preds.append(pr)
    if entries and all("error" in e for e in entries):
        raise StudyError(f"every {analysis} fit failed; first: {entries[0]['error']}")
    doc = {"analysis": analysis, "law": law, "settings": fits, "excluded_runs": excluded, "fits": entries}
    io.write_json(out_dir / "summary" / f"{analysis}.json", doc)
    io.write_parquet(out_dir / f"{analysis}_params.parquet", pd.DataFrame(param_rows, columns=["model", "domain", "cpt_peak_lr", "split", "law", "param", "value", "lo", "hi"]))
    pcols = ["run_id", "step", "split", "loss", "pred", "pred_lo", "pred_hi", "model", "domain", "cpt_peak_lr"]
    io.write_parquet(out_dir / f"{analysis}_predictions.parquet", pd.concat(preds, ignore_index=True)[pcols] if preds else pd.DataFrame(columns=pcols))
    return doc


# ------------------------------------------------------------------------------------------------ CMR
CMR_KEYS = ["model", "domain", "cpt_peak_lr", "cpt_schedule", "pt_schedule", "transfer_step"]


def _cmr_groups(runs: pd.DataFrame, min_ratios: int):
    """Sets of CPT runs that differ only in the mixture ratio (and seed): one CMR analysis each."""
    cpt = runs[runs["phase"] == "cpt"]
    for key, g in cpt.groupby(CMR_KEYS, sort=True, dropna=False):
        key = {k: (v.item() if hasattr(v, "item") else v) for k, v in zip(CMR_KEYS, key)}
        yield key, g, g["ratio"].nunique() >= min_ratios


def _fit_cmr(tables, runs, excluded, fits, out_dir: Path) -> dict:
    from cptlaws.cmr import cmr_from_curves

    conf = fits["cmr"]
    entries, rows, inc_parts = [], [], []
    if conf["enabled"]:
        for key, g, enough in _cmr_groups(runs, conf["min_ratios"]):
            if not enough:
                continue
            entry = dict(key)
            cdf = tables["curves"][tables["curves"]["run_id"].isin(set(g["run_id"]))]
            cdf = cdf.merge(g[["run_id", "ratio"]], on="run_id")
            label = "CMR (" + ", ".join(f"{k} {v}" for k, v in key.items()) + ")"
            try:
                res = cmr_from_curves(
                    cdf, domain_split=key["domain"], eps=float(conf["eps"]), lam=float(conf["lam"]),
                    t_unit=float(conf["t_unit_tokens"]), source=label,
                )  # fmt: skip
            except ValueError as exc:
                entry["error"] = f"{label}: {exc}"
                entries.append(entry)
                continue
            tables_out = res.pop("tables", None) or {}
            stem = _stem("cmr", key, None, with_lr=True)
            io.write_json(out_dir / f"{stem}.json", {**res, **key, "analysis": "cmr", "runs": sorted(g["run_id"])})
            c = res.get("cmr") or {}
            entry.update({"file": f"{stem}.json", "cmr": c.get("cmr"), "status": c.get("status"), "binding": c.get("binding"), "T_max": c.get("T_max"), "message": c.get("message"), "cmr_law": res.get("cmr_law"), "runs": sorted(g["run_id"])})
            entries.append(entry)
            rows.append({**key, "cmr": c.get("cmr"), "status": c.get("status"), "binding": c.get("binding"), "T_max": c.get("T_max"), "n_ratios": int(g["ratio"].nunique())})
            inc = tables_out.get("increments") if isinstance(tables_out, Mapping) else None
            if inc:
                part = pd.DataFrame(inc)
                for k, v in key.items():
                    part[k] = v
                inc_parts.append(part)
    doc = {"analysis": "cmr", "settings": fits, "excluded_runs": excluded, "fits": entries}
    io.write_json(out_dir / "summary" / "cmr.json", doc)
    io.write_parquet(out_dir / "cmr.parquet", pd.DataFrame(rows, columns=CMR_KEYS + ["cmr", "status", "binding", "T_max", "n_ratios"]))
    io.write_parquet(out_dir / "cmr_increments.parquet", pd.concat(inc_parts, ignore_index=True) if inc_parts else pd.DataFrame(columns=CMR_KEYS))
    return doc


def observed_cmr(tables, runs: pd.DataFrame, eps: float) -> float | None:
    """CMR read off the trained runs: largest ratio (linear interpolation between trained ratios) whose
    general-loss increase at the end of CPT stays within ``eps``; None if even the smallest exceeds it."""
    cur = tables["curves"]
    pts = []
    for _, r in runs.iterrows():
        g = cur[(cur["run_id"] == r["run_id"]) & (cur["split"] == "general")].sort_values("step")
        if g.empty:
            continue
        pts.append((float(r["ratio"]), float(g["loss"].iloc[-1] - g["loss"].iloc[0])))
    if not pts:
        return None
    df = pd.DataFrame(pts, columns=["ratio", "dl"]).groupby("ratio", as_index=False)["dl"].mean().sort_values("ratio")
    R, dl = df["ratio"].to_numpy(), df["dl"].to_numpy() - eps
    if dl[0] > 0:
        return None
    best = R[0]
    for i in range(1, len(R)):
        if dl[i] <= 0:
            best = R[i]
            continue
        if dl[i - 1] <= 0:  # crossing between R[i-1] and R[i]
            best = R[i - 1] + (R[i] - R[i - 1]) * (-dl[i - 1]) / (dl[i] - dl[i - 1])
        break
    return float(best)


# --------------------------------------------------------------------------------------------- checks
CHECK_COLUMNS = [
    "check", "kind", "law", "model", "domain", "cpt_peak_lr", "split", "run_id", "n_fit_runs", "n_points",
    "mae", "rmse", "r2", "mean_rel", "worst_rel", "huber", "metric", "value", "threshold", "passed", "note",
]  # fmt: skip
PRED_COLUMNS = ["check", "run_id", "step", "split", "loss", "pred", "pred_lo", "pred_hi"]


def _split_list(check: Mapping, domain: str) -> list[str]:
    return {"general": ["general"], "domain": [domain], "all": ["general", domain]}[check.get("split", "all")]


def _points_after(curves, cut: Mapping[str, int]):
    """Curves restricted to steps > cut[run] (step 0 dropped): the held-out part."""
    import dataclasses

    out = []
    for c in curves:
        keep = (c.steps > cut.get(c.run_id, 0)) & (c.steps > 0)
        if keep.any():
            out.append(dataclasses.replace(c, steps=c.steps[keep], loss=c.loss[keep]))
    return out


def run_checks(tables_dir: str | Path, settings: Mapping, out_dir: str | Path, cmr_summary: str | Path | None = None) -> pd.DataFrame:
    """Run every held-out check of the config.

    ``heldout.parquet``: one row per (check, group, validation set, held-out run) with that run's
    metrics; ``passed`` = the check's metric <= its threshold for that run (a CMR check has one row
    per CMR analysis, run_id ""). A check that cannot be done (e.g. its fit fails) is a failed row
    with the reason in ``note``. ``heldout.md`` summarises per check and group; ``predictions.parquet``
    holds every held-out prediction."""
    fits = settings["fits"]
    tables = read_tables(tables_dir)
    runs, _ = ok_runs(tables["runs"])
    cmr_doc = json.loads(Path(cmr_summary).read_text()) if cmr_summary and Path(cmr_summary).exists() else {"fits": []}
    rows, preds = [], []
    for chk in settings.get("checks", []):
        base = {"check": chk["name"], "kind": chk["kind"], "law": chk.get("law", "cpt"), "metric": chk.get("metric", "mean_rel"), "threshold": float(chk["threshold"])}
        if chk["kind"] == "cmr":
            base["law"] = "cmr"
            rows.extend(_cmr_check(chk, base, tables, runs, cmr_doc, fits))
            continue
        if chk["kind"] == "runs":
            fit_sel, pred_sel = select_runs(runs, chk["fit"]), select_runs(runs, chk["predict"])
        else:
            fit_sel = pred_sel = select_runs(runs, chk.get("select"))
        if pred_sel.empty:
            rows.append({**base, "run_id": "", "passed": False, "value": math.nan, "note": "no finished run matches this check"})
        for key, pred_g in _groups(pred_sel):
            same = (fit_sel["model"] == key["model"]) & (fit_sel["domain"] == key["domain"])
            fit_g = fit_sel[same & np.isclose(fit_sel["cpt_peak_lr"].astype(float), float(key["cpt_peak_lr"]))]
            for split in _split_list(chk, key["domain"]):
                head = {**base, **key, "split": split, "n_fit_runs": len(fit_g)}
                try:
                    rows.extend(_one_check(chk, head, tables, runs, fit_g, pred_g, split, fits, preds))
                except ValueError as exc:  # this check fails, with its reason; the others still run
                    rows.append({**head, "run_id": "", "passed": False, "value": math.nan, "note": f"error: {exc}"})
    df = pd.DataFrame(rows, columns=CHECK_COLUMNS)
    df["run_id"] = df["run_id"].fillna("").astype(str)
    df["note"] = df["note"].fillna("").astype(str)
    df["passed"] = df["passed"].fillna(False).astype(bool)
    out_dir = Path(out_dir)
    io.write_parquet(out_dir / "heldout.parquet", df)
    io.write_text(out_dir / "heldout.md", checks_markdown(df))
    io.write_parquet(out_dir / "predictions.parquet", pd.concat(preds, ignore_index=True)[PRED_COLUMNS] if preds else pd.DataFrame(columns=PRED_COLUMNS))
    return df


def _one_check(chk, head, tables, runs, fit_g, pred_g, split, fits, preds) -> list[dict]:
    from cptlaws.metrics import metrics

    law = chk.get("law", "cpt")
    if chk["kind"] == "runs":
        if fit_g.empty:
            raise StudyError("no fit run in this group")
        fit_curves = _curves(tables, _with_parents(runs, fit_g), split)
        res = _fit(law, fit_curves, fits, bootstrap=False, split=split)
        held = _curves(tables, pred_g, split)
        held = _points_after(held, {r: int(t) for r, t in zip(pred_g["run_id"], pred_g["transfer_step"])})
        scored = set(pred_g["run_id"])
    else:  # time: fit the first `fraction` of every run (PT parents included), predict the rest
        members = _with_parents(runs, pred_g)
        cut = {}
        for _, r in members.iterrows():
            start = int(r["transfer_step"]) if r["phase"] == "cpt" else 0
            cut[r["run_id"]] = start + int(round(float(chk["fraction"]) * int(r["steps"])))
        cdf = tables["curves"].merge(pd.DataFrame({"run_id": list(cut), "cut": list(cut.values())}), on="run_id")
        fit_curves = _curves(tables, members, split, cdf[cdf["step"] <= cdf["cut"]].drop(columns="cut"))
        res = _fit(law, fit_curves, fits, bootstrap=False, split=split)
        held = _points_after(_curves(tables, members, split), cut)
        scored = set(members["run_id"])
    held = [c for c in held if c.run_id in scored]
    if not held:
        raise StudyError("no held-out points to predict")
    p = res.predict(held)
    p["check"] = chk["name"]
    p["pred_lo"] = np.nan
    p["pred_hi"] = np.nan
    if not np.all(np.isfinite(p["pred"].to_numpy(dtype=float))):
        raise StudyError(f"the fitted {law} law gives a non-finite prediction")
    preds.append(p)
    out = []
    metric, thr = chk.get("metric", "mean_rel"), float(chk["threshold"])
    for rid, g in p.groupby("run_id", sort=True):
        m = metrics(g["loss"].to_numpy(), g["pred"].to_numpy())
        out.append({
            **head, "run_id": rid, "n_points": m["n"], **{k: m[k] for k in ("mae", "rmse", "r2", "mean_rel", "worst_rel", "huber")},
            "value": float(m[metric]), "passed": bool(m[metric] <= thr), "note": "",
        })  # fmt: skip
    return out


def _cmr_check(chk, base, tables, runs, cmr_doc, fits) -> list[dict]:
    rows = []
    sel = select_runs(runs, chk.get("select"))
    eps = float(fits["cmr"]["eps"])
    for ent in cmr_doc.get("fits", []):
        g = sel
        for k in CMR_KEYS:
            g = g[g[k].map(_canon) == _canon(ent[k])]
        if g.empty:
            continue
        row = {**base, **{k: ent[k] for k in ("model", "domain", "cpt_peak_lr")}, "split": "general", "run_id": "",
               "n_fit_runs": len(g), "n_points": int(g["ratio"].nunique())}  # fmt: skip
        pred = ent.get("cmr") if "error" not in ent else None
        status = ent.get("status", "error")
        obs = observed_cmr(tables, g, eps)
        where = f"{ent['cpt_schedule']} from {ent['pt_schedule']}@{ent['transfer_step']}"
        if pred is None or obs is None:
            why = ent.get("error") or ent.get("message") or ""
            row.update({"value": math.nan, "passed": False, "note": f"{where}: predicted CMR {pred}, observed {obs}, status {status}. {why}".strip()})
        else:
            err = abs(float(pred) - obs)
            row.update({"value": err, "passed": bool(err <= float(chk["threshold"])), "note": f"{where}: predicted CMR {pred:.3f} ({status}), observed {obs:.3f}"})
        rows.append(row)
    if not rows:
        rows.append({**base, "run_id": "", "passed": False, "value": math.nan, "note": "no CMR analysis matches this check (too few ratios?)"})
    return rows


def checks_markdown(df: pd.DataFrame) -> str:
    """Per (check, group, split): runs, mean and worst metric over the held-out runs, passes."""
    lines = ["# Held-out checks", ""]
    keys = ["check", "law", "model", "domain", "split"]
    head = ["check", "law", "model", "domain", "split", "runs", "metric", "mean", "worst", "threshold", "passed", "verdict", "note"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    n_pass = n_all = 0
    for key, g in df.fillna({"model": "", "domain": "", "split": ""}).groupby(keys, sort=False, dropna=False):
        vals = g["value"].astype(float)
        ok = bool(g["passed"].all())
        n_pass += ok
        n_all += 1
        note = "; ".join(sorted({n for n in g["note"].astype(str) if n}))[:300]
        cells = [*map(str, key), str(int((g["run_id"] != "").sum()) or len(g)), str(g["metric"].iloc[0]),
                 _fmt(vals.mean()), _fmt(vals.max()), _fmt(float(g["threshold"].iloc[0])),
                 f"{int(g['passed'].sum())}/{len(g)}", "PASS" if ok else "FAIL", note.replace("|", "/")]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines[1:1] = [f"{n_pass} of {n_all} check groups passed (a group passes when every held-out run is within the threshold; relative errors are fractions).", ""]
    return "\n".join(lines) + "\n"


def _fmt(v: float) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"
