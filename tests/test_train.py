"""Training engine: exact LR, resume equality, mixture share, determinism, config errors, divergence,
and the PT -> CPT forgetting finding on two synthetic "languages"."""

from __future__ import annotations

import copy
import errno
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cptlaws.data import rows as D
from cptlaws.errors import ConfigError, InputError, TrainingDiverged, TrainingError, TrainingInterrupted
from cptlaws.schedules import lr_array, phase_lrs
from cptlaws.train import KILL_ENV, train, validate_config
from cptlaws.train import checkpoints as C

VOCAB, SEQ = 64, 32


def markov_rows(lang: int, seed: int, n: int, vocab: int = VOCAB, seq: int = SEQ) -> np.ndarray:
    """A low-entropy 'language': each token has 3 possible successors; ``lang`` fixes the grammar."""
    nxt = np.random.default_rng(lang).integers(0, vocab, size=(vocab, 3))
    rng = np.random.default_rng(seed)
    rows = np.empty((n, seq + 1), dtype=np.int64)
    tok = rng.integers(vocab, size=n)
    choice = rng.integers(3, size=(n, seq + 1))
    for j in range(seq + 1):
        rows[:, j] = tok
        tok = nxt[tok, choice[:, j]]
    return rows


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tokens")
    for name, lang in (("general", 1), ("code", 2)):
        D.save_rows(root / name / "train", markov_rows(lang, lang + 10, 300), VOCAB)
        D.save_rows(root / name / "valid", markov_rows(lang, lang + 100, 32), VOCAB)
    return root


def pt_cfg(tok: Path, out: Path, **kw) -> dict:
    cfg = {
        "run_id": "pt",
        "phase": "pt",
        "out_dir": str(out),
        "seed": 0,
        "model": {"preset": "nano"},
        "data": {"general": str(tok / "general")},
        "valid": {"general": str(tok / "general"), "code": str(tok / "code")},
        "batch_size": 8,
        "seq_len": SEQ,
        "steps": 30,
        "eval_every": 5,
        "eval_batches": 2,
        "schedule": {"kind": "wsd", "peak_lr": 1.0e-2, "warmup_steps": 4, "final_lr": 1.0e-3, "decay_fraction": 0.3},
        "checkpoint": {"transfer_steps": [20], "every": 7},
        "runtime": {"threads": 1, "progress": False},
    }
    cfg.update(kw)
    return cfg


def cpt_cfg(tok: Path, out: Path, ckpt: Path, **kw) -> dict:
    cfg = pt_cfg(
        tok,
        out,
        run_id="cpt",
        phase="cpt",
        steps=25,
        data={"general": str(tok / "general"), "domain": str(tok / "code"), "ratio": 0.75},
        schedule={"kind": "cosine", "peak_lr": 5.0e-3, "warmup_steps": 3, "warmup_init": "pt_end", "final_lr": 5.0e-4},
        checkpoint={"every": 6},
    )
    cfg["init"] = {"checkpoint": str(ckpt), "optimizer": "keep"}
    cfg.update(kw)
    return cfg


def read(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    return (
        pd.read_parquet(out / "curve.parquet"),
        pd.read_parquet(out / "trainlog.parquet"),
        json.loads((out / "meta.json").read_text()),
    )


@pytest.fixture(scope="module")
def pt_run(tok, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "pt"
    train(pt_cfg(tok, out))
    return out


# ---------------------------------------------------------------------------------------------------- LR
def test_pt_outputs_and_exact_lr(pt_run):
    curve, tlog, meta = read(pt_run)
    spec = pt_cfg(Path("."), Path("."))["schedule"]
    lrs = lr_array(spec, 30)
    assert tlog["step"].tolist() == list(range(1, 31))
    assert np.array_equal(tlog["lr"].to_numpy(), lrs)  # bitwise, not approx
    assert tlog["tokens"].tolist() == [8 * SEQ * s for s in range(1, 31)]
    assert list(curve.columns) == ["run_id", "phase", "step", "tokens", "lr", "split", "loss"]
    assert sorted(curve["step"].unique()) == [0, 5, 10, 15, 20, 25, 30]
    assert set(curve[curve.step == 0]["split"]) == {"general", "code"}  # init: validation only
    assert set(curve[curve.step == 30]["split"]) == {"general", "code", "train"}
    later = curve[curve.step > 0]
    assert np.array_equal(later["lr"].to_numpy(), lrs[later["step"].to_numpy() - 1])
    # the curve's train rows are the trainlog's losses at eval steps
    tr = later[later.split == "train"].set_index("step")["loss"]
    assert np.array_equal(tr.to_numpy(), tlog.set_index("step").loc[tr.index, "train_loss"].to_numpy())
    assert meta["status"] == "ok" and meta["n_nonembed"] > 0 and meta["tokens"] == 30 * 8 * SEQ
    import hashlib

    assert meta["lr_history_sha256"] == hashlib.sha256(lrs.astype("<f8").tobytes()).hexdigest()
    g = curve[curve.split == "general"].sort_values("step")["loss"].to_numpy()
    assert g[-1] < g[0] - 0.5  # it learns
    # transfer checkpoint kept, periodic ones removed at the end; a copy of the outputs in ckpt/final
    assert sorted(p.name for p in (pt_run / "ckpt").iterdir()) == ["final", "step_20"]
    for name in ("curve.parquet", "trainlog.parquet", "meta.json"):
        assert (pt_run / "ckpt" / "final" / name).read_bytes() == (pt_run / name).read_bytes()


def test_cpt_exact_lr_and_branch_point(tok, pt_run, tmp_path):
    out = tmp_path / "cpt"
    cfg = cpt_cfg(tok, out, pt_run / "ckpt" / "step_20")
    train(cfg)
    curve, tlog, meta = read(out)
    pt_spec = pt_cfg(tok, out)["schedule"]
    full = phase_lrs(pt_spec, 30, 20, cfg["schedule"], 25)
    assert tlog["step"].tolist() == list(range(21, 46))
    assert np.array_equal(tlog["lr"].to_numpy(), full[20:])
    assert tlog["lr"].iloc[0] == full[19] + (5.0e-3 - full[19]) / 3  # warm-up starts from the PT end LR
    assert tlog["tokens"].iloc[0] == 21 * 8 * SEQ
    first = curve[curve.step == 20]
    assert set(first["split"]) == {"general", "code"} and (first["lr"] == full[19]).all()
    # the branch point equals the PT run's own evaluation at step 20
    pt_curve = read(pt_run)[0]
    for split in ("general", "code"):
        a = first[first.split == split]["loss"].item()
        b = pt_curve[(pt_curve.step == 20) & (pt_curve.split == split)]["loss"].item()
        assert a == b
    assert meta["lr_history_len"] == 45 and meta["final_step"] == 45


# ---------------------------------------------------------------------------------------------------- resume
class Killed(BaseException):
    pass


def _kill_at(step):
    def hook(g):
        if g == step:
            raise Killed

    return hook


@pytest.mark.parametrize("kill_steps", [[7], [9, 16], [29]])
def test_kill_and_resume_is_bitwise_identical(tok, pt_run, tmp_path, kill_steps):
    out = tmp_path / "resumed"
    cfg = pt_cfg(tok, out)
    for k in kill_steps:
        with pytest.raises(Killed):
            train(cfg, after_step=_kill_at(k))
        assert not (out / "curve.parquet").exists() and not (out / "meta.json").exists()
    # debris of a kill during a checkpoint write is ignored
    (out / "ckpt" / ".tmp-step_99-1").mkdir(parents=True, exist_ok=True)
    (out / "ckpt" / "step_29").mkdir()  # incomplete (no state.pt): not a resume point
    train(cfg)
    c1, t1, m1 = read(pt_run)
    c2, t2, m2 = read(out)
    pd.testing.assert_frame_equal(c1, c2, check_exact=True)
    pd.testing.assert_frame_equal(t1, t2, check_exact=True)
    assert m2["resumed_from"] and m2["status"] == "ok"
    a = torch.load(pt_run / "ckpt/step_20/state.pt", weights_only=False)["model"]
    b = torch.load(out / "ckpt/step_20/state.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_hard_kill_subprocess_and_resume(tok, pt_run, tmp_path):
    """A real process death (os._exit, no cleanup) mid-run, then `cptlaws train` again."""
    out = tmp_path / "killed"
    cfg_path = tmp_path / "run.json"
    cfg_path.write_text(json.dumps(pt_cfg(tok, out)))
    cmd = [sys.executable, "-m", "cptlaws.cli", "train", str(cfg_path)]
    env = dict(os.environ, **{KILL_ENV: "17"})
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 137, r.stderr
    assert (out / "ckpt" / "step_14").is_dir() and not (out / "meta.json").exists()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    c1, t1, _ = read(pt_run)
    c2, t2, m2 = read(out)
    pd.testing.assert_frame_equal(c1, c2, check_exact=True)
    pd.testing.assert_frame_equal(t1, t2, check_exact=True)
    assert m2["resumed_from"] == [14]


def _killed_with_two_checkpoints(tok, out) -> dict:
    cfg = pt_cfg(tok, out, checkpoint={"transfer_steps": [20], "every": 7, "keep_last": 2})
    with pytest.raises(Killed):
        train(cfg, after_step=_kill_at(16))
    assert [s for s, _ in C.ckpt_dirs(out)] == [7, 14]
    return cfg


@pytest.mark.parametrize("damage", ["truncated_state", "empty_meta", "both"])
def test_a_damaged_newest_checkpoint_is_moved_aside_and_resume_uses_the_older(tok, pt_run, tmp_path, capsys, damage):
    """issue 15 item 3: on main a truncated state.pt gave 'PytorchStreamReader failed reading zip archive'
    naming no file on every retry, an emptied meta.json 'Expecting value: line 1 column 1'."""
    out = tmp_path / "r"
    cfg = _killed_with_two_checkpoints(tok, out)
    newest = out / "ckpt" / "step_14"
    if damage != "empty_meta":
        data = (newest / "state.pt").read_bytes()
        (newest / "state.pt").write_bytes(data[: len(data) // 2])
    if damage != "truncated_state":
        (newest / "meta.json").write_text("")
    capsys.readouterr()
    train(cfg)
    err = capsys.readouterr().err
    bad = newest / ("state.pt" if damage == "truncated_state" else "meta.json")
    assert f"warning: {'checkpoint file ' if damage == 'truncated_state' else ''}{bad}:" in err, err
    assert ("unreadable" if damage == "truncated_state" else "invalid JSON") in err
    assert "moved aside" in err and (out / "ckpt" / "step_14.corrupt").is_dir() and not newest.exists()
    c1, t1, _ = read(pt_run)
    c2, t2, m2 = read(out)
    assert m2["resumed_from"] == [7] and m2["status"] == "ok"
    pd.testing.assert_frame_equal(c1, c2, check_exact=True)  # = the run resumed from step 7 = the uninterrupted one
    pd.testing.assert_frame_equal(t1, t2, check_exact=True)


def test_no_intact_checkpoint_is_a_clear_error_naming_the_dir(tok, tmp_path):
    out = tmp_path / "r"
    cfg = _killed_with_two_checkpoints(tok, out)
    for _, p in C.ckpt_dirs(out):
        (p / "state.pt").write_bytes(b"")
    with pytest.raises(TrainingError, match=rf"no intact checkpoint in {out / 'ckpt'} \(damaged, moved aside: "
                       r"step_14.corrupt, step_7.corrupt\); training again starts the run over"):  # fmt: skip
        train(cfg)
    assert train(cfg)["resumed_from"] == []  # started over


def test_a_damaged_cpt_init_checkpoint_names_the_file(tok, tmp_path):
    pt_out = tmp_path / "pt"
    train(pt_cfg(tok, pt_out, steps=10, checkpoint={"transfer_steps": [10]}))
    st = pt_out / "ckpt" / "step_10" / "state.pt"
    st.write_bytes(st.read_bytes()[:1000])
    with pytest.raises(InputError, match=rf"checkpoint file {st}: unreadable \(.*truncated or damaged\?\)"):
        train(cpt_cfg(tok, tmp_path / "cpt", pt_out / "ckpt" / "step_10", steps=5, checkpoint={}))


@pytest.mark.parametrize(
    "what, exc, want",
    [
        ("torch.save", RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 1142272 vs 1142224"),
         r"{ck}/state\.pt: the write failed \(.*unexpected pos.*\); no space left on the device\? "
         r"\(\d+\.\d MiB free there\)"),
        ("tempfile.mkdtemp", OSError(errno.EROFS, "Read-only file system"), r"{ck}: read-only file system"),
        ("tempfile.mkdtemp", OSError(errno.EACCES, "Permission denied"), r"{ck}: permission denied"),
    ],
    ids=["full_disk", "read_only", "no_permission"],
)  # fmt: skip
def test_a_refused_checkpoint_write_is_one_line_naming_the_path(tok, tmp_path, monkeypatch, capsys, what, exc, want):
    """On main a full disk gave torch's 'unexpected pos 1142272 vs 1142224' with no word of space."""
    import tempfile

    from cptlaws.cli import main

    out = tmp_path / "r"
    cfg_path = tmp_path / "run.json"
    cfg_path.write_text(json.dumps(pt_cfg(tok, out, steps=10, checkpoint={"every": 5})))
    real = getattr(torch if what == "torch.save" else tempfile, what.split(".")[1])

    def refuse(*a, **k):
        if what == "torch.save" or "step_5" in str(k.get("prefix", "")):
            raise exc
        return real(*a, **k)

    monkeypatch.setattr(what, refuse)
    capsys.readouterr()
    assert main(["train", str(cfg_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    pattern = "cptlaws train: error: cannot write " + want.replace("{ck}", re.escape(str(out / "ckpt" / "step_5")))
    assert len(err.splitlines()) == 1 and re.fullmatch(pattern, err), err


def test_a_refused_output_write_is_a_storage_error(tmp_path, monkeypatch):
    from cptlaws.errors import StorageError
    from cptlaws.io import write_json

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(StorageError, match=rf"cannot write {tmp_path / 'meta.json'}: no space left on the device \("):
        write_json(tmp_path / "meta.json", {"a": 1})
    assert not list(tmp_path.iterdir())  # no temporary file left behind


def test_resume_refuses_checkpoints_of_another_config(tok, tmp_path):
    out = tmp_path / "r"
    with pytest.raises(Killed):
        train(pt_cfg(tok, out), after_step=_kill_at(8))
    other = pt_cfg(tok, out, seed=1)
    with pytest.raises(ConfigError, match="seed"):
        train(other)
    train(other, resume=False)  # --no-resume starts over
    assert read(out)[2]["config"]["seed"] == 1


def test_deterministic_same_seed_and_finished_run_is_not_redone(tok, pt_run, tmp_path):
    out = tmp_path / "again"
    train(pt_cfg(tok, out))
    pd.testing.assert_frame_equal(read(pt_run)[0], read(out)[0], check_exact=True)
    mtime = (out / "meta.json").stat().st_mtime_ns
    train(pt_cfg(tok, out))
    assert (out / "meta.json").stat().st_mtime_ns == mtime
    out2 = tmp_path / "seed1"
    train(pt_cfg(tok, out2, seed=1, steps=5, checkpoint={}))
    assert not np.array_equal(read(out2)[1]["train_loss"], read(pt_run)[1]["train_loss"][:5])


# ---------------------------------------------------------------------------------------------------- data
@pytest.mark.parametrize(
    "ratio,batch,expected",
    [(0.5, 8, 4), (0.5, 5, 3), (0.25, 6, 2), (0.1, 8, 1), (0.0, 8, 0), (1.0, 7, 7), (0.3, 16, 5)],
)
def test_exact_mixture_share(ratio, batch, expected):
    general = torch.arange(0, 50).reshape(-1, 1).repeat(1, 5)  # ids < 50 are general
    domain = torch.arange(100, 123).reshape(-1, 1).repeat(1, 5)  # ids >= 100 are domain
    s = D.MixtureSampler(general, domain, ratio, batch, seed=3)
    assert D.n_domain_rows(ratio, batch) == expected
    seen = {"g": [], "d": []}
    for _ in range(40):
        rows, nd = s.next_batch()
        assert nd == expected and rows.shape == (batch, 5)
        is_dom = rows[:, 0] >= 100
        assert int(is_dom.sum()) == expected and bool(is_dom[:expected].all())
        seen["d"] += rows[:expected, 0].tolist()
        seen["g"] += rows[expected:, 0].tolist()
    # epochs: every row is used once before any row repeats
    if expected:
        assert sorted(seen["d"][:23]) == list(range(100, 123))
    if batch - expected:
        assert sorted(seen["g"][:50]) == list(range(50))


def test_sampler_cursor_resumes_the_same_stream():
    g, d = torch.arange(37).reshape(-1, 1), torch.arange(100, 111).reshape(-1, 1)
    a = D.MixtureSampler(g, d, 0.5, 6, seed=0)
    for _ in range(9):
        a.next_batch()
    b = D.MixtureSampler(g, d, 0.5, 6, seed=0)
    b.load_state_dict(a.state_dict())
    for _ in range(12):
        assert torch.equal(a.next_batch()[0], b.next_batch()[0])
    c = D.MixtureSampler(g, d, 0.5, 6, seed=1)
    assert not torch.equal(D.MixtureSampler(g, d, 0.5, 6, seed=0).next_batch()[0], c.next_batch()[0])


def test_trained_batches_have_the_exact_share(tok, pt_run, tmp_path):
    """In a real CPT run, the sampler's cursors advance by exactly n_domain / n_general rows per step."""
    out = tmp_path / "share"
    train(cpt_cfg(tok, out, pt_run / "ckpt" / "step_20", steps=12, checkpoint={"transfer_steps": [32]}))
    st = torch.load(out / "ckpt/step_32/state.pt", weights_only=False)["sampler"]["streams"]
    pt_st = torch.load(pt_run / "ckpt/step_20/state.pt", weights_only=False)["sampler"]["streams"]
    rows = lambda s: s["epoch"] * s["n_rows"] + s["pos"]  # noqa: E731
    assert rows(st["domain"]) == 12 * 6
    assert rows(st["general"]) - rows(pt_st["general"]) == 12 * 2  # replay continues the PT stream


def test_validation_rows_are_fixed():
    rows = torch.arange(100).reshape(50, 2)
    assert torch.equal(D.validation_rows(rows, 3, 4), rows[:12])
    assert torch.equal(D.validation_rows(rows, 30, 4), rows)


def test_load_rows_checks_width(tok):
    with pytest.raises(D.DataError, match="seq_len"):
        D.load_rows(tok / "general", "train", seq_len=16, key="data.general")
    assert D.load_rows(tok / "general", "valid", seq_len=SEQ).shape == (32, SEQ + 1)


# ---------------------------------------------------------------------------------------------------- config
def _set(cfg, dotted, value):
    *head, last = dotted.split(".")
    d = cfg
    for k in head:
        d = d.setdefault(k, {})
    if value is KeyError:
        d.pop(last, None)
    else:
        d[last] = value


BAD = [
    ("bogus", 1, "bogus"),
    ("steps", "100", "steps"),
    ("steps", 0, "steps"),
    ("batch_size", 2.5, "batch_size"),
    ("seed", True, "seed"),
    ("data.ratio", 1.5, "data.ratio"),
    ("data.ratio", -0.1, "data.ratio"),
    ("data.ratio", 0.5, "data.domain"),  # PT with a domain share but no domain data
    ("data.general", "/nonexistent/tokens", "data.general"),
    ("valid.code", "/nonexistent/valid", "valid.code"),
    ("valid.train", "/tmp", "valid.train"),
    ("schedule.peak_lr", "1e-5", "1.0e-5"),
    ("schedule.kind", "triangle", "kind"),
    ("schedule.warmup_steps", 500, "warmup_steps"),
    ("schedule", KeyError, "schedule"),
    ("optim.weight_decay", "0.1", "optim.weight_decay"),
    ("optim.betas", [0.9], "optim.betas"),
    ("optim.betas", [0.9, 1.0], "optim.betas[1]"),
    ("optim.momentum", 0.9, "optim.momentum"),
    ("model.preset", "huge", "model.preset"),
    ("model.hidden_size", -4, "model.hidden_size"),
    ("runtime.device", "tpu", "runtime.device"),
    ("runtime.threads", 0, "runtime.threads"),
    ("checkpoint.transfer_steps", [31], "checkpoint.transfer_steps[0]"),
    ("checkpoint.every", "often", "checkpoint.every"),
    ("run_id", "a b", "run_id"),
    ("phase", "sft", "phase"),
    ("init", {"checkpoint": "/tmp"}, "init"),  # init on a PT run
]


@pytest.mark.parametrize("key,value,needle", BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_bad_config_names_the_key(tok, tmp_path, key, value, needle):
    cfg = copy.deepcopy(pt_cfg(tok, tmp_path / "x"))
    _set(cfg, key, value)
    with pytest.raises(ValueError) as ei:
        validate_config(cfg, "run.yaml")
    assert needle in str(ei.value)
    assert "run.yaml" in str(ei.value)


def test_bad_cpt_configs_name_the_key(tok, pt_run, tmp_path):
    base = cpt_cfg(tok, tmp_path / "c", pt_run / "ckpt" / "step_20")
    cases = [
        ("init.checkpoint", str(tmp_path), "init.checkpoint"),  # not a checkpoint dir
        ("init.transfer_step", 10, "init.transfer_step"),  # checkpoint is at 20
        ("init.pt_steps", 40, "init.pt_steps"),  # differs from the PT run
        ("init.optimizer", "reset", "init.optimizer"),
        ("data.ratio", KeyError, "data.ratio"),
        ("model.preset", "tiny", "model"),  # differs from the checkpoint's model
        ("schedule.peak_lr", "pt_end", "schedule"),  # fine: continue at the PT end LR
    ]
    for key, value, needle in cases:
        cfg = copy.deepcopy(base)
        _set(cfg, key, value)
        if key == "schedule.peak_lr":
            validate_config(cfg)
            continue
        with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
            validate_config(cfg)
    cfg = copy.deepcopy(base)
    del cfg["init"]
    with pytest.raises(ConfigError, match="'init'"):
        validate_config(cfg)


def test_cli_reports_bad_config_in_one_line(tok, tmp_path):
    import yaml

    cfg = pt_cfg(tok, tmp_path / "o")
    cfg["schedule"]["peak_lr"] = "1e-3"
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(cfg))
    from cptlaws.cli import main

    assert main(["train", str(p)]) == 2


# ---------------------------------------------------------------------------------------------------- divergence
def test_divergence_stops_cleanly_and_keeps_the_curve(tok, tmp_path):
    out = tmp_path / "div"
    cfg = pt_cfg(
        tok,
        out,
        steps=40,
        eval_every=2,
        checkpoint={},
        schedule={"kind": "constant", "peak_lr": 1.0e25},
        optim={"grad_clip": 0.0},
    )
    with pytest.raises(TrainingDiverged, match="diverged at step") as ei:
        train(cfg)
    curve, tlog, meta = read(out)
    assert meta["status"] == "diverged" and meta["diverged_at_step"] == ei.value.step
    last = tlog.iloc[-1]
    assert last["step"] == ei.value.step < 40
    assert not (np.isfinite(last["train_loss"]) and np.isfinite(last["grad_norm"]))
    assert np.isfinite(tlog[["train_loss", "grad_norm"]].iloc[:-1].to_numpy()).all()
    # the curve so far is kept: every eval before the diverged step, all finite
    assert (curve["step"] == 0).any() and (curve["step"] < ei.value.step).all()
    assert np.isfinite(curve["loss"]).all()


def _blow_up(tok, out, **kw):
    """A PT run at peak LR 10 with the default grad_clip 1.0: its loss climbs to ~260 nats (ln 64 = 4.16 at
    init) and stays finite: on main it finished with status 'ok' (issue 15 item 1)."""
    base = dict(steps=30, eval_every=5, checkpoint={}, schedule={"kind": "constant", "peak_lr": 10.0})
    return pt_cfg(tok, out, **{**base, **kw})


def test_a_finite_loss_blow_up_stops_the_run_as_diverged(tok, tmp_path):
    out = tmp_path / "blow"
    with pytest.raises(TrainingDiverged, match=r"diverged at step 10 \(validation loss on '\w+' .* at step 5, "
                       r".* at step 10: above 6\.1\d* = max\(its start .*above_uniform 2") as ei:  # fmt: skip
        train(_blow_up(tok, out))
    assert ei.value.step == 10
    curve, tlog, meta = read(out)
    assert meta["status"] == "diverged" and meta["diverged_at_step"] == 10
    ev = meta["divergence"]
    assert ev["rule"] == "above_uniform" and ev["steps"] == [5, 10] and ev["series"] in ("general", "code")
    assert min(ev["losses"]) > ev["limit"] == pytest.approx(max(ev["start"], np.log(VOCAB)) + 2.0)
    assert np.isfinite(curve["loss"]).all() and curve["step"].max() == 10 and len(tlog) == 10


def test_the_divergence_rule_spares_normal_runs_and_can_be_off(tok, tmp_path):
    assert train(pt_cfg(tok, tmp_path / "normal", checkpoint={}))["status"] == "ok"
    meta = train(_blow_up(tok, tmp_path / "off", divergence={"enabled": False}))
    assert meta["status"] == "ok" and max(read(tmp_path / "off")[0]["loss"]) > 100  # what main reported as good


def test_a_resumed_run_diverges_where_an_uninterrupted_one_does(tok, tmp_path):
    """The rule replays the evaluations in the checkpoint's logs: killed at step 7 (after the eval at step 5,
    which is over the limit), the resumed run stops at step 10 too, not at 15."""
    out = tmp_path / "resumed"
    cfg = _blow_up(tok, out, checkpoint={"every": 7})
    with pytest.raises(Killed):
        train(cfg, after_step=_kill_at(7))
    with pytest.raises(TrainingDiverged) as ei:
        train(cfg)
    assert ei.value.step == 10 and read(out)[2]["divergence"]["steps"] == [5, 10]
    assert read(out)[2]["resumed_from"] == [7]


def test_divergence_settings_are_checked_and_do_not_change_the_resume_hash(tok, tmp_path):
    from cptlaws.train.config import config_hash

    with pytest.raises(ConfigError, match=r"key 'divergence.patience' = 0: must be >= 1"):
        validate_config(pt_cfg(tok, tmp_path, divergence={"patience": 0}))
    a = validate_config(pt_cfg(tok, tmp_path))
    b = validate_config(pt_cfg(tok, tmp_path, divergence={"above_uniform": 5.0}))
    assert a["divergence"] == {"enabled": True, "above_uniform": 2.0, "train_rise": 1.0, "patience": 2}
    assert config_hash(a) == config_hash(b)


# ---------------------------------------------------------------------------------------------------- CPT finding
def test_cpt_forgets_general_and_learns_domain(tok, tmp_path):
    """PT on language 1, CPT on a 75 % language-2 mixture: the general loss rises from its PT value while
    the domain loss falls (the paper's qualitative finding, on synthetic languages)."""
    pt_out, cpt_out = tmp_path / "pt", tmp_path / "cpt"
    train(
        pt_cfg(
            tok,
            pt_out,
            steps=60,
            eval_every=10,
            checkpoint={"transfer_steps": [60]},
            schedule={"kind": "constant", "peak_lr": 1.0e-2, "warmup_steps": 5},
        )
    )
    train(
        cpt_cfg(
            tok,
            cpt_out,
            pt_out / "ckpt" / "step_60",
            steps=40,
            eval_every=10,
            checkpoint={},
            schedule={"kind": "constant", "peak_lr": 1.0e-2},
            init={"checkpoint": str(pt_out / "ckpt" / "step_60"), "optimizer": "fresh"},
        )
    )
    pt_curve, cpt_curve = read(pt_out)[0], read(cpt_out)[0]
    at = lambda c, s, split: c[(c.step == s) & (c.split == split)]["loss"].item()  # noqa: E731
    g_pt, d_pt = at(pt_curve, 60, "general"), at(pt_curve, 60, "code")
    assert at(pt_curve, 60, "general") < at(pt_curve, 0, "general") - 1.0  # PT learned language 1
    assert at(cpt_curve, 60, "general") == g_pt
    assert at(cpt_curve, 100, "general") > g_pt + 0.05
    assert at(cpt_curve, 100, "code") < d_pt - 1.0


def test_micro_batches_accumulate_to_the_same_run(tok, pt_run, tmp_path):
    # gradient accumulation over 4 micro-batches of 2 rows = one batch of 8 (up to float summation order)
    out = tmp_path / "micro"
    train(pt_cfg(tok, out, runtime={"threads": 1, "progress": False, "micro_batch": 2}))
    a, b = read(pt_run), read(out)
    np.testing.assert_allclose(b[0]["loss"], a[0]["loss"], rtol=2e-4)
    np.testing.assert_allclose(b[1]["train_loss"], a[1]["train_loss"], rtol=2e-4)
    with pytest.raises(ConfigError, match="runtime.micro_batch"):
        train(pt_cfg(tok, tmp_path / "bad", runtime={"threads": 1, "progress": False, "micro_batch": 3}))


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_bf16_on_cpu_tracks_the_fp32_run(tok, pt_run, tmp_path, compiled):
    # the fast CPU path (bf16 autocast with fp32 attention, optionally torch.compile) trains the same model
    out = tmp_path / "bf16"
    train(pt_cfg(tok, out, runtime={"threads": 1, "progress": False, "dtype": "bfloat16", "compile": compiled}))
    curve, log, meta = read(out)
    ref = read(pt_run)[0]
    assert meta["dtype"] == "bfloat16" and meta["attention"] == "cptlaws_sdpa_fp32" and meta["compile"] is compiled
    merged = curve.merge(ref, on=["step", "split"], suffixes=("", "_fp32"))
    assert len(merged) == len(curve) == len(ref) and np.isfinite(curve["loss"]).all()
    np.testing.assert_allclose(merged["loss"], merged["loss_fp32"], rtol=0.01)  # measured: 0.08 %
    first, last = log["train_loss"].iloc[0], log["train_loss"].iloc[-1]
    assert last < first - 0.5  # it learns


@pytest.mark.parametrize(
    "lost", [["curve.parquet", "trainlog.parquet", "meta.json"], ["curve.parquet"]], ids=["all", "one"]
)
def test_finished_run_whose_outputs_were_deleted_is_restored_without_training(tok, pt_run, tmp_path, lost):
    # Snakemake deletes the outputs of a job that fails after training finished (e.g. its epilogue crossed the
    # SLURM time limit: TIMEOUT); the periodic checkpoints are gone by then, so the retry must not train again
    out = tmp_path / "finished"
    tok = Path(shutil.copytree(tok, tmp_path / "tok"))  # its mtimes are touched below
    cfg = pt_cfg(tok, out)
    train(cfg)
    for name in lost:
        (out / name).unlink()

    def no_training(g):
        raise AssertionError(f"step {g} trained again")

    meta = train(cfg, after_step=no_training)
    c1, t1, m1 = read(pt_run)
    c2, t2, m2 = read(out)
    pd.testing.assert_frame_equal(c1, c2, check_exact=True)
    pd.testing.assert_frame_equal(t1, t2, check_exact=True)
    assert m2["status"] == "ok" and m2["outputs_restored"] == 1 and meta["outputs_restored"] == 1
    # newer input data (Snakemake reruns the job on purpose): no restore, it trains again
    (out / "curve.parquet").unlink()
    newer = time.time() + 5
    for f in (tok / "general").rglob("*"):
        os.utime(f, (newer, newer))
    with pytest.raises(AssertionError, match="trained again"):
        train(cfg, after_step=no_training)
    train(cfg)
    assert "outputs_restored" not in read(out)[2]
    # another config's final copy is never restored: that run trains (and meets the old checkpoints)
    for name in ("curve.parquet", "trainlog.parquet", "meta.json"):
        (out / name).unlink()
    with pytest.raises(ConfigError, match="different config"):
        train(pt_cfg(tok, out, steps=31), after_step=no_training)
    assert not (out / "meta.json").exists()


def test_compiled_fp32_tracks_the_eager_run_and_resumes(tok, pt_run, tmp_path):
    # torch.compile of the whole loss (model + float cast + cross-entropy) changes kernels, not the math
    out = tmp_path / "compiled"
    cfg = pt_cfg(tok, out, runtime={"threads": 1, "progress": False, "compile": True})
    with pytest.raises(Killed):
        train(cfg, after_step=_kill_at(10))
    train(cfg)  # resumes from the step-7 checkpoint
    curve, log, meta = read(out)
    ref, ref_log = read(pt_run)[:2]
    assert meta["compile"] is True and meta["dtype"] == "float32" and meta["resumed_from"] == [7]
    merged = curve.merge(ref, on=["step", "split"], suffixes=("", "_eager"))
    assert len(merged) == len(curve) == len(ref)
    np.testing.assert_allclose(merged["loss"], merged["loss_eager"], rtol=1e-4)
    np.testing.assert_allclose(log["train_loss"], ref_log["train_loss"], rtol=1e-4)
    assert np.array_equal(log["lr"], ref_log["lr"])


@pytest.mark.parametrize("at", [12, 14], ids=["between-checkpoints", "on-a-checkpoint"])
def test_sigterm_checkpoints_and_resumes_bitwise(tok, pt_run, tmp_path, at):
    # SLURM's time limit / preemption: SIGTERM -> checkpoint the step in progress, stop, resume exactly there
    import signal

    out = tmp_path / "term"

    def term(g):
        if g == at:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted, match=r"SIGTERM after step \d+") as exc:
        train(pt_cfg(tok, out), after_step=term)
    assert exc.value.step == at + 1 and exc.value.signum == signal.SIGTERM
    assert (out / "ckpt" / f"step_{at + 1}" / "state.pt").is_file()
    assert json.loads((out / "meta.json").read_text())["status"] == "interrupted"
    assert read(out)[0]["step"].max() <= at + 1  # the curve so far is kept
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    train(pt_cfg(tok, out))
    a, b = read(pt_run), read(out)
    assert b[2]["resumed_from"] == [at + 1]
    pd.testing.assert_frame_equal(a[0], b[0], check_exact=True)
    pd.testing.assert_frame_equal(a[1], b[1], check_exact=True)


def test_cli_exits_143_on_sigterm(tok, tmp_path):
    import signal
    import time

    out = tmp_path / "cli"
    cfg = pt_cfg(tok, out, steps=5000, eval_every=1000, checkpoint={"every": 300, "transfer_steps": [], "keep_last": 5})
    path = tmp_path / "run.json"
    path.write_text(json.dumps(cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "cptlaws.cli", "train", str(path), "--no-progress"], stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 180
    while not (out / "ckpt" / "step_300").is_dir():  # the loop is running
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "interrupted" in err and "SIGTERM" in err
    last = max(int(p.name[5:]) for p in (out / "ckpt").glob("step_*"))
    # a signal during the step-300 save stops at 300 itself
    assert 300 <= last < 5000 and json.loads((out / "meta.json").read_text())["interrupted_at_step"] == last
