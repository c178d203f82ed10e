def train_inputs(wildcards):
    """Token dirs + tokenizer, and for a CPT run its parent PT run (whose job saves the checkpoint)."""
    if wildcards.run not in STUDY.runs:
        raise WorkflowError(f"unknown run {wildcards.run!r}: not in the study grid")
    train = STUDY.runs[wildcards.run]["train"]
    deps = {"tokenizer": train["tokenizer"]}
    deps.update({f"data_{k}": v for k, v in train["data"].items() if k != "ratio"})
    deps.update({f"valid_{k}": v for k, v in train["valid"].items()})
    parent = STUDY.parent(wildcards.run)
    if parent:
        deps["parent"] = f"results/runs/{parent}/meta.json"
    return deps


def tokenize_inputs(wildcards):
    """The tokenizer, and the fetched corpus unless the corpus is streamed from the hub."""
    deps = {"tokenizer": STUDY.tokenizer_path}
    if STUDY.corpus_hub(wildcards.corpus) is None:
        deps["corpus"] = STUDY.corpus_dir(wildcards.corpus)
    return deps
