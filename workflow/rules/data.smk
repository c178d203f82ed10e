rule corpus:
    output:
        directory("resources/corpora/{corpus}"),
    params:
        source=lambda w: STUDY.corpus_source(w.corpus),
        extra=lambda w: STUDY.corpus_args(w.corpus),
    log:
        "logs/corpus/{corpus}.log",
    resources:
        mem_mb=RES["default"]["mem_mb"],
        runtime=RES["default"]["runtime"],
    conda:
        "../../envs/cptlaws.yaml"
    shell:
        "cptlaws corpus fetch {params.source} --out {output} {params.extra} > {log} 2>&1"


rule tokenizer:
    input:
        expand("resources/corpora/{corpus}", corpus=STUDY.tokenizer_corpora),
    output:
        STUDY.tokenizer_path,
    params:
        vocab=STUDY.config["tokenizer"]["vocab"],
        corpora=lambda w, input: " ".join(f"--corpus {c}" for c in input),
    log:
        "logs/tokenizer.log",
    resources:
        mem_mb=RES["default"]["mem_mb"],
        runtime=RES["default"]["runtime"],
    conda:
        "../../envs/cptlaws.yaml"
    shell:
        "cptlaws tokenizer train {params.corpora} --vocab {params.vocab} --out {output} > {log} 2>&1"


rule tokenize:
    input:
        corpus="resources/corpora/{corpus}",
        tokenizer=STUDY.tokenizer_path,
    output:
        directory("resources/tokens/{corpus}"),
    params:
        seq_len=STUDY.config["data"]["seq_len"],
    log:
        "logs/tokenize/{corpus}.log",
    resources:
        mem_mb=RES["default"]["mem_mb"],
        runtime=RES["default"]["runtime"],
    conda:
        "../../envs/cptlaws.yaml"
    shell:
        "cptlaws tokenize --corpus {input.corpus} --tokenizer {input.tokenizer} "
        "--seq-len {params.seq_len} --out {output} > {log} 2>&1"
