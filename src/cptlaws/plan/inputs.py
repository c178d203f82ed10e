"""Fit JSONs as planner inputs: which validation set each one is, which search dimensions its law sees,
and the coverage the fit records (a ``coverage`` key, docs/plan.md) or that a schedules YAML gives."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cptlaws.errors import InputError
from cptlaws.plan.space import DIMS, coverage_from_entries

PLANNABLE = ("cpt", "replay", "replay_rpt", "replay_flex", "size")
RATIO_LAWS = ("replay", "replay_rpt", "replay_flex")


def role_of(doc: Mapping) -> str:
    """'general' or 'domain': the doc's ``role`` (study fits), its replay ``split_role``, else its split."""
    if doc.get("role") in ("general", "domain"):
        return doc["role"]
    role = (doc.get("law_options") or {}).get("split_role")
    if role in ("general", "domain"):
        return role
    return "general" if (doc.get("split") or "general") == "general" else "domain"


def fits_by_role(docs: Sequence[Mapping], names: Sequence[str] | None = None) -> dict:
    """``{role: FitResult}`` from one or two fit JSON documents; InputError on a law the planner cannot
    use or two fits of the same role."""
    from cptlaws.fitting import FitResult

    names = list(names or [f"fit {i + 1}" for i in range(len(docs))])
    out, where = {}, {}
    for name, doc in zip(names, docs):
        law = doc.get("law")
        if law not in PLANNABLE:
            raise InputError(
                f"{name}: law {law!r} has no CPT phase; the planner needs a CPT law fit ({', '.join(PLANNABLE)})"
            )
        role = role_of(doc)
        if role in out:
            raise InputError(f"{name} and {where[role]} are both fits of the {role} loss; give one of each")
        out[role], where[role] = FitResult.from_dict(doc), name
    return out


def law_dims(fits: Mapping) -> tuple:
    """Search dimensions the fitted laws depend on: all, but the ratio only through a replay law."""
    with_ratio = any(f.law in RATIO_LAWS for f in fits.values())
    return tuple(d for d in DIMS if d != "ratio" or with_ratio)


def coverage(docs: Sequence[Mapping], entries: Mapping | None = None) -> dict | None:
    """Coverage over the fits: the docs' ``coverage`` keys (merged: widest range), else the CPT entries
    of a schedules YAML that the fits were made on, else None."""
    covs = [d["coverage"] for d in docs if isinstance(d.get("coverage"), Mapping)]
    if not covs and entries:
        runs = sorted({r for d in docs for r in d.get("fit_runs", [])} & set(entries))
        covs = [coverage_from_entries(entries, runs or None)]
    if not covs:
        return None
    out: dict = {}
    for c in covs:
        for d, v in c.items():
            if d not in DIMS:
                continue
            cur = out.setdefault(d, {"values": []})
            cur["values"] = sorted(set(cur["values"]) | set(v.get("values", [])))
            if d != "kind":
                cur["min"] = min(cur.get("min", v["min"]), v["min"])
                cur["max"] = max(cur.get("max", v["max"]), v["max"])
    return out


def entries_from_runs_table(runs) -> tuple[dict, dict]:
    """Schedules-YAML-like entries of the CPT runs of a study's ``runs.parquet`` (docs/design.md), and
    the run constants they share (``tokens_per_step`` when every run has the same batch x sequence)."""
    import json

    rows = {str(r["run_id"]): r for r in runs.to_dict("records")}
    entries = {}
    for rid, r in rows.items():
        if r.get("phase") != "cpt":
            continue
        parent = rows.get(str(r.get("parent")))
        if parent is None:
            raise InputError(f"runs table: CPT run '{rid}' has no PT run '{r.get('parent')}' in the table")
        entries[rid] = {
            "pt_schedule": json.loads(r["schedule_json"]),
            "pt_steps": int(parent["steps"]),
            "transfer": int(r["transfer_step"]),
            "schedule": json.loads(r["cpt_schedule_json"]),
            "steps": int(r["steps"]),
            "ratio": float(r["ratio"]),
        }
    if not entries:
        raise InputError("runs table: no CPT run")
    tps = {int(r["batch_size"]) * int(r["seq_len"]) for r in rows.values() if "batch_size" in r and "seq_len" in r}
    return entries, ({"tokens_per_step": tps.pop()} if len(tps) == 1 else {})
