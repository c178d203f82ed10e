"""Model presets and parameter counts."""

from __future__ import annotations

import pytest
import torch

from cptlaws.errors import ConfigError
from cptlaws.train.model import NOMINAL, PRESETS, build_model, count_params, flops_per_token, llama_config


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_non_embedding_size_matches_its_name(name):
    model = build_model(name, vocab_size=1024, seq_len=128, device="meta")  # no memory for 1.7B
    total, nonembed = count_params(model)
    assert abs(nonembed / NOMINAL[name] - 1) < 0.02, (name, nonembed)
    cfg = model.config
    h, L, i = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size
    assert nonembed == L * (4 * h * h + 3 * h * i + 2 * h) + h  # attention + MLP + 2 norms per layer + final norm
    assert total == nonembed + 2 * 1024 * h  # untied input embedding and LM head


def test_range_of_presets():
    sizes = sorted(NOMINAL.values())
    assert sizes[0] <= 0.1e6 and {"tiny", "small", "106M", "594M", "1.7B"} <= set(PRESETS)


def test_tied_embeddings_counted_once():
    m = build_model({"preset": "nano", "tie_word_embeddings": True}, vocab_size=100, seq_len=16)
    total, nonembed = count_params(m)
    assert total == nonembed + 100 * 32


def test_explicit_shape_and_forward():
    spec = {"hidden_size": 48, "intermediate_size": 128, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2}
    m = build_model(spec, vocab_size=50, seq_len=16, seed=0)
    out = m(input_ids=torch.randint(0, 50, (2, 16))).logits
    assert out.shape == (2, 16, 50)
    m2 = build_model(spec, vocab_size=50, seq_len=16, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(m.parameters(), m2.parameters()))  # seeded init


@pytest.mark.parametrize(
    "spec,needle",
    [
        ({"preset": "huge"}, "model.preset"),
        ({"preset": "tiny", "hidden_size": 0}, "model.hidden_size"),
        ({"hidden_size": 64}, "model.intermediate_size"),
        ({"preset": "tiny", "num_heads": 5}, "model.num_heads"),
        ({"preset": "tiny", "num_kv_heads": 3}, "model.num_kv_heads"),
        ({"preset": "tiny", "rope_theta": "1e4"}, "model.rope_theta"),
        ({"preset": "tiny", "layers": 3}, "model.layers"),
    ],
)
def test_bad_model_spec_names_the_key(spec, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        llama_config(spec, vocab_size=10)


def test_flops_per_token_is_about_6n():
    cfg = llama_config("106M", vocab_size=32000, seq_len=1024)
    f = flops_per_token(cfg, 1024)
    n = 106187520 + 768 * 32000  # non-embedding + LM head (the input embedding is a lookup)
    assert 6 * n < f < 6 * n * 1.15


def test_fp32_attention_for_cpu_bf16_matches_sdpa():
    from cptlaws.train.model import SDPA_FP32, attention_for

    assert attention_for("cpu", "bfloat16") == SDPA_FP32
    assert attention_for("cpu", "float32") == attention_for("cuda", "bfloat16") == "sdpa"
    spec = {"hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2}
    ref = build_model(spec, vocab_size=50, seq_len=16, seed=0)
    ours = build_model(spec, vocab_size=50, seq_len=16, seed=0, attn_implementation=SDPA_FP32)
    x = torch.randint(0, 50, (3, 16), generator=torch.Generator().manual_seed(0))
    # fp32: the same kernel on the same numbers
    assert torch.equal(ours(input_ids=x).logits, ref(input_ids=x).logits)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = ours(input_ids=x).logits, ref(input_ids=x).logits
    assert a.dtype == torch.bfloat16
    # causal: changing the last token changes no earlier position
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % 50
    with torch.autocast("cpu", dtype=torch.bfloat16):
        c = ours(input_ids=y).logits
    assert torch.equal(a[:, :-1], c[:, :-1]) and not torch.equal(a[:, -1], c[:, -1])
    assert (a.float() - b.float()).abs().max() < 0.05  # bf16 rounding only
