# Evaluation against truth (one job per target tile that has a truth raster) and the run's summary: the
# per-tile table and the training curve.


rule evaluate:
    input:
        scores=f"{R}/scores/{{tile}}.tif",
        truth=lambda wildcards: PLAN.truth[wildcards.tile],
    output:
        metrics=f"{R}/metrics/{{tile}}.json",
        roc=report(
            f"{R}/plots/{{tile}}_roc.png",
            caption="../report/roc.rst",
            category="3. Evaluation",
            subcategory="{tile}",
            labels={"tile": "{tile}", "plot": "ROC curve"},
        ),
        quicklook=report(
            f"{R}/plots/{{tile}}_quicklook.png",
            caption="../report/truth.rst",
            category="3. Evaluation",
            subcategory="{tile}",
            labels={"tile": "{tile}", "plot": "score and truth"},
        ),
        histogram=report(
            f"{R}/plots/{{tile}}_histogram.png",
            caption="../report/histogram.rst",
            category="3. Evaluation",
            subcategory="{tile}",
            labels={"tile": "{tile}", "plot": "score histograms"},
        ),
    log:
        f"{R}/logs/evaluate/{{tile}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{{tile}}.tsv"
    params:
        plots=lambda wildcards, output: os.path.dirname(output.roc),
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=30,
        **CLUSTER,
    conda:
        "../envs/rsvae.yaml"
    shell:
        "rsvae evaluate {input.scores} {input.truth} -o {output.metrics} --plots {params.plots} > {log} 2>&1"


rule summarize:
    input:
        metrics=expand(f"{R}/metrics/{{tile}}.json", tile=TRUTH),
        masks=expand(f"{R}/masks/{{tile}}.tif", tile=TARGETS),
        detections=expand(f"{R}/detections/{{tile}}.gpkg", tile=TARGETS),
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
        masks=lambda wildcards, input: " ".join(f"--mask {m}" for m in input.masks),
        detections=lambda wildcards, input: " ".join(f"--detections {d}" for d in input.detections),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
        **CLUSTER,
    conda:
        "../envs/rsvae.yaml"
    shell:
        "rsvae summarize {input.metrics} {params.masks} {params.detections} --model {input.model} -o {output.table} "
        "--html {output.html} --plot {output.curve} > {log} 2>&1"


# Every target tile's detections in one layer, ranked across tiles, and the review page of the highest ranked.
rule merge_detections:
    input:
        expand(f"{R}/detections/{{tile}}.gpkg", tile=TARGETS),
    output:
        f"{R}/detections.gpkg",
    log:
        f"{R}/logs/merge_detections.log",
    benchmark:
        f"{R}/benchmarks/merge_detections.tsv"
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
        tiles=[PLAN.targets[t] for t in TARGETS],
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
    params:
        config=CFG,
        settings=config["detect"],
        tiles=lambda wildcards, input: " ".join(f"--tile {t}" for t in input.tiles),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
        **CLUSTER,
    conda:
        "../envs/rsvae.yaml"
    shell:
        "rsvae review {input.detections} -o {output} {params.tiles} --config {params.config} > {log} 2>&1"
