"""DDP on CPU: two gloo processes under torchrun, same global batch -> the same curve within tolerance."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from test_train import VOCAB, markov_rows, pt_cfg

from cptlaws.data import rows as D
from cptlaws.train import train


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp_tokens")
    for name, lang in (("general", 1), ("code", 2)):
        D.save_rows(root / name / "train", markov_rows(lang, lang + 10, 200), VOCAB)
        D.save_rows(root / name / "valid", markov_rows(lang, lang + 100, 16), VOCAB)
    return root


@pytest.mark.parametrize(
    "micro,compiled", [(0, False), (2, False), (2, True)], ids=["whole", "micro2", "micro2-compiled"]
)
def test_ddp_two_gloo_processes_match_single_process(tok, tmp_path, micro, compiled):
    # micro2: each process accumulates 2 micro-batches of 2 rows and all-reduces once, at the last;
    # compiled: torch.compile of the loss around the DDP module (no_sync included) in both runs
    kw = dict(steps=12, eval_every=4, checkpoint={"transfer_steps": [8]})
    single = tmp_path / "single"
    train(pt_cfg(tok, single, **kw, runtime={"threads": 1, "progress": False, "compile": compiled}))
    ddp = tmp_path / "ddp"
    cfg_path = tmp_path / "ddp.json"
    cfg_path.write_text(
        json.dumps(
            pt_cfg(
                tok,
                ddp,
                run_id="pt",
                **kw,
                runtime={"threads": 1, "progress": False, "micro_batch": micro, "compile": compiled},
            )
        )
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "-m",
        "cptlaws.cli",
        "train",
        str(cfg_path),
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    meta = json.loads((ddp / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["status"] == "ok" and meta["compile"] is compiled
    a, b = pd.read_parquet(single / "curve.parquet"), pd.read_parquet(ddp / "curve.parquet")
    assert a[["step", "tokens", "lr", "split"]].equals(b[["step", "tokens", "lr", "split"]])
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=2e-4, atol=2e-5)
    ta, tb = pd.read_parquet(single / "trainlog.parquet"), pd.read_parquet(ddp / "trainlog.parquet")
    assert np.array_equal(ta["lr"], tb["lr"]) and np.array_equal(ta["tokens"], tb["tokens"])
    np.testing.assert_allclose(tb["train_loss"], ta["train_loss"], rtol=2e-4, atol=2e-5)
    # the learning is real, not two copies of a no-op
    g = b[b.split == "general"]["loss"].to_numpy()
    assert g[-1] < g[0] - 0.3
    assert (ddp / "ckpt" / "step_8" / "state.pt").is_file()


def test_ddp_sigterm_checkpoints_one_agreed_step_and_resumes(tok, tmp_path):
    # torchrun forwards SIGTERM (a SLURM time limit) to both processes; they agree on one stop step
    import signal
    import time

    out = tmp_path / "ddp"
    cfg = pt_cfg(tok, out, steps=1500, eval_every=500, checkpoint={"every": 100, "transfer_steps": [], "keep_last": 20})
    path = tmp_path / "ddp.json"
    path.write_text(json.dumps(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "-m",
        "cptlaws.cli",
        "train",
        str(path),
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not (out / "ckpt" / "step_100").is_dir():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, log[-3000:]
    meta = json.loads((out / "meta.json").read_text()) if (out / "meta.json").exists() else {}
    ck = sorted(int(p.name[5:]) for p in (out / "ckpt").glob("step_*"))
    assert "interrupted" in log and "SIGTERM" in log, (
        proc.returncode,
        meta.get("status"),
        meta.get("interrupted_at_step"),
        ck,
        log[-3000:],
    )
    stop = meta["interrupted_at_step"]
    steps = sorted(int(p.name[5:]) for p in (out / "ckpt").glob("step_*"))
    assert 100 <= stop < 1500 and steps[-1] == stop  # 100 itself when the signal lands during its save, (stop, steps)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "ok" and meta["resumed_from"] == [stop] and meta["final_step"] == 1500
