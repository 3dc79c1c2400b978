# Evaluation against truth (the target tiles that have a truth raster), one `rsvae evaluate` process per
# batch, in the batch's job group (detect.smk); then the run's summary: the per-tile table (a part per batch,
# then merged) and the training curve.

for batch in PLAN.batches:
    evaluated = PLAN.truth_of(batch)
    if not evaluated:
        continue

    rule:
        name:
            f"evaluate_{batch.name}"
        input:
            scores=[f"{R}/scores/{t}.tif" for t in evaluated],
            truth=[PLAN.truth[t] for t in evaluated],
        output:
            metrics=[f"{R}/metrics/{t}.json" for t in evaluated],
            roc=[
                report(
                    f"{R}/plots/{t}_roc.png",
                    caption="../report/roc.rst",
                    category="3. Evaluation",
                    subcategory=t,
                    labels={"tile": t, "plot": "ROC curve"},
                )
                for t in evaluated
            ],
            quicklook=[
                report(
                    f"{R}/plots/{t}_quicklook.png",
                    caption="../report/truth.rst",
                    category="3. Evaluation",
                    subcategory=t,
                    labels={"tile": t, "plot": "score and truth"},
                )
                for t in evaluated
            ],
            histogram=[
                report(
                    f"{R}/plots/{t}_histogram.png",
                    caption="../report/histogram.rst",
                    category="3. Evaluation",
                    subcategory=t,
                    labels={"tile": t, "plot": "score histograms"},
                )
                for t in evaluated
            ],
        log:
            f"{R}/logs/evaluate/{batch.name}.log",
        benchmark:
            f"{R}/benchmarks/evaluate/{batch.name}.tsv"
        params:
            truth=lambda wildcards: PLAN.truth_pattern,  # a function: {tile} is not a wildcard here
            metrics=lambda wildcards, output: os.path.dirname(output.metrics[0]),
            plots=lambda wildcards, output: os.path.dirname(output.roc[0]),
        group:
            TILES
        threads: 1
        resources:
            mem_mb=lambda wildcards, attempt: 4000 * attempt,
            runtime=wf.batch_runtime(len(evaluated), per_tile=1),
            **CLUSTER,
        conda:
            "../envs/rsvae.yaml"
        shell:
            "rsvae evaluate {input.scores} --truth {params.truth:q} --outdir {params.metrics} "
            "--plots {params.plots} > {log} 2>&1"


for batch in PLAN.batches:

    # The batch's rows of the summary table, in its group job: the final table merges one part per batch, so
    # no command line lists every tile (10 000 of them would pass the system's limit on one argument).
    rule:
        name:
            f"summarize_{batch.name}"
        input:
            metrics=[f"{R}/metrics/{t}.json" for t in PLAN.truth_of(batch)],
            masks=[f"{R}/masks/{t}.tif" for t in batch.tiles],
            detections=[f"{R}/detections/{t}.gpkg" for t in batch.tiles],
        output:
            f"{R}/summary_parts/{batch.name}.csv",
        log:
            f"{R}/logs/summarize/{batch.name}.log",
        benchmark:
            f"{R}/benchmarks/summarize/{batch.name}.tsv"
        params:
            masks=lambda wildcards, input: " ".join(f"--mask {m}" for m in input.masks),
            detections=lambda wildcards, input: " ".join(f"--detections {d}" for d in input.detections),
        group:
            TILES
        threads: 1
        resources:
            mem_mb=2000,
            runtime=wf.batch_runtime(len(batch.tiles), per_tile=1),
            **CLUSTER,
        conda:
            "../envs/rsvae.yaml"
        shell:
            "rsvae summarize {input.metrics} {params.masks} {params.detections} -o {output} > {log} 2>&1"


rule summarize:
    input:
        parts=[f"{R}/summary_parts/{b.name}.csv" for b in PLAN.batches],
        model=f"{R}/model",
    output:
        table=report(
            f"{R}/summary.csv",
            caption="../report/summary_csv.rst",
            category="1. Summary",
            labels={"result": "table (CSV)"},
        ),
        html=report(
            f"{R}/summary.html",
            caption="../report/summary.rst",
            category="1. Summary",
            labels={"result": "table"},
        ),
        curve=report(
            f"{R}/training_curve.png",
            caption="../report/training_curve.rst",
            category="1. Summary",
            labels={"result": "training curve"},
        ),
    log:
        f"{R}/logs/summarize.log",
    benchmark:
        f"{R}/benchmarks/summarize.tsv"
    params:
        parts=lambda wildcards, input: " ".join(f"--part {p}" for p in input.parts),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
        **CLUSTER,
    conda:
        "../envs/rsvae.yaml"
    shell:
        "rsvae summarize {params.parts} --model {input.model} -o {output.table} "
        "--html {output.html} --plot {output.curve} > {log} 2>&1"


# Every target tile's detections in one layer, ranked across tiles (from each batch's part, detect.smk), and
# the review page of the highest ranked (their input tiles found by the paths recorded when scoring).
rule merge_detections:
    input:
        [f"{R}/detection_parts/{b.name}.gpkg" for b in PLAN.batches],
    output:
        f"{R}/detections.gpkg",
    log:
        f"{R}/logs/merge_detections.log",
    benchmark:
        f"{R}/benchmarks/merge_detections.tsv"
    # with the review page: one cluster job
    group:
        "detections"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
        **CLUSTER,
    conda:
        "../envs/rsvae.yaml"
    shell:
        "rsvae merge-detections {input} -o {output} > {log} 2>&1"


rule review:
    input:
        detections=f"{R}/detections.gpkg",
    output:
        report(
            f"{R}/review.html",
            caption="../report/review.rst",
            category="4. Detections",
            labels={"result": "review page"},
        ),
    log:
        f"{R}/logs/review.log",
    benchmark:
        f"{R}/benchmarks/review.tsv"
    group:
        "detections"
    params:
        config=CFG,
        settings=config["detect"],
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
        **CLUSTER,
    conda:
        "../envs/rsvae.yaml"
    shell:
        "rsvae review {input.detections} -o {output} --config {params.config} > {log} 2>&1"
