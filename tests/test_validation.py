"""The last validation gaps of issue 15 item 5: each bad input stops with one clear message, at parse time
where the information exists then (study configs, model shapes, law names), else when the run starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cptlaws.cli import main
from cptlaws.data import rows as D
from cptlaws.errors import ConfigError, DataError
from cptlaws.study.config import load_study

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "config" / "studies" / "smoke.yaml"
VOCAB, SEQ = 64, 16


def smoke() -> dict:
    return yaml.safe_load(SMOKE.read_text())


# ---------------------------------------------------------------------------------------------------- study config
def _set(path: str, value):
    def edit(cfg):
        *parents, last = path.split(".")
        d = cfg
        for k in parents:
            d = d[int(k)] if isinstance(d, list) else d.setdefault(k, {})
        d[last] = value

    return edit


def _size_check(cfg):
    cfg["checks"].append({"name": "size_first_half", "kind": "time", "law": "size", "fraction": 0.5, "threshold": 0.1})


@pytest.mark.parametrize(
    "edit, message",
    [
        (_set("fits.replay.law", "replay_flexx"),
         r"config key 'fits.replay.law': unknown law 'replay_flexx' \(known: cpt, .*replay_flex, "),
        (_set("models.tiny", {"preset": "tinyy"}),
         r"config key 'models.tiny': .*key 'model.preset' = 'tinyy': unknown preset \(one of nano, tiny, "),
        (_set("models.tiny", {"preset": "tiny", "num_heads": 3}),
         r"config key 'models.tiny': .*key 'model.num_heads' = 3: must divide hidden_size 64"),
        (_set("train.runtime.micro_batch", 3),
         r"config key 'train.runtime': .*key 'runtime.micro_batch' = 3: must divide batch_size 8"),
        (_set("fits.cmr.enabled", False),
         r"config key 'checks\[2\].kind': a cmr check compares .* 'fits.cmr.enabled' is false"),
        (_size_check,
         r"config key 'checks\[3\].law': the size law needs runs of at least two model sizes .* have 1 \(tiny"),
    ],
    ids=["unknown_fit_law", "unknown_preset", "heads_not_dividing_width", "micro_batch", "cmr_check_without_cmr",
         "size_check_one_model"],
)  # fmt: skip
def test_a_study_mistake_fails_at_parse_time_naming_the_key(edit, message):
    cfg = smoke()
    edit(cfg)
    with pytest.raises(ConfigError, match=message):
        load_study(cfg)


def test_a_size_check_with_two_model_sizes_passes():
    cfg = smoke()
    cfg["models"]["mini"] = {"preset": "mini"}
    cfg["cpt"]["grids"][0]["model"] = ["tiny", "mini"]
    _size_check(cfg)
    load_study(cfg)


def test_a_float_transfer_step_is_a_step(tmp_path, capsys):
    """`transfer_step: [100.0, 200]` crashed `cptlaws study validate` and Snakemake with an IndexError."""
    cfg = smoke()
    cfg["cpt"]["grids"][1]["transfer_step"] = [100.0, 200]
    p = tmp_path / "study.yaml"
    p.write_text(yaml.safe_dump(cfg))
    assert main(["study", "validate", str(p), "--list"]) == 0
    out = capsys.readouterr().out
    assert "cpt-tiny-code-r1-const-const-T100-s0" in out and "T100.0" not in out
    assert load_study(cfg).runs["cpt-tiny-code-r1-const-const-T100-s0"]["train"]["init"]["transfer_step"] == 100


DUPLICATE = "    cos: {kind: constant, peak_lr: 1.0e-3}\n"


def _with_duplicate_key(tmp_path) -> Path:
    text = SMOKE.read_text()
    anchor = "    const: {kind: constant, peak_lr: 3.0e-3, warmup_steps: 5}\n"
    assert anchor in text
    p = tmp_path / "dup.yaml"
    p.write_text(text.replace(anchor, anchor + DUPLICATE))
    return p


def test_a_yaml_key_written_twice_is_rejected_with_its_line(tmp_path, capsys):
    p = _with_duplicate_key(tmp_path)
    with pytest.raises(ConfigError, match=r"found duplicate key 'cos' \(first written on line \d+\)"):
        load_study(p)
    assert main(["study", "validate", str(p)]) == 2
    assert "duplicate key 'cos'" in capsys.readouterr().err
    # the schedules YAML of `cptlaws fit` / `predict` too
    sched = tmp_path / "sched.yaml"
    sched.write_text("runs:\n  a: {schedule: {kind: constant, peak_lr: 1.0e-3}, steps: 100}\n"
                     "  a: {schedule: {kind: constant, peak_lr: 2.0e-3}, steps: 100}\n")  # fmt: skip
    fit = tmp_path / "fit.json"
    fit.write_text(json.dumps({"law": "lra", "params": {"L0": 2.8, "A": 0.5, "alpha": 0.5, "C": 0.4}, "lam": 0.999}))
    assert main(["predict", str(fit), "--schedules", str(sched), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert f"{sched}: invalid YAML" in err and "duplicate key 'a'" in err and "line 3" in err


@pytest.mark.slow
def test_snakemake_rejects_a_yaml_key_written_twice(tmp_path):
    """Snakemake reads --configfile itself and keeps the second key: the workflow reads the file again."""
    p = _with_duplicate_key(tmp_path)
    cmd = [str(Path(sys.executable).parent / "snakemake"), "--snakefile", str(REPO / "workflow" / "Snakefile"),
           "--directory", str(tmp_path), "--cores", "1", "--dry-run", "--configfile", str(p)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode != 0 and "duplicate key 'cos'" in r.stdout + r.stderr, (r.stdout + r.stderr)[-2000:]


def test_a_cuda_device_passes_parse_time_with_a_note(tmp_path, capsys):
    """A login node without a GPU must parse a GPU study; the GPU is checked on the node."""
    cfg = smoke()
    cfg["train"]["runtime"] = {"device": "cuda"}
    study = load_study(cfg)
    assert study.notes and "checked when each training job starts, on its node" in study.notes[0]
    p = tmp_path / "study.yaml"
    p.write_text(yaml.safe_dump(cfg))
    assert main(["study", "validate", str(p)]) == 0
    assert "note: train.runtime.device = 'cuda'" in capsys.readouterr().out
    assert not load_study(smoke()).notes


# ---------------------------------------------------------------------------------------------------- at train time
@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tokens")
    rng = np.random.default_rng(0)
    D.save_rows(root / "general" / "train", rng.integers(0, VOCAB, (64, SEQ + 1)), VOCAB)
    D.save_rows(root / "general" / "valid", rng.integers(0, VOCAB, (10, SEQ + 1)), VOCAB)
    return root


def run_cfg(tokens: Path, out: Path, **kw) -> dict:
    cfg = {"run_id": "v", "phase": "pt", "out_dir": str(out), "model": {"preset": "nano"},
           "data": {"general": str(tokens / "general")}, "batch_size": 4, "seq_len": SEQ, "steps": 4,
           "eval_every": 2, "eval_batches": 2, "schedule": {"kind": "constant", "peak_lr": 1.0e-3},
           "runtime": {"threads": 1, "progress": False}}  # fmt: skip
    cfg.update(kw)
    return cfg


def test_a_tokenizer_that_disagrees_with_the_token_dir_is_an_error(tokens, tmp_path):
    """On main the data's vocab_size won silently (a 12.9M-parameter model for a 512-token tokenizer)."""
    from cptlaws.data.tokenizer import train_tokenizer
    from cptlaws.train import train

    tok = tmp_path / "tok.json"
    train_tokenizer(None, tok, kind="bytes")
    with pytest.raises(DataError, match=rf"vocabulary sizes disagree: key 'data.general' \({tokens / 'general'}\): "
                       rf"{VOCAB}, key 'valid.general' .*: {VOCAB}, key 'tokenizer' \({tok}\): 258 \(data tokenized "
                       r"with another tokenizer"):  # fmt: skip
        train(run_cfg(tokens, tmp_path / "run", tokenizer=str(tok)))
    with pytest.raises(ConfigError, match=rf"key 'model.vocab_size' = 32: smaller than the vocabulary of .*: {VOCAB}"):
        train(run_cfg(tokens, tmp_path / "run2", model={"preset": "nano", "vocab_size": 32}))


def test_eval_batches_above_the_validation_set_is_said(tokens, tmp_path, capsys):
    from cptlaws.train import train

    train(run_cfg(tokens, tmp_path / "run", eval_batches=5))  # 5 x 4 = 20 rows wanted, the set has 10
    err = capsys.readouterr().err
    assert (
        "key 'valid.general'" in err and "has 10 validation rows, fewer than eval_batches 5 x batch_size 4 = 20" in err
    )
    train(run_cfg(tokens, tmp_path / "run2", eval_batches=2))
    assert "validation rows" not in capsys.readouterr().err


def test_cuda_requested_without_a_gpu_fails_clearly_when_the_run_starts(tokens, tmp_path, monkeypatch):
    import torch

    from cptlaws.train import train

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = run_cfg(tokens, tmp_path / "run")
    cfg["runtime"]["device"] = "cuda"
    with pytest.raises(ConfigError, match=r"key 'runtime.device' = 'cuda': no CUDA device available"):
        train(cfg)


# ---------------------------------------------------------------------------------------------------- CLI inputs
SCHED = "runs:\n  a: {schedule: {kind: cosine, peak_lr: 3.0e-4, warmup_steps: 10, final_lr: 3.0e-5}, steps: 200}\n"


@pytest.fixture()
def fit_inputs(tmp_path):
    sched = tmp_path / "sched.yaml"
    sched.write_text(SCHED)
    return sched, lambda params: _fit_json(tmp_path, params)


def _fit_json(tmp_path: Path, params: dict) -> Path:
    p = tmp_path / "fit.json"
    p.write_text(json.dumps({"law": "lra", "params": params, "lam": 0.999}, allow_nan=True))
    return p


def test_predict_refuses_a_fit_with_a_nan_parameter(fit_inputs, tmp_path, capsys):
    sched, fit_json = fit_inputs
    fit = fit_json({"L0": 2.8, "A": 0.5, "alpha": float("nan"), "C": 0.4})
    out = tmp_path / "p.csv"
    assert main(["predict", str(fit), "--schedules", str(sched), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{fit}: parameter(s) alpha = nan not finite: the fit failed" in err and not out.exists()
    fit = fit_json({"L0": 2.8, "A": 0.5, "alpha": 0.5, "C": 0.4})
    assert main(["predict", str(fit), "--schedules", str(sched), "--out", str(out)]) == 0
    assert np.isfinite(pd.read_csv(out)["pred"]).all()


@pytest.mark.parametrize("command", ["predict", "fit", "cmr"])
def test_out_in_a_missing_directory_is_an_error_and_creates_nothing(fit_inputs, tmp_path, capsys, command):
    sched, fit_json = fit_inputs
    out = tmp_path / "nonexistent" / "p.csv"
    args = {
        "predict": ["predict", str(fit_json({"L0": 2.8, "A": 0.5, "alpha": 0.5, "C": 0.4})), "--schedules", str(sched)],
        "fit": ["fit", str(tmp_path / "curves.csv"), "--schedules", str(sched), "--law", "lra"],
        "cmr": ["cmr", "--params", "0.2,0.3,-0.5", "--T", "100"],
    }[command]
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: directory {out.parent} does not exist" in err
    assert not out.parent.exists()


def test_cmr_counts_rows_from_1_like_fit(tmp_path, capsys):
    rows = [("a", 0.5, t, s, 3.0 - 0.001 * t) for t in (0, 100, 200) for s in ("general", "code")]
    df = pd.DataFrame(rows, columns=["run_id", "ratio", "tokens", "split", "loss"])
    df.loc[2, "loss"] = -1.0  # the third data row
    bad = tmp_path / "bad.csv"
    df.to_csv(bad, index=False)
    assert main(["cmr", str(bad), "--domain-split", "code"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: row 3 (run 'a'): loss = -1.0 must be > 0" in err
    ratios = tmp_path / "ratios.csv"
    pd.DataFrame({"run_id": ["a", "b"], "ratio": ["0.5", "x"]}).to_csv(ratios, index=False)
    assert main(["cmr", str(bad), "--domain-split", "code", "--ratios", str(ratios)]) == 2
    assert f"{ratios}: row 2 (run 'b'): ratio 'x' is not a number" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, message",
    [
        (bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8)), "not a JSON text file (not UTF-8)"),
        (b"[1, 2]", "a fit JSON is an object with law, params and lam, got a list"),
        (b'{"law": "lra", "params": {}, "lam": 0.999}', "law 'lra' needs params"),
    ],
    ids=["random_bytes", "a_list", "no_params"],
)
def test_a_broken_fit_json_names_the_file(fit_inputs, tmp_path, capsys, content, message):
    sched, _ = fit_inputs
    fit = tmp_path / "broken.json"
    fit.write_bytes(content)
    assert main(["predict", str(fit), "--schedules", str(sched), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cptlaws predict: error: {fit}: ") and message in err and len(err.splitlines()) == 1
