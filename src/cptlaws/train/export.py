"""Export a run's weights and tokenizer as a Hugging Face model directory (``cptlaws export RUN --out DIR``).

Our models are ``transformers.LlamaForCausalLM`` (train/model.py), so the export is the checkpoint's state
dict loaded into a ``LlamaForCausalLM`` built from the run's own config, written with ``save_pretrained``;
``AutoModelForCausalLM.from_pretrained(DIR)`` then gives the same logits. The run's tokenizer (a
``tokenizer.json`` from data/tokenizer.py: the run config's ``tokenizer``, else the one the token data's
``meta.json`` names, else ``tokenizer=``; for a run of a pretrained model, ``model.pretrained``'s own tokenizer) is saved as a
``PreTrainedTokenizerFast`` (``<eos>`` / ``<pad>`` as its eos / pad tokens). A run of a pretrained model is
exported with that model's own config and class (``AutoModelForCausalLM.from_config``). ``cptlaws_export.json`` records which run, step and checkpoint the weights are.

Which weights: a finished run (``meta.json`` status ok) exports the weights of its final step: from
``ckpt/final/state.pt`` where that exists, else the checkpoint at the final step (kept when the final step
is in ``checkpoint.transfer_steps``, as a PT run's branch point is). A finished run whose final weights were
not kept is refused (it names the checkpoints there are; ``step=`` exports one of them). An unfinished run
(interrupted, diverged, still training) exports its newest checkpoint. The directory is written atomically
(``io.atomic_dir``) and checked before it is committed: the reloaded model's logits on a fixed batch must
equal the checkpoint model's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cptlaws.errors import InputError, MissingFileError
from cptlaws.io import atomic_dir, read_json

EXPORT_META = "cptlaws_export.json"
LOGIT_TOL = 1e-5


def _weights_source(run_dir: Path, step: int | None) -> dict[str, Any]:
    """(state.pt dir, step, finished?) of the weights to export, or an InputError saying why there are none."""
    from cptlaws.train import checkpoints as C

    meta_p = run_dir / "meta.json"
    meta = read_json(meta_p, "run meta") if meta_p.is_file() else None
    finished = bool(meta) and meta.get("status") == "ok"
    ckpts = C.ckpt_dirs(run_dir)
    have = [s for s, _ in ckpts]
    if step is not None:
        for s, p in ckpts:
            if s == step:
                return {"dir": p, "step": s, "finished": finished, "meta": meta}
        raise InputError(f"run {run_dir}: no checkpoint at step {step} (checkpoints at steps {have or 'none'})")
    final = run_dir / "ckpt" / C.FINAL_DIR
    if finished:
        last = int(meta["final_step"])
        if (final / C.CKPT_STATE).is_file():
            return {"dir": final, "step": last, "finished": True, "meta": meta}
        for s, p in ckpts:
            if s == last:
                return {"dir": p, "step": s, "finished": True, "meta": meta}
        raise InputError(
            f"run {run_dir}: finished at step {last} but its final weights were not kept (checkpoints at steps "
            f"{have or 'none'}); export one of those with --step, or train it with checkpoint.transfer_steps "
            f"including {last} so the final step's checkpoint is kept"
        )
    if not ckpts:
        if meta is None:
            raise InputError(
                f"run {run_dir}: no meta.json and no checkpoint: not a run directory, or a run stopped (or still "
                "training) before its first checkpoint; nothing to export"
            )
        raise InputError(f"run {run_dir}: unfinished (status: {meta.get('status')}) and has no checkpoint to export")
    s, p = ckpts[-1]
    return {"dir": p, "step": s, "finished": False, "meta": meta}


def _tokenizer_path(cfg: dict, given: str | os.PathLike | None) -> Path | None:
    if given is not None:
        return Path(given)
    if cfg.get("tokenizer"):
        return Path(cfg["tokenizer"])
    for d in [cfg["data"].get("general"), cfg["data"].get("domain"), *cfg.get("valid", {}).values()]:
        m = Path(d) / "meta.json" if d else None
        if m is not None and m.is_file():
            rec = (json.loads(m.read_text()) or {}).get("tokenizer") or {}
            if rec.get("path") and Path(rec["path"]).is_file():
                return Path(rec["path"])
    return None


def hf_tokenizer(path: str | os.PathLike, model_max_length: int | None = None):
    """A ``PreTrainedTokenizerFast`` around one of our tokenizer.json files (data/tokenizer.py). As in our
    tokenizer, a literal ``<eos>`` in a text is text (``split_special_tokens``; tokenizer.json alone does not
    keep that setting, tokenizer_config.json does)."""
    from transformers import PreTrainedTokenizerFast

    from cptlaws.data.tokenizer import EOS, PAD, load_tokenizer

    tok = load_tokenizer(path)
    pad = PAD if tok.token_to_id(PAD) is not None else EOS
    extra = {"model_max_length": int(model_max_length)} if model_max_length else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=pad, split_special_tokens=True, **extra
    )


def _pretrained_tokenizer(pre):
    """The tokenizer shipped with a pretrained model (None when it has none or cannot be loaded here)."""
    from transformers import AutoTokenizer

    from cptlaws.train.model import _from_pretrained_kwargs

    src, kw = _from_pretrained_kwargs(pre)
    try:
        return AutoTokenizer.from_pretrained(src, **kw)
    except (OSError, ValueError):
        return None


def export_run(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    step: int | None = None,
    tokenizer: str | os.PathLike | None = None,
    require_tokenizer: bool = False,
) -> dict:
    """Write run ``run_dir``'s weights (+ tokenizer) to the new directory ``out``; returns the export record."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from cptlaws.train import checkpoints as C
    from cptlaws.train.model import _pretrained_name, llama_config, pretrained_config

    run_dir, out = Path(run_dir), Path(out)
    if not run_dir.is_dir():
        raise MissingFileError(f"run directory {run_dir} not found")
    if out.exists():
        raise InputError(f"output directory {out} exists: give a new path (the export never overwrites)")
    src = _weights_source(run_dir, step)
    cmeta_p = src["dir"] / C.CKPT_META
    cmeta = read_json(cmeta_p, "checkpoint meta") if cmeta_p.is_file() else src["meta"]
    cfg, vocab = cmeta["config"], int(cmeta["vocab_size"])
    tok_path = _tokenizer_path(cfg, tokenizer)
    if tok_path is None and require_tokenizer:
        raise InputError(f"run {run_dir}: no tokenizer known (no 'tokenizer' in its config or its token data's meta)")
    pre = cfg["model"].get("pretrained")
    tok = hf_tokenizer(tok_path, cfg["seq_len"]) if tok_path is not None else None
    if tok is None and pre is not None:  # a run of a pretrained model: the model's own tokenizer
        tok = _pretrained_tokenizer(pre)
        tok_path = _pretrained_name(pre) if tok is not None else None
    if tok is not None and len(tok) > vocab and pre is None:
        raise InputError(f"tokenizer {tok_path}: {len(tok)} tokens, more than the model's vocab_size {vocab}")

    state = C.load_checkpoint(src["dir"])["model"]
    if pre is not None:
        hf_cfg = pretrained_config(pre)
        vocab = int(getattr(hf_cfg, "vocab_size", vocab))
    else:
        hf_cfg = llama_config(cfg["model"], vocab, cfg["seq_len"], "sdpa")
    hf_cfg.use_cache = True  # an inference default; it does not change the logits
    if tok is not None and tok.eos_token_id is not None:
        hf_cfg.eos_token_id = tok.eos_token_id
        hf_cfg.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model = (
        AutoModelForCausalLM.from_config(hf_cfg, dtype=torch.float32) if pre is not None else LlamaForCausalLM(hf_cfg)
    )
    model.load_state_dict(state, strict=True)
    model.eval()
    g = torch.Generator().manual_seed(0)
    probe = torch.randint(0, vocab, (2, min(int(cfg["seq_len"]), 64)), generator=g)
    record = {
        "run_id": cfg["run_id"],
        "phase": cfg["phase"],
        "step": src["step"],
        "finished": src["finished"],
        "checkpoint": str(src["dir"]),
        "config_hash": cmeta.get("config_hash"),
        "model_class": type(model).__name__,
        "vocab_size": vocab,
        "tokenizer": str(tok_path) if tok_path is not None else None,
    }
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        if tok is not None:
            tok.save_pretrained(tmp)
        back = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
        with torch.no_grad():
            a = model(input_ids=probe).logits
            b = back(input_ids=probe).logits
        diff = float((a - b).abs().max())
        if not diff <= LOGIT_TOL:
            raise InputError(f"export of {run_dir}: the reloaded model's logits differ by {diff:.3g} (> {LOGIT_TOL})")
        record["reload_max_logit_diff"] = diff
        (tmp / EXPORT_META).write_text(json.dumps(record, indent=2) + "\n")
    return record
