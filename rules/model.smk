# Training: one job, the sample in, the model folder out. `cluster.gpu: true` requests one GPU for it (the
# SLURM executor turns `gpu` into --gpus); train.device `auto` then trains there.


rule train:
    input:
        f"{R}/sample/sample.nc",
    output:
        directory(f"{R}/model"),
    log:
        f"{R}/logs/train.log",
    benchmark:
        f"{R}/benchmarks/train.tsv"
    params:
        config=CFG,
        settings=config["train"],
    group:
        MODEL_GROUP
    # one torch thread: for this small MLP two threads ran 4-5x slower on a shared 2-core machine
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=lambda wildcards, attempt: 120 * attempt,
        gpu=1 if config["cluster"]["gpu"] else 0,
        **CLUSTER,
    conda:
        "../envs/rsvae.yaml"
    shell:
        "rsvae train {input} -o {output} --threads {threads} --config {params.config} > {log} 2>&1"
