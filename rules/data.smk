# Demo tiles (only for `demo: true`, only while they are missing; on the submitting machine, it is quick), then
# ingest: one partial sample per normal tile, written by one `rsvae ingest --partial` process per batch of
# cluster.tiles_per_job tiles, merged into one sample file (partial band statistics merge exactly).

if PLAN.demo_files:

    localrules:
        demo,

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


for batch in PLAN.normal_batches:

    rule:
        name:
            f"ingest_{batch.name}"
        input:
            tiles=[PLAN.normal[t] for t in batch.tiles],
        output:
            [f"{R}/sample/parts/{t}.nc" for t in batch.tiles],
        log:
            f"{R}/logs/ingest/{batch.name}.log",
        benchmark:
            f"{R}/benchmarks/ingest/{batch.name}.tsv"
        params:
            config=CFG,
            outdir=lambda wildcards, output: os.path.dirname(output[0]),
            settings=config["ingest"],
        threads: 1
        resources:
            mem_mb=lambda wildcards, attempt: 2000 * attempt,
            runtime=wf.batch_runtime(len(batch.tiles), per_tile=2),
            **CLUSTER,
        conda:
            "../envs/rsvae.yaml"
        shell:
            "rsvae ingest {input.tiles} --partial --outdir {params.outdir} --config {params.config} > {log} 2>&1"


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
    # merge and train share one cluster job, unless training asks for a GPU (its own partition, perhaps)
    group:
        MODEL_GROUP
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=30,
        **CLUSTER,
    conda:
        "../envs/rsvae.yaml"
    shell:
        "rsvae merge {input} -o {output} --config {params.config} > {log} 2>&1"
