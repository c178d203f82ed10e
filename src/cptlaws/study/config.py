"""Study config: JSON-schema validation (defaults filled in), semantic checks, and expansion of the
grids into one training config per run.

Everything here runs at Snakemake parse time, so it imports nothing heavy (no torch) and every error
names the config key it is about: ``config key 'cpt.grids[0].ratio[2]': 1.5 is greater than ...``.

Run identity: a run id is built from the run's parameters with canonical number formatting, so the same
parameters always give the same id (and directory) and a changed grid value gives a new run.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cptlaws import schedules, schema
from cptlaws.errors import ConfigError

SCHEMA_PATH = schema.SCHEMA_DIR / "study.schema.yaml"  # package data
_DEVICE_NOTE = " (a CUDA device itself is checked when each training job starts, on its node)"

RESOURCE_DEFAULTS = {
    "default": {"threads": 1, "mem_mb": 2000, "runtime": 30, "gpu": 0},
    "train": {"threads": 1, "mem_mb": 4000, "runtime": 120, "gpu": 0},
    "fit": {"threads": 1, "mem_mb": 4000, "runtime": 60, "gpu": 0},
}
FILTER_KEYS = ("domain", "ratio", "cpt_schedule", "pt_schedule", "cpt_peak_lr", "transfer_step", "model", "seed")


def canonical_number(x: float | int) -> str:
    """Stable text for a grid value: 0.5 -> '0.5', 1.0 -> '1', 2e-4 -> '0.0002', 1e-5 -> '1e-05'."""
    if isinstance(x, bool):
        raise TypeError("bool is not a grid number")
    if isinstance(x, int):
        return str(x)
    x = float(x)
    if x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return format(x, ".6g")


# ---------------------------------------------------------------- schema validation with defaults
def validate_schema(config: Mapping, schema_path: str | Path | None = None) -> dict:
    """Validate against the study schema (``cptlaws.schema``) and return a deep copy with defaults filled in.

    ``schema_path``: another copy of the schema (the workflow's); its references into the shipped run
    schema still resolve."""
    if schema_path is None:
        doc = schema.schema("study")
    else:
        schema_path = Path(schema_path)
        if not schema_path.exists():
            raise ConfigError(f"config schema not found: {schema_path}")
        doc = schema.read_yaml(schema_path, "config schema")
    cfg, bad = schema.validate(config, doc, uri=schema.BASE_URI + "study.copy.schema.yaml")
    if bad is not None:
        note = _DEVICE_NOTE if bad.key.endswith("runtime.device") else ""
        raise ConfigError(f"config key '{bad.key}': {bad.message}{note}")
    return cfg


# ---------------------------------------------------------------- expanded study
@dataclass
class Study:
    """A validated study: the config with defaults, and one training config + table row per run."""

    config: dict
    runs: dict[str, dict] = field(default_factory=dict)  # run_id -> {"train": run config, "row": metadata}
    notes: list[str] = field(default_factory=list)  # what validation could not check here (`study validate` prints)
    results: str = "results"
    resources_dir: str = "resources"

    @property
    def pt_runs(self) -> list[str]:
        return [r for r, v in self.runs.items() if v["row"]["phase"] == "pt"]

    @property
    def cpt_runs(self) -> list[str]:
        return [r for r, v in self.runs.items() if v["row"]["phase"] == "cpt"]

    @property
    def corpora(self) -> list[str]:
        return list(self.config["corpora"])

    def corpus_source(self, name: str) -> str:
        return self.config["corpora"][name].get("source", name)

    def corpus_hub(self, name: str) -> str | None:
        return self.config["corpora"][name].get("hub")

    def fetch_args(self, name: str) -> str:
        spec = self.config["corpora"][name]
        args = [f"--max-mb {spec['max_mb']}"] if "max_mb" in spec else []
        return " ".join(args + [spec.get("args", "")]).strip()

    def tokenize_source_args(self, name: str) -> str:
        """`cptlaws tokenize` source arguments: the fetched corpus dir, or the hub stream."""
        spec = self.config["corpora"][name]
        if "hub" in spec:
            args = [f"--hub {spec['hub']}"]
            if "token_budget" in spec:
                args.append(f"--token-budget {spec['token_budget']:g}")
        else:
            args = [f"--corpus {self.corpus_dir(name)}"]
        return " ".join(args + [spec.get("tokenize_args", "")]).strip()

    def corpus_dir(self, name: str) -> str:
        return f"{self.resources_dir}/corpora/{name}"

    @property
    def tokenizer_corpus(self) -> str:
        return self.config["tokenizer"].get("corpus") or self.config["general"]

    @property
    def tokenizer_path(self) -> str:
        tok = self.config["tokenizer"]
        return tok.get("path") or f"{self.resources_dir}/tokenizer/{tok['kind']}{tok['vocab']}/tokenizer.json"

    def token_dir(self, corpus: str) -> str:
        return f"{self.resources_dir}/tokens/{corpus}"

    def run_dir(self, run_id: str) -> str:
        return f"{self.results}/runs/{run_id}"

    def parent(self, run_id: str) -> str:
        return self.runs[run_id]["row"]["parent"]

    def run_json(self, run_id: str) -> str:
        """The run's training config + table row as compact, key-sorted JSON (a Snakemake param)."""
        return json.dumps(self.runs[run_id], sort_keys=True, separators=(",", ":"))

    def resources(self, kind: str) -> dict:
        out = dict(RESOURCE_DEFAULTS.get(kind, RESOURCE_DEFAULTS["default"]))
        out.update(self.config["resources"].get(kind, {}))
        return out

    def fit_settings_json(self, analysis: str) -> str:
        """The fit settings one analysis depends on (shared keys + its own block), as canonical JSON."""
        fits = self.config["fits"]
        shared = {k: v for k, v in fits.items() if not isinstance(v, dict)}
        return json.dumps({"fits": {**shared, analysis: fits[analysis]}}, sort_keys=True, separators=(",", ":"))

    def settings_json(self, *keys: str) -> str:
        """Part of the config as canonical JSON: the params that make exactly the dependent steps rerun."""
        return json.dumps({k: self.config[k] for k in keys}, sort_keys=True, separators=(",", ":"))


def _dup_check(values: list, key: str) -> None:
    seen = {}
    for i, v in enumerate(values):
        c = canonical_number(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else repr(v)
        if c in seen:
            raise ConfigError(
                f"config key '{key}[{i}]': duplicate value {v!r} (same as [{seen[c]}]): it would define the same run twice"
            )
        seen[c] = i


def _names(values: list, known: Mapping, key: str, what: str) -> None:
    for i, v in enumerate(values):
        if v not in known:
            raise ConfigError(f"config key '{key}[{i}]': unknown {what} {v!r} (defined: {', '.join(sorted(known))})")


def _sched(spec: Mapping, steps: int, key: str) -> dict:
    try:
        return schedules.validate(spec, steps)
    except schedules.ScheduleError as exc:
        raise ConfigError(f"config key '{key}': {exc}") from None


def pt_run_id(model: str, schedule: str, seed: int) -> str:
    return f"pt-{model}-{schedule}-s{seed}"


def cpt_run_id(model, domain, ratio, cpt_schedule, cpt_peak_lr, pt_schedule, transfer_step, seed) -> str:
    lr = f"-lr{canonical_number(cpt_peak_lr)}" if cpt_peak_lr is not None else ""
    return (
        f"cpt-{model}-{domain}-r{canonical_number(ratio)}-{cpt_schedule}{lr}"
        f"-{pt_schedule}-T{int(transfer_step)}-s{int(seed)}"
    )


def load_study(
    config: Mapping | str | Path,
    schema_path: str | Path | None = None,
    results: str = "results",
    resources_dir: str = "resources",
    files: list[str | Path] | tuple = (),
) -> Study:
    """Validate a study config (mapping or YAML path) and expand it into runs. Raises ConfigError.

    ``files``: the YAML files a mapping was read from (Snakemake's ``--configfile``s): they are read again
    only to reject a key written twice, which Snakemake's own YAML reader lets the second one win."""
    if isinstance(config, (str, Path)):
        config = schema.read_yaml(config)
    for f in files:
        schema.read_yaml(f)
    cfg = validate_schema(config, schema_path)
    study = Study(config=cfg, results=results, resources_dir=resources_dir)
    _check_corpora(cfg)
    specs = _check_schedules(cfg)
    _check_grids(cfg)
    _expand(study, *specs)
    _check_fits(cfg)
    _check_checks(study)
    _check_run_configs(study)
    _note_device(study)
    return study


def _check_fits(cfg: dict) -> None:
    """A law named in a fit block must exist (else it fails only in the fit job)."""
    known = _known_laws()
    for name, block in cfg["fits"].items():
        if isinstance(block, dict) and "law" in block and block["law"] not in known:
            raise ConfigError(
                f"config key 'fits.{name}.law': unknown law {block['law']!r} (known: {', '.join(sorted(known))})"
            )


def _note_device(study: Study) -> None:
    dev = study.config["train"]["runtime"]["device"]
    if dev != "cpu":
        study.notes.append(
            f"note: train.runtime.device = {dev!r}: the GPU is checked when each training job starts, on its node "
            "(not here: a login node without a GPU is fine)"
        )


def _check_corpora(cfg: dict) -> None:
    corpora = cfg["corpora"]
    if cfg["general"] not in corpora:
        raise ConfigError(
            f"config key 'general': corpus {cfg['general']!r} is not defined in 'corpora' ({', '.join(corpora)})"
        )
    tok = cfg["tokenizer"]
    if "corpus" in tok:
        _names([tok["corpus"]], corpora, "tokenizer.corpus", "corpus")
    tok_corpus = tok.get("corpus", cfg["general"])
    if "path" not in tok and tok["kind"] == "bpe" and "hub" in corpora[tok_corpus]:
        raise ConfigError(
            f"config key 'tokenizer.corpus': {tok_corpus!r} is a hub corpus; the BPE trains on a fetched corpus "
            "(name a local one) or give 'tokenizer.path'"
        )
    for name, spec in corpora.items():
        if "hub" in spec and ("source" in spec or "max_mb" in spec or spec.get("args")):
            raise ConfigError(
                f"config key 'corpora.{name}': a hub corpus is streamed by tokenize; 'source', 'max_mb' and 'args' are for fetched corpora"
            )
        if "token_budget" in spec and "hub" not in spec:
            raise ConfigError(f"config key 'corpora.{name}.token_budget': only used with 'hub'")


def _check_schedules(cfg: dict) -> tuple[dict, dict]:
    """The named PT and CPT schedules, each checked once against its phase length and normalised."""
    pt_steps = cfg["pt"]["steps"]
    pt_specs = {n: _sched(s, pt_steps, f"pt.schedules.{n}") for n, s in cfg["pt"]["schedules"].items()}
    for name, s in pt_specs.items():
        if s["peak_lr"] == schedules.PT_END or s["warmup_init"] == schedules.PT_END:
            raise ConfigError(f"config key 'pt.schedules.{name}': 'pt_end' is only meaningful for a CPT schedule")
    cpt_steps = cfg["cpt"]["steps"]
    cpt_specs = {n: _sched(s, cpt_steps, f"cpt.schedules.{n}") for n, s in cfg["cpt"]["schedules"].items()}
    return pt_specs, cpt_specs


def _check_grids(cfg: dict) -> None:
    pt_steps = cfg["pt"]["steps"]
    for i, s in enumerate(cfg["pt"]["checkpoint_steps"]):
        if s > pt_steps:
            raise ConfigError(
                f"config key 'pt.checkpoint_steps[{i}]': step {s} is beyond the PT run ({pt_steps} steps)"
            )
    for i, spec in enumerate(cfg["pt"]["runs"]):
        base = f"pt.runs[{i}]"
        _names(spec["schedule"], cfg["pt"]["schedules"], f"{base}.schedule", "PT schedule")
        _names(spec.get("model", []), cfg["models"], f"{base}.model", "model")
        for k in ("schedule", "model", "seed"):
            _dup_check(spec.get(k, []), f"{base}.{k}")
    for i, g in enumerate(cfg["cpt"]["grids"]):
        base = f"cpt.grids[{i}]"
        _names(g["domain"], cfg["corpora"], f"{base}.domain", "corpus")
        _names(g["cpt_schedule"], cfg["cpt"]["schedules"], f"{base}.cpt_schedule", "CPT schedule")
        _names(g["pt_schedule"], cfg["pt"]["schedules"], f"{base}.pt_schedule", "PT schedule")
        _names(g.get("model", []), cfg["models"], f"{base}.model", "model")
        for k in ("domain", "ratio", "cpt_schedule", "cpt_peak_lr", "pt_schedule", "transfer_step", "model", "seed"):
            _dup_check(g.get(k, []), f"{base}.{k}")
        for j, t in enumerate(g["transfer_step"]):
            if t > pt_steps:
                raise ConfigError(
                    f"config key '{base}.transfer_step[{j}]': transfer step {t} is beyond the PT run ({pt_steps} steps, 'pt.steps')"
                )
        for j, d in enumerate(g["domain"]):
            if d == cfg["general"]:
                raise ConfigError(
                    f"config key '{base}.domain[{j}]': {d!r} is the general corpus; CPT domains must differ from 'general'"
                )


# where a key of a run config comes from in the study config (for the messages of _check_run_configs)
_STUDY_KEY = {"model": "models.{model}", "batch_size": "data.batch_size", "seq_len": "data.seq_len",
              "eval_every": "train.eval_every", "eval_batches": "train.eval_batches", "optim": "train.optim",
              "runtime": "train.runtime", "checkpoint": "train.checkpoint_every"}  # fmt: skip


def _check_run_configs(study: Study) -> None:
    """Every run config the expansion wrote must pass the trainer's own check (paths aside: nothing is
    on disk yet at parse time), so a bad model preset or shape fails here and not in a training job."""
    from cptlaws.train.config import validate_config

    for rid, spec in study.runs.items():
        try:
            validate_config(spec["train"], source=f"of run {rid}", check_paths=False)
        except ConfigError as exc:
            top = str(getattr(exc, "key", "")).split(".")[0].split("[")[0]
            origin = _STUDY_KEY.get(top, "").format(model=spec["row"]["model"])
            raise ConfigError(f"config key '{origin}': {exc}" if origin else str(exc)) from None


def _model_spec(cfg: dict, name: str) -> dict:
    return copy.deepcopy(cfg["models"][name])


def _base_train(study: Study, run_id: str, phase: str, model: str, seed: int) -> dict:
    cfg = study.config
    domains = sorted({d for g in cfg["cpt"]["grids"] for d in g["domain"]})
    valid = {"general": study.token_dir(cfg["general"])}
    for d in domains:
        valid[d] = study.token_dir(d)
    tr = cfg["train"]
    res = study.resources("train")
    base = {
        "run_id": run_id,
        "phase": phase,
        "out_dir": study.run_dir(run_id),
        "seed": int(seed),
        "model": _model_spec(cfg, model),
        "tokenizer": study.tokenizer_path,
        "data": {"general": study.token_dir(cfg["general"])},
        "valid": valid,
        "batch_size": cfg["data"]["batch_size"],
        "seq_len": cfg["data"]["seq_len"],
        "steps": None,
        "eval_every": tr["eval_every"],
        "eval_batches": tr["eval_batches"],
        "schedule": None,
        "optim": copy.deepcopy(tr["optim"]),
        "checkpoint": {"transfer_steps": [], "every": tr["checkpoint_every"], "keep_last": 1},
        "runtime": {
            "threads": res["threads"],
            "device": tr["runtime"]["device"],
            "dtype": tr["runtime"]["dtype"],
            "compile": tr["runtime"]["compile"],
            "progress": False,  # progress bars only clutter the job logs
        },
    }
    if "divergence" in tr:  # only when set, as micro_batch
        base["divergence"] = copy.deepcopy(tr["divergence"])
    if tr["runtime"]["micro_batch"]:  # only when set: existing studies' run configs (and outputs) stay valid
        base["runtime"]["micro_batch"] = tr["runtime"]["micro_batch"]
    return base


def _expand(study: Study, pt_specs: dict, cpt_specs: dict) -> None:
    """One training config + table row per run: the CPT runs of the grids, then the PT runs they branch
    from (plus ``pt.runs``)."""
    cfg = study.config
    default_model = next(iter(cfg["models"]))
    pt_keys: dict[tuple, set] = {}  # (model, schedule, seed) -> transfer steps to checkpoint
    for spec in cfg["pt"]["runs"]:
        for sched, model, seed in itertools.product(
            spec["schedule"], spec.get("model", [default_model]), spec.get("seed", [0])
        ):
            pt_keys.setdefault((model, sched, seed), set())
    cpt: dict[str, dict] = {}
    for i, g in enumerate(cfg["cpt"]["grids"]):
        axes = (
            g["domain"], g["ratio"], g["cpt_schedule"], g.get("cpt_peak_lr", [None]), g["pt_schedule"],
            g["transfer_step"], g.get("model", [default_model]), g.get("seed", [0]),
        )  # fmt: skip
        for point in itertools.product(*axes):
            domain, ratio, csched, clr, psched, T, model, seed = point
            rid = cpt_run_id(model, domain, ratio, csched, clr, psched, T, seed)
            if rid in cpt:  # union of cross-products: an overlap is the same run
                continue
            cpt[rid] = _cpt_run(study, rid, point, pt_specs, cpt_specs, f"cpt.grids[{i}]")
            row = cpt[rid]["row"]
            pt_keys.setdefault((row["model"], row["pt_schedule"], row["seed"]), set()).add(row["transfer_step"])
    extra_ckpt = set(cfg["pt"]["checkpoint_steps"])
    for (model, psched, seed), transfers in sorted(pt_keys.items()):
        rid = pt_run_id(model, psched, seed)
        study.runs[rid] = _pt_run(study, rid, model, psched, seed, pt_specs, sorted(transfers | extra_ckpt))
    study.runs.update(cpt)


def _cpt_run(study: Study, rid: str, point: tuple, pt_specs: dict, cpt_specs: dict, base: str) -> dict:
    cfg = study.config
    domain, ratio, csched, clr, psched, T, model, seed = point
    pt_steps, cpt_steps = cfg["pt"]["steps"], cfg["cpt"]["steps"]
    spec = dict(cpt_specs[csched], name=csched)
    if clr is not None:
        spec["peak_lr"] = float(clr)
        spec = _sched(spec, cpt_steps, f"{base}.cpt_peak_lr (with cpt.schedules.{csched})")
    pt_lrs = schedules.lr_array(pt_specs[psched], pt_steps)
    eta_T = float(pt_lrs[T - 1])
    cpt_lrs = schedules.lr_array(spec, cpt_steps, prev_lr=eta_T)
    parent = pt_run_id(model, psched, seed)
    train = _base_train(study, rid, "cpt", model, seed)
    train["data"] = {
        "general": study.token_dir(cfg["general"]),
        "domain": study.token_dir(domain),
        "ratio": float(ratio),
    }
    train["steps"] = cpt_steps
    train["schedule"] = spec
    train["init"] = {
        "checkpoint": f"{study.run_dir(parent)}/ckpt/step_{int(T)}",
        "pt_schedule": dict(pt_specs[psched], name=psched),
        "pt_steps": pt_steps,
        "transfer_step": int(T),
        "optimizer": cfg["cpt"]["optimizer"],
    }
    row = {
        "run_id": rid, "phase": "cpt", "parent": parent, "model": model, "domain": domain,
        "ratio": float(ratio), "pt_schedule": psched, "cpt_schedule": csched,
        "peak_lr": _peak(pt_specs[psched]), "cpt_peak_lr": float(cpt_lrs.max()),
        "transfer_step": int(T), "loss_potential": eta_T / _peak(pt_specs[psched]),
        "steps": cpt_steps, "total_steps": int(T) + cpt_steps, "seed": int(seed),
        "batch_size": cfg["data"]["batch_size"], "seq_len": cfg["data"]["seq_len"],
        "schedule_json": json.dumps(dict(pt_specs[psched], name=psched), sort_keys=True),
        "cpt_schedule_json": json.dumps(spec, sort_keys=True),
    }  # fmt: skip
    return {"train": train, "row": row}


def _pt_run(study: Study, rid: str, model: str, psched: str, seed: int, pt_specs: dict, transfers: list) -> dict:
    cfg = study.config
    pt_steps = cfg["pt"]["steps"]
    spec = dict(pt_specs[psched], name=psched)
    lrs = schedules.lr_array(spec, pt_steps)
    train = _base_train(study, rid, "pt", model, seed)
    train["steps"] = pt_steps
    train["schedule"] = spec
    train["checkpoint"]["transfer_steps"] = transfers
    row = {
        "run_id": rid, "phase": "pt", "parent": "", "model": model, "domain": "", "ratio": 0.0,
        "pt_schedule": psched, "cpt_schedule": "", "peak_lr": _peak(spec), "cpt_peak_lr": math.nan,
        "transfer_step": 0, "loss_potential": float(lrs[-1]) / _peak(spec), "steps": pt_steps,
        "total_steps": pt_steps, "seed": int(seed), "batch_size": cfg["data"]["batch_size"],
        "seq_len": cfg["data"]["seq_len"], "schedule_json": json.dumps(spec, sort_keys=True),
        "cpt_schedule_json": "",
    }  # fmt: skip
    return {"train": train, "row": row}


def _peak(spec: Mapping) -> float:
    return float(spec["peak_lr"])


def _check_checks(study: Study) -> None:
    cfg = study.config
    rows = [v["row"] for v in study.runs.values() if v["row"]["phase"] == "cpt"]
    seen = set()
    for i, chk in enumerate(cfg["checks"]):
        base = f"checks[{i}]"
        if chk["name"] in seen:
            raise ConfigError(f"config key '{base}.name': duplicate check name {chk['name']!r}")
        seen.add(chk["name"])
        kind = chk["kind"]
        if kind == "runs":
            for part in ("fit", "predict"):
                if part not in chk:
                    raise ConfigError(f"config key '{base}.{part}': required by a check of kind 'runs' (a run filter)")
        if kind == "time":
            if "fraction" not in chk:
                raise ConfigError(
                    f"config key '{base}.fraction': required by a check of kind 'time' (share of each run to fit)"
                )
        elif "fraction" in chk:
            raise ConfigError(f"config key '{base}.fraction': only used by checks of kind 'time'")
        if kind != "runs":
            for part in ("fit", "predict"):
                if part in chk:
                    raise ConfigError(f"config key '{base}.{part}': only used by checks of kind 'runs' (use 'select')")
        chk.setdefault("metric", "abs_err" if kind == "cmr" else "mean_rel")  # the schema leaves it to the kind
        if kind == "cmr" and chk["metric"] != "abs_err":
            raise ConfigError(f"config key '{base}.metric': a cmr check compares ratios: use metric 'abs_err'")
        if kind != "cmr" and chk["metric"] == "abs_err":
            raise ConfigError(f"config key '{base}.metric': 'abs_err' is only for cmr checks")
        law = chk["law"]
        known = _known_laws()
        if kind != "cmr" and law not in known:
            raise ConfigError(f"config key '{base}.law': unknown law {law!r} (known: {', '.join(sorted(known))})")
        if kind == "cmr" and not cfg["fits"]["cmr"]["enabled"]:
            raise ConfigError(
                f"config key '{base}.kind': a cmr check compares the CMR analysis with the runs, but "
                "'fits.cmr.enabled' is false (enable it or drop the check)"
            )
        if kind != "cmr" and law == "size":
            _check_sizes(study, rows, chk, base)
        for part in ("fit", "predict", "select"):
            flt = chk.get(part)
            if not flt:
                continue
            for col, values in flt.items():
                avail = {canonical_value(r[col]) for r in rows}
                for j, v in enumerate(values):
                    if canonical_value(v) not in avail:
                        raise ConfigError(
                            f"config key '{base}.{part}.{col}[{j}]': no CPT run has {col} = {v!r} "
                            f"(values in the grid: {', '.join(sorted(map(str, avail)))})"
                        )
        if kind == "runs":
            fit = select_rows(rows, chk.get("fit"))
            pred = select_rows(rows, chk.get("predict"))
            if not fit:
                raise ConfigError(f"config key '{base}.fit': selects no CPT run")
            if not pred:
                raise ConfigError(f"config key '{base}.predict': selects no CPT run")
            both = {r["run_id"] for r in fit} & {r["run_id"] for r in pred}
            if both:
                raise ConfigError(
                    f"config key '{base}.predict': {len(both)} run(s) are also in 'fit' (e.g. {sorted(both)[0]}): a held-out check must predict unseen runs"
                )


def _check_sizes(study: Study, rows: list[dict], chk: dict, base: str) -> None:
    """The size law (Eq. 7) has model-size exponents: the runs it fits must span at least two model sizes."""
    from cptlaws.train.model import resolve_model_spec

    fit = select_rows(rows, chk.get("fit") or chk.get("select"))
    shapes = {}
    for r in fit:
        spec = resolve_model_spec(study.config["models"][r["model"]], f"models.{r['model']}")
        shapes.setdefault(json.dumps(spec, sort_keys=True), r["model"])
    if len(shapes) < 2:
        raise ConfigError(
            f"config key '{base}.law': the size law needs runs of at least two model sizes to identify its "
            f"exponents; the runs this check fits have {len(shapes)} ({', '.join(shapes.values()) or 'none'}: "
            "add a model to 'models' and to the grid, or use law 'cpt')"
        )


def canonical_value(v) -> str:
    """A filter / grid value as comparable text: numbers canonically (``canonical_number``), else ``str``."""
    if isinstance(v, numbers.Real) and not isinstance(v, bool):
        return canonical_number(float(v))
    return str(v)


def row_matches(row: Mapping, flt: Mapping | None) -> bool:
    """Whether a run's table row passes a config filter ``{column: [values]}`` (the one run filter)."""
    return all(canonical_value(row[c]) in {canonical_value(v) for v in vals} for c, vals in (flt or {}).items())


def select_rows(rows: list[Mapping], flt: Mapping | None) -> list[Mapping]:
    """Rows (run metadata) matching a filter {column: [values]}."""
    return [r for r in rows if row_matches(r, flt)]


def _known_laws() -> set[str]:
    """Names in the law registry (listed without importing the laws or scipy)."""
    from cptlaws.laws import LAWS

    return set(LAWS)
