"""A model can be a pretrained Hugging Face causal LM (`model.pretrained`, issue 13 item 1): the spec is
checked without touching files, a local model directory loads with the same logits, a hub id offline fails
naming the id and HF_HUB_OFFLINE, a training run starts from the loaded weights, and its export reloads to
the same eval loss. The GGUF part (SmolLM2) needs the `gguf` package, not installed here."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from test_export import BYTES_VOCAB, valid_loss
from test_train import SEQ, markov_rows, pt_cfg

from cptlaws.data import rows as D
from cptlaws.data.tokenizer import train_tokenizer
from cptlaws.errors import ConfigError
from cptlaws.train import train, validate_config
from cptlaws.train.config import config_hash
from cptlaws.train.export import EXPORT_META, export_run, hf_tokenizer
from cptlaws.train.model import build_model, load_pretrained, resolve_model_spec


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A small LlamaForCausalLM (+ tokenizer) saved with save_pretrained, and token data for it."""
    root = tmp_path_factory.mktemp("pretrained")
    tok = root / "tokenizer.json"
    train_tokenizer(root, tok, kind="bytes")
    model = build_model({"preset": "nano"}, BYTES_VOCAB, SEQ, seed=3)
    model.save_pretrained(root / "model")
    hf_tokenizer(tok, SEQ).save_pretrained(root / "model")
    for name, lang in (("general", 1), ("code", 2)):
        D.save_rows(root / name / "train", markov_rows(lang, lang + 10, 200), BYTES_VOCAB)
        D.save_rows(root / name / "valid", markov_rows(lang, lang + 100, 32), BYTES_VOCAB)
    return root, model


@pytest.mark.parametrize(
    "spec, needle",
    [
        ({"pretrained": {"path": "m"}, "preset": "tiny"}, r"'model.preset': a pretrained model takes its shape"),
        ({"pretrained": {"path": "m", "hub_id": "a/b"}}, r"exactly one of path .* and hub_id"),
        ({"pretrained": {}}, r"exactly one of path"),
        ({"pretrained": {"hub_id": "a/b", "branch": "x"}}, r"'model.pretrained.branch': unknown key"),
        ({"pretrained": {"path": "m", "revision": "main"}}, r"revision': only for a hub_id"),
        ({"pretrained": "a/b"}, r"must be a mapping"),
    ],
)
def test_spec_is_checked_without_files(spec, needle):
    with pytest.raises(ConfigError, match=needle):
        resolve_model_spec(spec)


def test_spec_passes_the_run_schema(hf_dir, tmp_path):
    root, _ = hf_dir
    pre = {"hub_id": "HuggingFaceTB/SmolLM2-135M", "revision": "main"}
    assert resolve_model_spec({"pretrained": pre, "vocab_size": 300}) == {"pretrained": pre, "vocab_size": 300}
    cfg = validate_config(pt_cfg(root, tmp_path / "r", model={"pretrained": {"path": str(root / "model")}}))
    assert cfg["model"] == {"pretrained": {"path": str(root / "model")}}
    other = validate_config(pt_cfg(root, tmp_path / "r", model={"pretrained": {"path": str(root / "other")}}))
    assert config_hash(cfg) != config_hash(other)
    with pytest.raises(ConfigError, match=r"pretrained.*gguf_file"):
        validate_config(pt_cfg(root, tmp_path / "r", model={"pretrained": {"path": "m", "gguf_file": 3}}))


def test_local_directory_loads_with_the_same_logits(hf_dir):
    root, model = hf_dir
    loaded = load_pretrained({"path": str(root / "model")})
    assert loaded.dtype == torch.float32 and not loaded.config.use_cache
    x = torch.randint(0, BYTES_VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model.eval()(input_ids=x).logits, loaded.eval()(input_ids=x).logits)
    # build_model (the training loop's entry point) loads it too, and checks the data's vocabulary fits
    built = build_model({"pretrained": {"path": str(root / "model")}}, BYTES_VOCAB, SEQ, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), model.state_dict().values()))
    with pytest.raises(ConfigError, match=r"has 258 token embeddings, fewer than the vocab_size 1000 of the data"):
        build_model({"pretrained": {"path": str(root / "model")}}, 1000, SEQ)
    with pytest.raises(ConfigError, match=r"'model.pretrained.path' = '/nonexistent/m': no such model directory"):
        load_pretrained({"path": "/nonexistent/m"})


def test_hub_id_offline_names_the_id_and_hf_hub_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as exc:
        load_pretrained({"hub_id": "cptlaws-tests/no-such-model", "revision": "v1"})
    msg = str(exc.value)
    assert "cptlaws-tests/no-such-model" in msg and "HF_HUB_OFFLINE" in msg and "revision v1" in msg


def test_run_starts_from_the_pretrained_weights_and_exports(hf_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    root, model = hf_dir
    out = tmp_path / "run"
    cfg = pt_cfg(root, out, steps=8, eval_every=4, model={"pretrained": {"path": str(root / "model")}},
                 checkpoint={"transfer_steps": [8]})  # fmt: skip
    train(cfg)
    curve = pd.read_parquet(out / "curve.parquet")
    rcfg = validate_config(cfg)
    for split in ("general", "code"):
        at0 = float(curve[(curve.step == 0) & (curve.split == split)]["loss"].iloc[0])
        assert at0 == pytest.approx(valid_loss(model, rcfg, split), abs=1e-6)  # step 0 = the loaded model
    g = curve[curve.split == "general"].set_index("step")["loss"]
    assert g[8] < g[0]  # and it trains
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "ok" and meta["n_params"] == sum(p.numel() for p in model.parameters())
    rec = export_run(out, tmp_path / "hf")
    assert rec["step"] == 8 and rec["tokenizer"].startswith("model directory")  # the model's own tokenizer
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    logged = float(curve[(curve.step == 8) & (curve.split == "general")]["loss"].iloc[0])
    assert valid_loss(back, rcfg, "general") == pytest.approx(logged, abs=1e-5)
    assert json.loads((tmp_path / "hf" / EXPORT_META).read_text())["reload_max_logit_diff"] <= 1e-5
