# Product folders matched by `normal` or `targets` (Sentinel-2 .SAFE, Landsat Collection 2, band-file folders):
# one job each stacks the chosen bands on one grid as a VRT (plus its cloud mask, NAME.mask.tif, beside it),
# which is then ingested or scored like any tile. Settings: the config's `stack` section.


rule stack:
    input:
        lambda wildcards: PLAN.stacks[wildcards.tile],
    output:
        f"{R}/stacks/{{tile}}.vrt",
    log:
        f"{R}/logs/stack/{{tile}}.log",
    benchmark:
        f"{R}/benchmarks/stack/{{tile}}.tsv"
    params:
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
        "rsvae stack {input} -o {output} --config {params.config} > {log} 2>&1"
