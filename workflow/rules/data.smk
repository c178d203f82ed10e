rule corpus:
    output:
        directory("resources/corpora/{corpus}"),
    log:
        "logs/corpus/{corpus}.log",
    conda:
        "../../envs/cptlaws.yaml"
    resources:
        mem_mb=RES["default"]["mem_mb"],
        runtime=RES["default"]["runtime"],
    params:
        source=lambda w: STUDY.corpus_source(w.corpus),
        extra=lambda w: STUDY.fetch_args(w.corpus),
    shell:
        "cptlaws corpus fetch {params.source} --out {output} {params.extra} > {log} 2>&1"


# A given tokenizer (`tokenizer.path`) is an input, never rebuilt: no rule may overwrite it.
if "path" not in STUDY.config["tokenizer"]:

    rule tokenizer:
        input:
            # a byte tokenizer needs no corpus (nor a fetch of a hub corpus)
            [STUDY.corpus_dir(STUDY.tokenizer_corpus)]
            if STUDY.config["tokenizer"]["kind"] == "bpe"
            else [],
        output:
            STUDY.tokenizer_path,
        log:
            "logs/tokenizer.log",
        conda:
            "../../envs/cptlaws.yaml"
        resources:
            mem_mb=RES["default"]["mem_mb"],
            runtime=RES["default"]["runtime"],
        params:
            vocab=STUDY.config["tokenizer"]["vocab"],
            kind=STUDY.config["tokenizer"]["kind"],
        shell:
            "cptlaws tokenizer train "
            + (
                "--corpus {input} "
                if STUDY.config["tokenizer"]["kind"] == "bpe"
                else ""
            )
            + "--kind {params.kind} --vocab {params.vocab} --out {output} > {log} 2>&1"


rule tokenize:
    input:
        unpack(tokenize_inputs),
    output:
        directory("resources/tokens/{corpus}"),
    log:
        "logs/tokenize/{corpus}.log",
    conda:
        "../../envs/cptlaws.yaml"
    resources:
        mem_mb=RES["default"]["mem_mb"],
        runtime=RES["default"]["runtime"],
    params:
        source=lambda w: STUDY.tokenize_source_args(w.corpus),
        seq_len=STUDY.config["data"]["seq_len"],
    shell:
        "cptlaws tokenize {params.source} --tokenizer {input.tokenizer} "
        "--seq-len {params.seq_len} --out {output} > {log} 2>&1"
