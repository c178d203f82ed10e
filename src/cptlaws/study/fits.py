"""Study-level fits: one law per (model, domain, CPT peak LR) group and validation set, the replay law
across ratios and the CMR analysis; written to ``results/fits`` (docs/design.md)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cptlaws import io
from cptlaws.errors import InputError
from cptlaws.study.columns import PRED_COLUMNS
from cptlaws.study.config import canonical_value, row_matches
from cptlaws.study.tables import read_tables


# ----------------------------------------------------------------------------------------- selection
def select_runs(runs: pd.DataFrame, flt: Mapping | None) -> pd.DataFrame:
    """CPT runs matching a config filter {column: [values]} (``row_matches``: numbers compared canonically)."""
    cpt = runs[runs["phase"] == "cpt"]
    for col in flt or {}:
        if col not in cpt.columns:
            raise InputError(f"filter key '{col}': not a runs.parquet column")
    return cpt[[row_matches(r, flt) for r in cpt.to_dict("records")]] if flt else cpt


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
    from cptlaws.fitting.curves import curves_from_tables

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
    from cptlaws.fitting import fit_law

    return fit_law(
        law, curves, n_starts=int(fits["n_starts"]), lam=float(fits["lam"]),
        bootstrap=int(fits["bootstrap"]) if bootstrap else 0, seed=int(fits["seed"]),
        law_options=_law_options(law, split),
    )  # fmt: skip


def _fit_quality(res, curves) -> dict:
    from cptlaws.fitting import select_points
    from cptlaws.fitting.metrics import metrics

    sel, _, _ = select_points(curves)
    pred = np.concatenate(res.predict_arrays(sel))
    obs = np.concatenate([c.loss for c in sel])
    return metrics(obs, pred)


# ---------------------------------------------------------------------------------------- study fits
def _stem(analysis: str, key: Mapping, split: str | None = None, with_lr: bool = True) -> str:
    parts = [analysis, str(key["model"]), str(key["domain"])]
    if with_lr:
        parts.append(f"lr{canonical_value(key['cpt_peak_lr'])}")
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
        seen.setdefault((k["model"], k["domain"]), set()).add(canonical_value(k["cpt_peak_lr"]))
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
        raise InputError(f"unknown analysis {analysis!r} (cpt, replay, cmr)")
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
            skipped = _skip_reason(analysis, conf, g)
            if skipped:
                entries.append({**key, "skipped": skipped})
                continue
            members = _with_parents(runs, g)
            for split in ("general", key["domain"]):
                ctx = _GroupFit(analysis, law, key, split, with_lr, r2_min, out_dir)
                entry, rows, pr = _fit_group_split(ctx, tables, members, fits)
                entries.append(entry)
                param_rows += rows
                if pr is not None:
                    preds.append(pr)
    if entries and all("error" in e for e in entries):
        raise InputError(f"every {analysis} fit failed; first: {entries[0]['error']}")
    return _write_outputs(out_dir, analysis, law, fits, excluded, entries, param_rows, preds)


def _skip_reason(analysis: str, conf: Mapping, g: pd.DataFrame) -> str | None:
    """Why a group is too small for its analysis (None when it can be fitted)."""
    if analysis == "cpt" and len(g) < conf["min_runs"]:
        return f"{len(g)} CPT run(s) < fits.cpt.min_runs = {conf['min_runs']}"
    if analysis == "replay" and g["ratio"].nunique() < conf["min_ratios"]:
        return f"{g['ratio'].nunique()} ratio(s) < fits.replay.min_ratios = {conf['min_ratios']}"
    return None


@dataclasses.dataclass(frozen=True)
class _GroupFit:
    """One fit of a study analysis: the group's keys, the validation set and where its JSON goes."""

    analysis: str
    law: str
    key: dict
    split: str
    with_lr: bool
    r2_min: float
    out_dir: Path

    @property
    def role(self) -> str:
        return "general" if self.split == "general" else "domain"


def _fit_group_split(ctx: _GroupFit, tables, members: pd.DataFrame, fits: Mapping):
    """Fit one group on one validation set; write its JSON. Returns (summary entry, parameter rows,
    predictions or None); a failed fit gives an entry with the error and no rows."""
    key, split = ctx.key, ctx.split
    entry = {**key, "split": split, "role": ctx.role, "law": ctx.law}
    try:
        curves = _curves(tables, members, split)
        res = _fit(ctx.law, curves, fits, split=split)
    except ValueError as exc:  # a failed group is reported, the others still fit
        label = f"{ctx.analysis} fit (model {key['model']}, domain {key['domain']}, CPT peak LR {key['cpt_peak_lr']:g})"
        entry["error"] = f"{label}, split {split}: {exc}"
        return entry, [], None
    q = _fit_quality(res, curves)
    stem = _stem(ctx.analysis, key, split, ctx.with_lr)
    doc = res.to_dict()
    doc.update({**key, "split": split, "role": ctx.role, "analysis": ctx.analysis, "fit_quality": q})
    io.write_json(ctx.out_dir / f"{stem}.json", doc)
    entry.update({
        "file": f"{stem}.json", "params": res.params, "intervals": res.intervals, "fit_quality": q,
        "r2_ok": bool(q["r2"] >= ctx.r2_min), "diagnostics": res.diagnostics, "fit_runs": res.fit_runs,
    })  # fmt: skip
    rows = []
    for p, v in res.params.items():
        lo, hi = res.intervals.get(p, [math.nan, math.nan])
        rows.append(
            {**key, "split": split, "law": ctx.law, "param": p, "value": float(v), "lo": float(lo), "hi": float(hi)}
        )
    pr = res.predict(curves, band=True)
    pr = pr[np.isfinite(pr["pred"].to_numpy(dtype=float))]  # step 0 (no LR area yet) has no prediction
    for k, v in key.items():
        pr[k] = v
    return entry, rows, pr


def _write_outputs(out_dir: Path, analysis, law, fits, excluded, entries, param_rows, preds) -> dict:
    """``summary/<analysis>.json``, ``<analysis>_params.parquet`` and ``<analysis>_predictions.parquet``."""
    doc = {"analysis": analysis, "law": law, "settings": fits, "excluded_runs": excluded, "fits": entries}
    io.write_json(out_dir / "summary" / f"{analysis}.json", doc)
    io.write_parquet(
        out_dir / f"{analysis}_params.parquet",
        pd.DataFrame(
            param_rows, columns=["model", "domain", "cpt_peak_lr", "split", "law", "param", "value", "lo", "hi"]
        ),
    )
    pcols = [*PRED_COLUMNS, "model", "domain", "cpt_peak_lr"]
    io.write_parquet(
        out_dir / f"{analysis}_predictions.parquet",
        pd.concat(preds, ignore_index=True)[pcols] if preds else pd.DataFrame(columns=pcols),
    )
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
            entry.update(
                {
                    "file": f"{stem}.json",
                    "cmr": c.get("cmr"),
                    "status": c.get("status"),
                    "binding": c.get("binding"),
                    "T_max": c.get("T_max"),
                    "message": c.get("message"),
                    "cmr_law": res.get("cmr_law"),
                    "runs": sorted(g["run_id"]),
                }
            )
            entries.append(entry)
            rows.append(
                {
                    **key,
                    "cmr": c.get("cmr"),
                    "status": c.get("status"),
                    "binding": c.get("binding"),
                    "T_max": c.get("T_max"),
                    "n_ratios": int(g["ratio"].nunique()),
                }
            )
            inc = tables_out.get("increments") if isinstance(tables_out, Mapping) else None
            if inc:
                part = pd.DataFrame(inc)
                for k, v in key.items():
                    part[k] = v
                inc_parts.append(part)
    doc = {"analysis": "cmr", "settings": fits, "excluded_runs": excluded, "fits": entries}
    io.write_json(out_dir / "summary" / "cmr.json", doc)
    io.write_parquet(
        out_dir / "cmr.parquet",
        pd.DataFrame(rows, columns=CMR_KEYS + ["cmr", "status", "binding", "T_max", "n_ratios"]),
    )
    io.write_parquet(
        out_dir / "cmr_increments.parquet",
        pd.concat(inc_parts, ignore_index=True) if inc_parts else pd.DataFrame(columns=CMR_KEYS),
    )
    return doc
