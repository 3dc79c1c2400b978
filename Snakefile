# rsvae workflow: demo data -> (stack product folders) -> ingest -> merge -> train -> score -> quicklooks,
# detections, evaluate (tiles with truth) -> summary, merged detections and their review page, and an HTML
# report. Per-tile steps run in batches of cluster.tiles_per_job tiles: one process per step and batch, and on
# a cluster one job per batch for scoring and its follow-ups (job group "tiles").
#
#   snakemake -c2                                   the demo, on a laptop
#   snakemake -c8 --configfile my.yaml              your own tiles (copy configs/config.yaml)
#   snakemake --profile configs/profiles/slurm --configfile my.yaml      on a SLURM cluster
#   snakemake --report results/report.html          the report, after a run
#
# Wiring only: each rule runs one `rsvae` command; the planning (tiles, truth, cluster account) lives in
# pipeline/workflow.py. Every job reads the run's resolved config with `rsvae ... --config`.

import os

from snakemake.utils import min_version, validate

from pipeline import workflow as wf

min_version("9.0")


configfile: "configs/config.yaml"


# A wrong key, type or glob stops here, before any job, with a message naming the key.
PLAN = wf.start(config, workflow.configfiles)
# Snakemake's own check of the same schema (pipeline/schema.yaml); it also fills in the defaults.
validate(config, "configs/schema.yaml")

R = PLAN.results
CFG = PLAN.config_file
# SLURM account/partition for every job: config `cluster` section, else $SBATCH_ACCOUNT/$SBATCH_PARTITION.
CLUSTER = wf.cluster_resources(config)
TARGETS = sorted(PLAN.targets)
TRUTH = sorted(PLAN.truth)
# Job groups: a batch's per-tile steps run as one cluster job (rules/detect.smk); merge and train share one
# unless training asks for a GPU. Local runs ignore groups.
TILES = "tiles"
MODEL_GROUP = None if config["cluster"]["gpu"] else "model"


report: "report/workflow.rst"


wildcard_constraints:
    tile=r"[^/]+",


onstart:
    wf.write_config(config, CFG)


include: "rules/stack.smk"
include: "rules/data.smk"
include: "rules/model.smk"
include: "rules/detect.smk"
include: "rules/summary.smk"


localrules:
    all,


# Scores, masks and metrics are inputs of the quicklooks and the summary, so they are made (and remade when
# missing) without being listed here: each listed file is one more lookup when planning 10 000 tiles.
rule all:
    input:
        expand(f"{R}/quicklooks/{{tile}}.png", tile=TARGETS),
        expand(f"{R}/features/{{tile}}.tif", tile=TARGETS if PLAN.features else []),
        f"{R}/summary.csv",
        f"{R}/summary.html",
        f"{R}/training_curve.png",
        f"{R}/detections.gpkg",
        f"{R}/review.html",
    default_target: True
