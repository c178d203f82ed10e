"""LLaMA-style models from named presets (``transformers.LlamaForCausalLM``), or a pretrained Hugging Face
causal LM (``model.pretrained``: a local directory or a hub id, ``AutoModelForCausalLM.from_pretrained``).

Preset sizes are NON-embedding parameter counts (attention + MLP + norms), the quantity the scaling
laws use. The small presets make CPU studies possible; ``106M`` / ``594M`` / ``1.7B`` match the paper's
(Wang et al. 2505.07796) model sizes. Their exact shapes are not published in the paper, so these are
our LLaMA-proportioned choices (head dim 64-128, MLP ~3.5x hidden) that hit the counts within 1 %.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cptlaws.errors import ConfigError

# hidden, intermediate, layers, heads, kv heads -> non-embedding params (see test_model.py)
PRESETS: dict[str, dict[str, int]] = {
    "nano": dict(hidden_size=32, intermediate_size=88, num_layers=2, num_heads=2, num_kv_heads=2),  # ~25k
    "tiny": dict(hidden_size=64, intermediate_size=176, num_layers=2, num_heads=4, num_kv_heads=4),  # ~0.1M
    "mini": dict(hidden_size=96, intermediate_size=256, num_layers=3, num_heads=4, num_kv_heads=4),  # ~0.33M
    "small": dict(hidden_size=128, intermediate_size=352, num_layers=5, num_heads=4, num_kv_heads=4),  # ~1.0M
    "base": dict(hidden_size=256, intermediate_size=704, num_layers=6, num_heads=4, num_kv_heads=4),  # ~4.8M
    "medium": dict(hidden_size=384, intermediate_size=1024, num_layers=8, num_heads=6, num_kv_heads=6),  # ~14M
    "106M": dict(hidden_size=768, intermediate_size=2816, num_layers=12, num_heads=12, num_kv_heads=12),
    "594M": dict(hidden_size=1280, intermediate_size=4736, num_layers=24, num_heads=20, num_kv_heads=20),
    "1.7B": dict(hidden_size=2048, intermediate_size=8832, num_layers=24, num_heads=16, num_kv_heads=16),
}
# Nominal non-embedding sizes, for documentation and the preset test.
NOMINAL = {
    "nano": 25e3,
    "tiny": 0.1e6,
    "mini": 0.33e6,
    "small": 1.0e6,
    "base": 4.8e6,
    "medium": 14e6,
    "106M": 106e6,
    "594M": 594e6,
    "1.7B": 1.7e9,
}

SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads")
EXTRA_KEYS = ("rope_theta", "tie_word_embeddings", "rms_norm_eps", "initializer_range")
MODEL_KEYS = ("preset", "vocab_size") + SHAPE_KEYS + EXTRA_KEYS + ("pretrained",)
PRETRAINED_KEYS = ("path", "hub_id", "gguf_file", "revision")


def _resolve_pretrained(spec: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``{pretrained: {path | hub_id, gguf_file?, revision?}}`` (+ vocab_size): checked, no file access."""
    others = sorted(set(spec) - {"pretrained", "vocab_size"})
    if others:
        raise ConfigError(
            f"key '{where}.{others[0]}': a pretrained model takes its shape from its own config; give only "
            f"'{where}.pretrained' (and optionally vocab_size)"
        )
    pre = spec["pretrained"]
    w = f"{where}.pretrained"
    if not isinstance(pre, Mapping):
        raise ConfigError(f"key '{w}' = {pre!r}: must be a mapping {{path: DIR}} or {{hub_id: ID}}")
    unknown = sorted(set(pre) - set(PRETRAINED_KEYS))
    if unknown:
        raise ConfigError(f"key '{w}.{unknown[0]}': unknown key (known: {', '.join(PRETRAINED_KEYS)})")
    if ("path" in pre) == ("hub_id" in pre):
        raise ConfigError(f"key '{w}': give exactly one of path (a local model directory) and hub_id")
    for k, v in pre.items():
        if not isinstance(v, str) or not v:
            raise ConfigError(f"key '{w}.{k}' = {v!r}: must be a non-empty string")
    if "revision" in pre and "path" in pre:
        raise ConfigError(f"key '{w}.revision': only for a hub_id (a local directory has no revisions)")
    out: dict[str, Any] = {"pretrained": dict(pre)}
    if "vocab_size" in spec:
        v = spec["vocab_size"]
        if isinstance(v, bool) or not isinstance(v, int) or v <= 1:
            raise ConfigError(f"key '{where}.vocab_size' = {v!r}: must be an integer > 1")
        out["vocab_size"] = v
    return out


def resolve_model_spec(spec: Mapping[str, Any], where: str = "model") -> dict[str, Any]:
    """Preset + explicit overrides -> a complete shape dict. Raises ConfigError naming the key."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"key '{where}' = {spec!r}: must be a mapping ({{preset: tiny}} or explicit sizes)")
    unknown = sorted(set(spec) - set(MODEL_KEYS))
    if unknown:
        raise ConfigError(f"key '{where}.{unknown[0]}': unknown key (known: {', '.join(MODEL_KEYS)})")
    if "pretrained" in spec:
        return _resolve_pretrained(spec, where)
    out: dict[str, Any] = {}
    if "preset" in spec:
        name = spec["preset"]
        if name not in PRESETS:
            raise ConfigError(f"key '{where}.preset' = {name!r}: unknown preset (one of {', '.join(PRESETS)})")
        out["preset"] = name
        out.update(PRESETS[name])
    for k in SHAPE_KEYS:
        if k in spec:
            v = spec[k]
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"key '{where}.{k}' = {v!r}: must be a positive integer")
            out[k] = v
    missing = [k for k in SHAPE_KEYS if k not in out]
    if missing:
        raise ConfigError(f"key '{where}.{missing[0]}': missing (give a preset or all of {', '.join(SHAPE_KEYS)})")
    if out["hidden_size"] % out["num_heads"]:
        raise ConfigError(f"key '{where}.num_heads' = {out['num_heads']}: must divide hidden_size {out['hidden_size']}")
    if out["num_heads"] % out["num_kv_heads"]:
        raise ConfigError(
            f"key '{where}.num_kv_heads' = {out['num_kv_heads']}: must divide num_heads {out['num_heads']}"
        )
    if "vocab_size" in spec:
        v = spec["vocab_size"]
        if isinstance(v, bool) or not isinstance(v, int) or v <= 1:
            raise ConfigError(f"key '{where}.vocab_size' = {v!r}: must be an integer > 1")
        out["vocab_size"] = v
    for k in ("rope_theta", "rms_norm_eps", "initializer_range"):
        if k in spec:
            v = spec[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                hint = " (YAML 1.1 reads 1e-5 as a string: write 1.0e-5)" if isinstance(v, str) else ""
                raise ConfigError(f"key '{where}.{k}' = {v!r}: must be a positive number{hint}")
            out[k] = float(v)
    if "tie_word_embeddings" in spec:
        if not isinstance(spec["tie_word_embeddings"], bool):
            raise ConfigError(
                f"key '{where}.tie_word_embeddings' = {spec['tie_word_embeddings']!r}: must be true/false"
            )
        out["tie_word_embeddings"] = spec["tie_word_embeddings"]
    return out


def llama_config(
    spec: Mapping[str, Any], vocab_size: int | None = None, seq_len: int = 2048, attn_implementation: str = "sdpa"
):
    """A ``transformers.LlamaConfig`` for a model spec (preset name or mapping; not a pretrained one)."""
    from transformers import LlamaConfig

    if isinstance(spec, str):
        spec = {"preset": spec}
    s = resolve_model_spec(spec)
    if "pretrained" in s:
        raise ConfigError("key 'model.pretrained': a pretrained model has its own config (pretrained_config)")
    vocab = s.get("vocab_size", vocab_size)
    if vocab is None:
        raise ConfigError(
            "key 'model.vocab_size': unknown (not in the model spec, the data meta.json or the tokenizer)"
        )
    cfg = LlamaConfig(
        vocab_size=int(vocab),
        hidden_size=s["hidden_size"],
        intermediate_size=s["intermediate_size"],
        num_hidden_layers=s["num_layers"],
        num_attention_heads=s["num_heads"],
        num_key_value_heads=s["num_kv_heads"],
        max_position_embeddings=int(seq_len),
        rms_norm_eps=s.get("rms_norm_eps", 1e-5),
        initializer_range=s.get("initializer_range", 0.02),
        tie_word_embeddings=s.get("tie_word_embeddings", False),
        rope_parameters={"rope_type": "default", "rope_theta": s.get("rope_theta", 10000.0)},
        use_cache=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    cfg._attn_implementation = attn_implementation
    return cfg


# SDPA computed in float32 inside bf16 autocast. On CPU, torch's flash-attention backward in bf16 is
# ~4x slower than in fp32 (18.6 vs 4.3 ms a call on the `small` preset, 2 threads), which cancels
# the gain of AMX bf16 matmuls; in fp32 the attention costs what it costs without autocast.
SDPA_FP32 = "cptlaws_sdpa_fp32"


def _register_sdpa_fp32() -> None:
    import torch
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import sdpa_mask

    def sdpa_fp32(module, query, key, value, attention_mask, **kw):
        dt = query.dtype
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.float()
        with torch.autocast(query.device.type, enabled=False):
            out, weights = sdpa_attention_forward(
                module, query.float(), key.float(), value.float(), attention_mask, **kw
            )
        return out.to(dt), weights

    AttentionInterface.register(SDPA_FP32, sdpa_fp32)
    AttentionMaskInterface.register(SDPA_FP32, sdpa_mask)


def attention_for(device_type: str, dtype: str) -> str:
    """The attention implementation the training loop uses on a device type and compute dtype."""
    return SDPA_FP32 if device_type == "cpu" and dtype == "bfloat16" else "sdpa"


def build_model(
    spec: Mapping[str, Any] | str,
    vocab_size: int | None = None,
    seq_len: int = 2048,
    *,
    seed: int | None = None,
    device: str | None = None,
    attn_implementation: str = "sdpa",
):
    """A freshly initialised ``LlamaForCausalLM`` (``seed`` makes the init reproducible), or for a spec with
    ``pretrained`` the loaded model (``load_pretrained``; ``vocab_size``, the data's, must fit its vocabulary)."""
    import torch
    from transformers import LlamaForCausalLM

    if attn_implementation == SDPA_FP32:
        _register_sdpa_fp32()
    if isinstance(spec, Mapping) and "pretrained" in spec:
        model = load_pretrained(spec["pretrained"], attn_implementation=attn_implementation, device=device)
        n = int(model.get_input_embeddings().weight.shape[0])
        want = spec.get("vocab_size", vocab_size)
        if want is not None and int(want) > n:
            raise ConfigError(
                f"key 'model.pretrained': {_pretrained_name(spec['pretrained'])} has {n} token embeddings, fewer "
                f"than the vocab_size {want} of the data (tokenize the corpora with the model's own tokenizer)"
            )
        return model
    cfg = llama_config(spec, vocab_size, seq_len, attn_implementation)
    if seed is not None:
        torch.manual_seed(seed)
    if device == "meta":
        with torch.device("meta"):
            return LlamaForCausalLM(cfg)
    model = LlamaForCausalLM(cfg)
    if device is not None:
        model = model.to(device)
    return model


def _pretrained_name(pre: Mapping[str, Any]) -> str:
    name = f"hub model '{pre['hub_id']}'" if "hub_id" in pre else f"model directory {pre['path']}"
    if pre.get("revision"):
        name += f" (revision {pre['revision']})"
    return name + (f" (gguf_file {pre['gguf_file']})" if pre.get("gguf_file") else "")


def _hub_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        return False


def _from_pretrained_kwargs(pre: Mapping[str, Any]) -> tuple[str, dict]:
    kw = {k: pre[k] for k in ("gguf_file", "revision") if pre.get(k)}
    return (pre["path"] if "path" in pre else pre["hub_id"]), kw


def _load_error(pre: Mapping[str, Any], exc: Exception, what: str) -> ConfigError:
    name = _pretrained_name(pre)
    if "hub_id" in pre and _hub_offline():
        return ConfigError(
            f"key 'model.pretrained.hub_id': cannot load {what} of {name}: it is not in the local Hugging Face cache "
            f"and HF_HUB_OFFLINE is set (no network); download it where there is network (e.g. `hf download "
            f"{pre['hub_id']}`), point model.pretrained.path at a local copy, or unset HF_HUB_OFFLINE"
        )
    return ConfigError(f"key 'model.pretrained': cannot load {what} of {name}: {type(exc).__name__}: {exc}")


def pretrained_config(pre: Mapping[str, Any]):
    """The ``transformers`` config of a pretrained model (``model.pretrained``), without its weights."""
    from transformers import AutoConfig

    src, kw = _from_pretrained_kwargs(pre)
    if "path" in pre and not Path(src).is_dir():
        raise ConfigError(f"key 'model.pretrained.path' = {src!r}: no such model directory")
    try:
        return AutoConfig.from_pretrained(src, **kw)
    except (OSError, ValueError) as exc:
        raise _load_error(pre, exc, "the config") from None


def load_pretrained(pre: Mapping[str, Any], *, attn_implementation: str = "sdpa", device: str | None = None):
    """``AutoModelForCausalLM.from_pretrained`` of ``model.pretrained`` in float32 (full precision: the
    training loop's autocast gives bf16 on GPU). Raises ConfigError naming the model: a missing directory, a
    hub id unreachable offline (naming HF_HUB_OFFLINE), a file that is not a causal LM."""
    import torch
    from transformers import AutoModelForCausalLM

    if attn_implementation == SDPA_FP32:
        _register_sdpa_fp32()
    src, kw = _from_pretrained_kwargs(pre)
    if "path" in pre and not Path(src).is_dir():
        raise ConfigError(f"key 'model.pretrained.path' = {src!r}: no such model directory")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            src, dtype=torch.float32, attn_implementation=attn_implementation, **kw
        )
    except (OSError, ValueError) as exc:
        raise _load_error(pre, exc, "the weights") from None
    model.config.use_cache = False
    if device is not None and device != "meta":
        model = model.to(device)
    return model


def count_params(model) -> tuple[int, int]:
    """(total, non-embedding) parameter counts; the input embedding and the LM head (if untied) are
    embedding parameters, everything else (attention, MLP, norms) is not."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    emb = set()
    inner = getattr(model, "model", model)
    if getattr(inner, "embed_tokens", None) is not None:
        emb.add(id(inner.embed_tokens.weight))
    head = getattr(model, "lm_head", None)
    if head is not None:
        emb.add(id(head.weight))
    n_emb = sum(p.numel() for p in model.parameters() if id(p) in emb)
    # parameters() de-duplicates tied weights already
    return total, total - n_emb


def flops_per_token(model_cfg, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward): 6 N_nonembed-matmul + LM head +
    attention scores (Chinchilla-style accounting, used for MFU)."""
    h, L = model_cfg.hidden_size, model_cfg.num_hidden_layers
    i, v = model_cfg.intermediate_size, model_cfg.vocab_size
    kv = model_cfg.num_key_value_heads * (h // model_cfg.num_attention_heads)
    matmul = L * (2 * h * h + 2 * h * kv + 3 * h * i) + h * v
    attn = L * 2 * seq_len * h  # QK^T and AV per token (causal half not discounted)
    return 6.0 * matmul + 6.0 * attn
