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
    log:
        "logs/train/{run}.log",
    benchmark:
        "logs/benchmarks/train/{run}.tsv"
    conda:
        "../../envs/cptlaws.yaml"
    threads: RES["train"]["threads"]
    resources:
        mem_mb=RES["train"]["mem_mb"],
        runtime=RES["train"]["runtime"],
        gpu=RES["train"]["gpu"],
    params:
        spec=lambda w: STUDY.run_json(w.run),
    shell:
        "(cptlaws study run-config --spec {params.spec:q} --config-out {output.config} "
        "--row-out {output.row} && cptlaws train {output.config}) > {log} 2>&1"
