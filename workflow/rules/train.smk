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


# The run's whole training config is a param: with the `params` rerun trigger exactly the runs whose
# config changed are retrained, and editing unrelated config (fits, checks, figures) retrains nothing.
rule train:
    input:
        unpack(train_inputs),
    output:
        config="results/runs/{run}/config.json",
        row="results/runs/{run}/run.json",
        curve="results/runs/{run}/curve.parquet",
        trainlog="results/runs/{run}/trainlog.parquet",
        meta="results/runs/{run}/meta.json",
    params:
        spec=lambda w: STUDY.run_json(w.run),
    log:
        "logs/train/{run}.log",
    benchmark:
        "benchmarks/train/{run}.tsv"
    threads: RES["train"]["threads"]
    resources:
        mem_mb=RES["train"]["mem_mb"],
        runtime=RES["train"]["runtime"],
        gpu=RES["train"]["gpu"],
    conda:
        "../../envs/cptlaws.yaml"
    shell:
        "(cptlaws study run-config --spec {params.spec:q} --config-out {output.config} "
        "--row-out {output.row} && cptlaws train {output.config}) > {log} 2>&1"
