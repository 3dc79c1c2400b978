# Scoring, in batches of cluster.tiles_per_job target tiles (pipeline.workflow.Batch): per batch, one
# `rsvae score TILES... --outdir` process (torch and the model load once) writes each tile's score raster and
# anomaly mask, one `rsvae quicklook` process draws their quicklooks, and (config `features: true`) one
# `rsvae features` process writes their latent-feature rasters. Outputs stay per tile (scores/NAME.tif ...).
#
# Every per-batch rule is in the job group TILES: on a cluster, a batch's steps (and its evaluation, in
# summary.smk) run as one job. A new per-tile step joins the same way: a rule per batch in such a loop (or a
# per-tile rule) with `group: TILES` whose input is this batch's outputs (see docs/architecture.md).

for batch in PLAN.batches:

    rule:
        name:
            f"score_{batch.name}"
        input:
            model=f"{R}/model",
            tiles=[PLAN.targets[t] for t in batch.tiles],
        output:
            scores=[f"{R}/scores/{t}.tif" for t in batch.tiles],
            masks=[f"{R}/masks/{t}.tif" for t in batch.tiles],
        log:
            f"{R}/logs/score/{batch.name}.log",
        benchmark:
            f"{R}/benchmarks/score/{batch.name}.tsv"
        params:
            config=CFG,
            fpr=config["score"]["fpr"],
            scores=lambda wildcards, output: os.path.dirname(output.scores[0]),
            masks=lambda wildcards, output: os.path.dirname(output.masks[0]),
            settings=config["score"],
        group:
            TILES
        # one torch thread (score.threads) beside a reader and a writer thread
        threads: 2
        resources:
            mem_mb=lambda wildcards, attempt: 4000 * attempt,
            runtime=wf.batch_runtime(len(batch.tiles), per_tile=5),
            **CLUSTER,
        conda:
            "../envs/rsvae.yaml"
        shell:
            "rsvae score {input.model} {input.tiles} --outdir {params.scores} --mask-dir {params.masks} "
            "--fpr {params.fpr} --config {params.config} > {log} 2>&1"

    rule:
        name:
            f"quicklook_{batch.name}"
        input:
            scores=[f"{R}/scores/{t}.tif" for t in batch.tiles],
            masks=[f"{R}/masks/{t}.tif" for t in batch.tiles],
        output:
            [
                report(
                    f"{R}/quicklooks/{t}.png",
                    caption="../report/quicklook.rst",
                    category="2. Quicklooks",
                    labels={"tile": t},
                )
                for t in batch.tiles
            ],
        log:
            f"{R}/logs/quicklook/{batch.name}.log",
        benchmark:
            f"{R}/benchmarks/quicklook/{batch.name}.tsv"
        params:
            masks=lambda wildcards, input: os.path.dirname(input.masks[0]),
            outdir=lambda wildcards, output: os.path.dirname(output[0]),
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
            "rsvae quicklook {input.scores} --mask-dir {params.masks} --outdir {params.outdir} > {log} 2>&1"

    if PLAN.features:

        rule:
            name:
                f"features_{batch.name}"
            input:
                model=f"{R}/model",
                tiles=[PLAN.targets[t] for t in batch.tiles],
                # not read: one edge to the batch's scoring puts the features in its group job
                scores=f"{R}/scores/{batch.tiles[0]}.tif",
            output:
                [f"{R}/features/{t}.tif" for t in batch.tiles],
            log:
                f"{R}/logs/features/{batch.name}.log",
            benchmark:
                f"{R}/benchmarks/features/{batch.name}.tsv"
            params:
                config=CFG,
                outdir=lambda wildcards, output: os.path.dirname(output[0]),
                settings=config["score"],
            group:
                TILES
            # device, torch threads and chunk from the score section, like scoring
            threads: 2
            resources:
                mem_mb=lambda wildcards, attempt: 4000 * attempt,
                runtime=wf.batch_runtime(len(batch.tiles), per_tile=5),
                **CLUSTER,
            conda:
                "../envs/rsvae.yaml"
            shell:
                "rsvae features {input.model} {input.tiles} --outdir {params.outdir} --config {params.config} "
                "> {log} 2>&1"

    # The batch's detections: ranked polygons of rare pixels per tile (config section `detect`), with a QGIS
    # style, and the batch's part of results/detections.gpkg (merged in summary.smk: no command line lists every
    # tile).
    rule:
        name:
            f"detect_{batch.name}"
        input:
            scores=[f"{R}/scores/{t}.tif" for t in batch.tiles],
            # not read: after the quicklooks, so the batch's group job needs at most two cores at a time
            # (scoring; then quicklook and evaluation; then this) and fits a two-core node
            quicklooks=[f"{R}/quicklooks/{t}.png" for t in batch.tiles],
        output:
            tiles=[f"{R}/detections/{t}.gpkg" for t in batch.tiles],
            part=f"{R}/detection_parts/{batch.name}.gpkg",
        log:
            f"{R}/logs/detect/{batch.name}.log",
        benchmark:
            f"{R}/benchmarks/detect/{batch.name}.tsv"
        params:
            config=CFG,
            outdir=lambda wildcards, output: os.path.dirname(output.tiles[0]),
            settings=config["detect"],
        group:
            TILES
        threads: 1
        resources:
            mem_mb=lambda wildcards, attempt: 2000 * attempt,
            runtime=wf.batch_runtime(len(batch.tiles), per_tile=2),
            **CLUSTER,
        conda:
            "../envs/rsvae.yaml"
        shell:
            "(rsvae detect {input.scores} --outdir {params.outdir} --config {params.config} && "
            "rsvae merge-detections {output.tiles} -o {output.part}) > {log} 2>&1"
