"""Held-out checks declared in the study config: fit on some runs (or the first part of each run), predict
the rest, score them against the config's thresholds; ``results/checks/heldout.{parquet,md}``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from cptlaws import io
from cptlaws.errors import InputError
from cptlaws.study.columns import CHECK_COLUMNS, CHECK_PRED_COLUMNS
from cptlaws.study.config import canonical_value
from cptlaws.study.fits import CMR_KEYS, _curves, _fit, _groups, _with_parents, ok_runs, select_runs
from cptlaws.study.tables import read_tables


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


def run_checks(
    tables_dir: str | Path, settings: Mapping, out_dir: str | Path, cmr_summary: str | Path | None = None
) -> pd.DataFrame:
    """Run every held-out check of the config.

    ``heldout.parquet``: one row per (check, group, validation set, held-out run) with that run's
    metrics; ``passed`` = the check's metric <= its threshold for that run (a CMR check has one row
    per CMR analysis, run_id ""). A check that cannot be done (e.g. its fit fails) is a failed row
    with the reason in ``note``. ``heldout.md`` summarises per check and group; ``predictions.parquet``
    holds every held-out prediction."""
    fits = settings["fits"]
    tables = read_tables(tables_dir)
    runs, _ = ok_runs(tables["runs"])
    cmr_doc = io.read_json(cmr_summary) if cmr_summary and Path(cmr_summary).exists() else {"fits": []}
    rows, preds = [], []
    for chk in settings.get("checks", []):
        base = {
            "check": chk["name"],
            "kind": chk["kind"],
            "law": chk.get("law", "cpt"),
            "metric": chk.get("metric", "mean_rel"),
            "threshold": float(chk["threshold"]),
        }
        if chk["kind"] == "cmr":
            base["law"] = "cmr"
            rows.extend(_cmr_check(chk, base, tables, runs, cmr_doc, fits))
            continue
        if chk["kind"] == "runs":
            fit_sel, pred_sel = select_runs(runs, chk["fit"]), select_runs(runs, chk["predict"])
        else:
            fit_sel = pred_sel = select_runs(runs, chk.get("select"))
        if pred_sel.empty:
            rows.append(
                {**base, "run_id": "", "passed": False, "value": math.nan, "note": "no finished run matches this check"}
            )
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
    io.write_parquet(
        out_dir / "predictions.parquet",
        pd.concat(preds, ignore_index=True)[CHECK_PRED_COLUMNS] if preds else pd.DataFrame(columns=CHECK_PRED_COLUMNS),
    )
    return df


def _one_check(chk, head, tables, runs, fit_g, pred_g, split, fits, preds) -> list[dict]:
    from cptlaws.fitting.metrics import metrics

    law = chk.get("law", "cpt")
    if chk["kind"] == "runs":
        if fit_g.empty:
            raise InputError("no fit run in this group")
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
        raise InputError("no held-out points to predict")
    p = res.predict(held)
    p["check"] = chk["name"]
    p["pred_lo"] = np.nan
    p["pred_hi"] = np.nan
    if not np.all(np.isfinite(p["pred"].to_numpy(dtype=float))):
        raise InputError(f"the fitted {law} law gives a non-finite prediction")
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
            g = g[g[k].map(canonical_value) == canonical_value(ent[k])]
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
            row.update(
                {
                    "value": math.nan,
                    "passed": False,
                    "note": f"{where}: predicted CMR {pred}, observed {obs}, status {status}. {why}".strip(),
                }
            )
        else:
            err = abs(float(pred) - obs)
            row.update(
                {
                    "value": err,
                    "passed": bool(err <= float(chk["threshold"])),
                    "note": f"{where}: predicted CMR {pred:.3f} ({status}), observed {obs:.3f}",
                }
            )
        rows.append(row)
    if not rows:
        rows.append(
            {
                **base,
                "run_id": "",
                "passed": False,
                "value": math.nan,
                "note": "no CMR analysis matches this check (too few ratios?)",
            }
        )
    return rows


def checks_markdown(df: pd.DataFrame) -> str:
    """Per (check, group, split): runs, mean and worst metric over the held-out runs, passes."""
    lines = ["# Held-out checks", ""]
    keys = ["check", "law", "model", "domain", "split"]
    head = [
        "check",
        "law",
        "model",
        "domain",
        "split",
        "runs",
        "metric",
        "mean",
        "worst",
        "threshold",
        "passed",
        "verdict",
        "note",
    ]
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
    lines[1:1] = [
        f"{n_pass} of {n_all} check groups passed (a group passes when every held-out run is within the threshold; relative errors are fractions).",
        "",
    ]
    return "\n".join(lines) + "\n"


def _fmt(v: float) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


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
