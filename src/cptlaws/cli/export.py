"""`cptlaws export RUN --out DIR`: a run's weights and tokenizer as a Hugging Face model directory."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a run's weights and tokenizer as a Hugging Face model directory",
        description="Export run directory RUN (a training run's out_dir) to DIR with save_pretrained, loadable by "
        "AutoModelForCausalLM.from_pretrained(DIR) / AutoTokenizer.from_pretrained(DIR). A finished run exports "
        "its final weights, an unfinished one its newest checkpoint (docs/open-models.md).",
    )
    p.add_argument("run", help="run directory (out_dir of `cptlaws train`)")
    p.add_argument("--out", required=True, help="new directory to write (must not exist)")
    p.add_argument("--step", type=int, help="export the checkpoint at this global step instead")
    p.add_argument("--tokenizer", help="tokenizer.json to ship (default: the run's own)")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from cptlaws.train.export import export_run

    rec = export_run(args.run, args.out, step=args.step, tokenizer=args.tokenizer)
    what = "final weights" if rec["finished"] and args.step is None else "checkpoint"
    tok = f"tokenizer {rec['tokenizer']}" if rec["tokenizer"] else "no tokenizer (none known for this run: --tokenizer)"
    print(
        f"{rec['run_id']}: {what} at step {rec['step']} -> {args.out} ({rec['model_class']}, {tok}; reloaded "
        f"logits within {rec['reload_max_logit_diff']:.1g})"
    )
    return 0
