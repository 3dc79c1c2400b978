# Demo tiles (only for `demo: true`, only while they are missing), then ingest: one partial sample per normal
# tile, merged into one sample file (partial band statistics merge exactly).

if PLAN.demo_files:

    rule demo:
        output:
            PLAN.demo_files,
        log:
            f"{R}/logs/demo.log",
        benchmark:
            f"{R}/benchmarks/demo.tsv"
        params:
            config=CFG,
            outdir=lambda wildcards: config["synth"]["outdir"],
            settings=config["synth"],
        threads: 1
        resources:
            mem_mb=2000,
            runtime=15,
            **CLUSTER,
        conda:
            "../envs/rsvae.yaml"
        shell:
            "rsvae synth {params.outdir} --config {params.config} > {log} 2>&1"


rule ingest:
    input:
        tile=lambda wildcards: PLAN.normal[wildcards.tile],
    output:
        f"{R}/sample/parts/{{tile}}.nc",
    log:
        f"{R}/logs/ingest/{{tile}}.log",
    benchmark:
        f"{R}/benchmarks/ingest/{{tile}}.tsv"
    params:
        config=CFG,
        settings=config["ingest"],
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=30,
        **CLUSTER,
    conda:
        "../envs/rsvae.yaml"
    shell:
        "rsvae ingest {input.tile} --partial -o {output} --config {params.config} > {log} 2>&1"


rule merge:
    input:
        expand(f"{R}/sample/parts/{{tile}}.nc", tile=sorted(PLAN.normal)),
    output:
        f"{R}/sample/sample.nc",
    log:
        f"{R}/logs/merge.log",
    benchmark:
        f"{R}/benchmarks/merge.tsv"
    params:
        config=CFG,
        settings=config["ingest"],
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=30,
        **CLUSTER,
    conda:
        "../envs/rsvae.yaml"
    shell:
        "rsvae merge {input} -o {output} --config {params.config} > {log} 2>&1"
