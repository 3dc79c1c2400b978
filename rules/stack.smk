# Product folders matched by `normal` or `targets` (Sentinel-2 .SAFE, Landsat Collection 2, band-file folders):
# one job each stacks the chosen bands on one grid as a VRT (plus its cloud mask, NAME.mask.tif, beside it),
# which is then ingested or scored like any tile. Settings: the config's `stack` section. An entry that is a
# URL or /vsi path gets a stack job too: its VRT is a local file the other rules can take as input. So does each
# STAC item: an item file or URL in the lists, or each item of a `{stac: {...}}` search (recorded once, at
# planning, in RESULTS/stac/items/ID.json; pipeline/stac.py).


rule stack:
    input:
        lambda wildcards: wf.stack_input(PLAN.stacks[wildcards.tile]),
    output:
        f"{R}/stacks/{{tile}}.vrt",
    log:
        f"{R}/logs/stack/{{tile}}.log",
    benchmark:
        f"{R}/benchmarks/stack/{{tile}}.tsv"
    params:
        source=lambda wildcards: PLAN.stacks[wildcards.tile],
        config=CFG,
        settings=config["stack"],
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 1000 * attempt,
        runtime=30,
        **CLUSTER,
    conda:
        "../envs/rsvae.yaml"
    shell:
        "rsvae stack {params.source:q} -o {output} --config {params.config} > {log} 2>&1"
