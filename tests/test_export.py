"""`cptlaws export RUN --out DIR`: a tiny trained run written as a Hugging Face model directory reloads with
`AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained` to the same eval loss; the errors
name the run and the reason."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from test_train import SEQ, Killed, _kill_at, markov_rows, pt_cfg

from cptlaws.cli import main
from cptlaws.data import rows as D
from cptlaws.data.tokenizer import load_tokenizer, train_tokenizer
from cptlaws.errors import InputError
from cptlaws.train import train
from cptlaws.train.export import EXPORT_META, export_run
from cptlaws.train.run import loss_of

BYTES_VOCAB = 258  # the `bytes` tokenizer: 256 bytes + <eos>, <pad>


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    tok = root / "tokenizer.json"
    train_tokenizer(root, tok, kind="bytes")
    for name, lang in (("general", 1), ("code", 2)):
        D.save_rows(root / name / "train", markov_rows(lang, lang + 10, 200), BYTES_VOCAB)
        D.save_rows(root / name / "valid", markov_rows(lang, lang + 100, 32), BYTES_VOCAB)
    return root, tok


def cfg_for(data, out, **kw):
    root, tok = data
    return pt_cfg(root, out, steps=12, eval_every=4, tokenizer=str(tok), **kw)


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "pt"
    cfg = cfg_for(data, out, checkpoint={"transfer_steps": [12], "every": 5})
    train(cfg)
    return out, cfg


def valid_loss(model, cfg, split):
    """The run's own validation loss (TrainingRun.evaluate on one process, float32 on CPU)."""
    from contextlib import nullcontext

    rows = D.validation_rows(D.load_rows(cfg["valid"][split], "valid", SEQ), cfg["eval_batches"], cfg["batch_size"])
    with torch.no_grad():
        return float(loss_of(model.eval(), rows, "cpu", nullcontext(), "sum").double() / (rows.shape[0] * SEQ))


def test_export_reloads_to_the_same_eval_loss(finished, data, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    run, cfg = finished
    out = tmp_path / "hf"
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert "pt: final weights at step 12" in capsys.readouterr().out
    rec = json.loads((out / EXPORT_META).read_text())
    assert rec["step"] == 12 and rec["finished"] and rec["tokenizer"] == str(data[1])
    assert rec["reload_max_logit_diff"] <= 1e-5
    model = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(model, LlamaForCausalLM) and model.dtype == torch.float32
    assert model.config.vocab_size == BYTES_VOCAB
    curve = pd.read_parquet(run / "curve.parquet")
    for split in ("general", "code"):
        logged = float(curve[(curve.step == 12) & (curve.split == split)]["loss"].iloc[0])
        assert valid_loss(model, cfg, split) == pytest.approx(logged, abs=1e-5), split
    # the weights are the run's final ones (the step-12 checkpoint), bit for bit
    st = torch.load(run / "ckpt" / "step_12" / "state.pt", weights_only=False)["model"]
    sd = model.state_dict()
    assert all(torch.equal(st[k], sd[k]) for k in st)
    # the tokenizer: ours, as a PreTrainedTokenizerFast with <eos> / <pad>
    hf_tok = AutoTokenizer.from_pretrained(out)
    ours = load_tokenizer(data[1])
    text = "def f(x):\n    return x  # <eos> inside text is text"
    assert hf_tok(text)["input_ids"] == ours.encode(text).ids
    assert hf_tok.decode(hf_tok(text)["input_ids"]) == text
    assert hf_tok.eos_token == "<eos>" and hf_tok.pad_token == "<pad>"
    assert model.config.eos_token_id == ours.token_to_id("<eos>")


def test_unfinished_run_exports_its_newest_checkpoint(data, tmp_path):
    out = tmp_path / "killed"
    cfg = cfg_for(data, out, checkpoint={"every": 5})
    with pytest.raises(Killed):
        train(cfg, after_step=_kill_at(7))
    rec = export_run(out, tmp_path / "hf")
    assert rec["step"] == 5 and not rec["finished"]
    from transformers import AutoModelForCausalLM

    st = torch.load(out / "ckpt" / "step_5" / "state.pt", weights_only=False)["model"]
    sd = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").state_dict()
    assert all(torch.equal(st[k], sd[k]) for k in st)


def test_export_errors_name_the_run_and_the_reason(finished, data, tmp_path, capsys):
    run, _ = finished
    # run not found
    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "a")]) == 2
    assert "run directory" in capsys.readouterr().err and not (tmp_path / "a").exists()
    # DIR exists: never overwritten
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert main(["export", str(run), "--out", str(taken)]) == 2
    assert f"output directory {taken} exists" in capsys.readouterr().err
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    # unfinished, no checkpoint: killed before the first one
    early = tmp_path / "early"
    with pytest.raises(Killed):
        train(cfg_for(data, early, checkpoint={"every": 0}), after_step=_kill_at(2))
    with pytest.raises(InputError, match=r"no meta.json and no checkpoint: .*nothing to export"):
        export_run(early, tmp_path / "b")
    # finished, but its final weights were not kept (no transfer step at the end; resume points pruned)
    done = tmp_path / "done"
    train(cfg_for(data, done, checkpoint={"transfer_steps": [5], "every": 3}))
    with pytest.raises(
        InputError, match=r"finished at step 12 but its final weights were not kept \(checkpoints at steps \[5\]\)"
    ):
        export_run(done, tmp_path / "c")
    assert export_run(done, tmp_path / "c", step=5)["step"] == 5
    with pytest.raises(InputError, match=r"no checkpoint at step 7 \(checkpoints at steps \[5\]\)"):
        export_run(done, tmp_path / "d", step=7)
    assert not any((tmp_path / n).exists() for n in ("a", "b", "d"))
    assert not list(tmp_path.glob(".*.tmp-*"))  # no debris of the atomic writes
    assert np.isfinite(json.loads((tmp_path / "c" / EXPORT_META).read_text())["reload_max_logit_diff"])
