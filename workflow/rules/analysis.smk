RUN_DIRS = [f"results/runs/{r}" for r in STUDY.runs]
TABLES = {
    "runs": "results/tables/runs.parquet",
    "curves": "results/tables/curves.parquet",
    "lrs": "results/tables/lrs.parquet",
}


rule collect:
    input:
        expand(
            "results/runs/{run}/{f}",
            run=list(STUDY.runs),
            f=("meta.json", "curve.parquet", "run.json"),
        ),
    output:
        **TABLES,
    log:
        "logs/collect.log",
    conda:
        "../../envs/cptlaws.yaml"
    resources:
        mem_mb=RES["fit"]["mem_mb"],
        runtime=RES["fit"]["runtime"],
    params:
        runs=" ".join(RUN_DIRS),
        lam=STUDY.config["fits"]["lam"],
    shell:
        "cptlaws study collect --runs {params.runs} --lam {params.lam} "
        "--out results/tables > {log} 2>&1"


# One rule per analysis so a changed setting refits only that analysis.
rule fit_cpt:
    input:
        **TABLES,
    output:
        summary="results/fits/summary/cpt.json",
        params="results/fits/cpt_params.parquet",
        pred="results/fits/cpt_predictions.parquet",
    log:
        "logs/fit_cpt.log",
    conda:
        "../../envs/cptlaws.yaml"
    threads: RES["fit"]["threads"]
    resources:
        mem_mb=RES["fit"]["mem_mb"],
        runtime=RES["fit"]["runtime"],
    params:
        settings=STUDY.fit_settings_json("cpt"),
    shell:
        "cptlaws study fit cpt --tables results/tables --settings {params.settings:q} "
        "--out results/fits > {log} 2>&1"


rule fit_replay:
    input:
        **TABLES,
    output:
        summary="results/fits/summary/replay.json",
        params="results/fits/replay_params.parquet",
        pred="results/fits/replay_predictions.parquet",
    log:
        "logs/fit_replay.log",
    conda:
        "../../envs/cptlaws.yaml"
    threads: RES["fit"]["threads"]
    resources:
        mem_mb=RES["fit"]["mem_mb"],
        runtime=RES["fit"]["runtime"],
    params:
        settings=STUDY.fit_settings_json("replay"),
    shell:
        "cptlaws study fit replay --tables results/tables --settings {params.settings:q} "
        "--out results/fits > {log} 2>&1"


rule fit_cmr:
    input:
        **TABLES,
    output:
        summary="results/fits/summary/cmr.json",
        table="results/fits/cmr.parquet",
        increments="results/fits/cmr_increments.parquet",
    log:
        "logs/fit_cmr.log",
    conda:
        "../../envs/cptlaws.yaml"
    resources:
        mem_mb=RES["fit"]["mem_mb"],
        runtime=RES["fit"]["runtime"],
    params:
        settings=STUDY.fit_settings_json("cmr"),
    shell:
        "cptlaws study fit cmr --tables results/tables --settings {params.settings:q} "
        "--out results/fits > {log} 2>&1"


rule check:
    input:
        **TABLES,
        cmr="results/fits/summary/cmr.json",
    output:
        table="results/checks/heldout.parquet",
        md="results/checks/heldout.md",
        pred="results/checks/predictions.parquet",
    log:
        "logs/check.log",
    conda:
        "../../envs/cptlaws.yaml"
    threads: RES["fit"]["threads"]
    resources:
        mem_mb=RES["fit"]["mem_mb"],
        runtime=RES["fit"]["runtime"],
    params:
        settings=STUDY.settings_json("fits", "checks"),
    shell:
        "cptlaws study check --tables results/tables --settings {params.settings:q} "
        "--cmr {input.cmr} --out results/checks > {log} 2>&1"


rule figures:
    input:
        **TABLES,
        fits=expand("results/fits/summary/{a}.json", a=("cpt", "replay", "cmr")),
        checks="results/checks/heldout.parquet",
    output:
        report(
            directory("results/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    log:
        "logs/figures.log",
    conda:
        "../../envs/cptlaws.yaml"
    resources:
        mem_mb=RES["default"]["mem_mb"],
        runtime=RES["default"]["runtime"],
    shell:
        "cptlaws plot all --tables results/tables --fits results/fits --checks results/checks "
        "--out {output} > {log} 2>&1"
