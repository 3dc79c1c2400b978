# Scoring: one job per target tile (score raster + anomaly mask at the config's false-alarm rate), its
# quicklook, and (config `features: true`) its latent-feature raster.


rule score:
    input:
        model=f"{R}/model",
        tile=lambda wildcards: PLAN.targets[wildcards.tile],
    output:
        scores=f"{R}/scores/{{tile}}.tif",
        mask=f"{R}/masks/{{tile}}.tif",
    log:
        f"{R}/logs/score/{{tile}}.log",
    benchmark:
        f"{R}/benchmarks/score/{{tile}}.tsv"
    params:
        config=CFG,
        fpr=config["score"]["fpr"],
        settings=config["score"],
    # one torch thread (score.threads) beside a reader and a writer thread
    threads: 2
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
        **CLUSTER,
    conda:
        "../envs/rsvae.yaml"
    shell:
        "rsvae score {input.model} {input.tile} -o {output.scores} --mask-out {output.mask} "
        "--fpr {params.fpr} --config {params.config} > {log} 2>&1"


rule quicklook:
    input:
        scores=f"{R}/scores/{{tile}}.tif",
        mask=f"{R}/masks/{{tile}}.tif",
    output:
        report(
            f"{R}/quicklooks/{{tile}}.png",
            caption="../report/quicklook.rst",
            category="2. Quicklooks",
            labels={"tile": "{tile}"},
        ),
    log:
        f"{R}/logs/quicklook/{{tile}}.log",
    benchmark:
        f"{R}/benchmarks/quicklook/{{tile}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
        **CLUSTER,
    conda:
        "../envs/rsvae.yaml"
    shell:
        "rsvae quicklook {input.scores} --mask {input.mask} -o {output} > {log} 2>&1"


rule features:
    input:
        model=f"{R}/model",
        tile=lambda wildcards: PLAN.targets[wildcards.tile],
    output:
        f"{R}/features/{{tile}}.tif",
    log:
        f"{R}/logs/features/{{tile}}.log",
    benchmark:
        f"{R}/benchmarks/features/{{tile}}.tsv"
    params:
        config=CFG,
        settings=config["score"],
    # device, torch threads and chunk from the score section, like scoring
    threads: 2
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
        **CLUSTER,
    conda:
        "../envs/rsvae.yaml"
    shell:
        "rsvae features {input.model} {input.tile} -o {output} --config {params.config} > {log} 2>&1"


# Detections of each target tile: ranked polygons of rare pixels (config section `detect`), with a QGIS style.
rule detect:
    input:
        scores=f"{R}/scores/{{tile}}.tif",
    output:
        f"{R}/detections/{{tile}}.gpkg",
    log:
        f"{R}/logs/detect/{{tile}}.log",
    benchmark:
        f"{R}/benchmarks/detect/{{tile}}.tsv"
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
        "rsvae detect {input.scores} -o {output} --config {params.config} > {log} 2>&1"
