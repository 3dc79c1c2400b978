"""What the Snakefile needs to plan its jobs: the checked config, the tiles by name, cluster resources.

The Snakefile stays wiring only; every decision it depends on (which tiles, which truth rasters, where the
resolved config goes, which SLURM account) is made here, where it is tested.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import validate
from pipeline.errors import ConfigError
from pipeline.names import is_dataset_name, tile_name

#: Environment variables read when the config's cluster section leaves account or partition empty
#: (the names sbatch itself reads, so a shell already set up for sbatch needs nothing more).
ACCOUNT_ENV = "SBATCH_ACCOUNT"
PARTITION_ENV = "SBATCH_PARTITION"
#: What makes up the workflow in a checkout: copy these to run it in another folder.
WORKFLOW_FILES = ("Snakefile", "rules", "configs", "report", "envs", "pipeline")


@dataclass(frozen=True)
class Batch:
    """Tiles that one workflow job handles together, one process per step (``rsvae score TILES... --outdir``)."""

    name: str
    tiles: list[str]


@dataclass(frozen=True)
class Plan:
    """The tiles a run works on, by tile name (the file stem), and how they are batched into jobs."""

    results: str
    config_file: str
    normal: dict[str, str]
    targets: dict[str, str]
    truth: dict[str, str]
    demo_files: list[str] = field(default_factory=list)
    features: bool = False
    #: the truth rasters' path with ``{tile}`` for the name (``rsvae evaluate --truth``)
    truth_pattern: str = ""
    #: targets and normal tiles in batches of ``cluster.tiles_per_job``, by sorted name
    batches: list[Batch] = field(default_factory=list)
    normal_batches: list[Batch] = field(default_factory=list)
    #: product folders, STAC items and URLs to stack first (tile name -> folder, item or URL); their tiles are
    #: RESULTS/stacks/NAME.vrt
    stacks: dict[str, str] = field(default_factory=dict)

    def truth_of(self, batch: Batch) -> list[str]:
        """The tiles of ``batch`` that have a truth raster (they are evaluated)."""
        return [t for t in batch.tiles if t in self.truth]


def start(config: dict[str, Any], sources: Sequence[str | Path] = ()) -> Plan:
    """Check the workflow's config against the one schema and plan its tiles, as the Snakefile is read.

    A wrong key, type or glob raises Snakemake's WorkflowError with the one-line message naming the key and
    the config files, so the run stops before any job starts.
    """
    source = f"config ({', '.join(str(s) for s in sources)})" if sources else "config"
    try:
        checked = validate(config, source)
        try:
            if checked["train"]["context"] != "none" and not checked["ingest"]["context"]:
                raise ConfigError(f"train.context: {checked['train']['context']} needs the sample's ring means; "
                                  "set ingest.context (e.g. [3, 9])")
            return plan(checked)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    except ConfigError as exc:
        try:
            from snakemake.exceptions import WorkflowError
        except ImportError:  # not under Snakemake: the plain error
            raise exc from None
        raise WorkflowError(str(exc)) from None


def expand_tiles(patterns: Sequence[str], key: str) -> dict[str, str]:
    """Tile name -> path for every file the ``key`` globs match (sorted); each glob must match something.

    An entry that is a GDAL dataset name (a URL, /vsizip/..., a subdataset) is one tile, named by
    ``names.tile_name``. A glob may also match product folders (Sentinel-2 .SAFE, Landsat): they are returned
    as folders here, and ``plan`` turns each into a stack job.
    """
    tiles: dict[str, str] = {}
    for pattern in patterns:
        if is_dataset_name(pattern):
            matches = [pattern]
        else:
            found = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
            matches = [p for p in found if os.path.isfile(p) or _product(p, explicit=not glob.has_magic(pattern),
                                                                            key=key)]
        if not matches:
            raise ConfigError(f"{key}: {pattern!r} matches no file")
        for path in matches:
            name = _item_name(path, key) or tile_name(path)
            if name in tiles and os.path.realpath(tiles[name]) != os.path.realpath(path):
                raise ConfigError(f"{key}: two tiles named {name!r} ({tiles[name]} and {path}); "
                                  "tile names (file names without extension) must be unique")
            tiles.setdefault(name, path)
    return tiles


def _item_name(path: str, key: str) -> str | None:
    """A local STAC item file's tile name: its item id (downloaded items are often all ``item.json``)."""
    from pipeline.errors import InputError
    from pipeline.stac import is_item_name, item_id

    if not (is_item_name(path) and os.path.isfile(path)):
        return None
    try:
        return item_id(path)
    except InputError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _entries(entries: Sequence[Any], key: str, results: str) -> dict[str, str]:
    """Tile name -> path of a ``normal``/``targets`` list: its globs, files and URLs (``expand_tiles``) and the
    items of its STAC searches (item files recorded under ``RESULTS/stac``, named by item id)."""
    from pipeline.stac import resolve

    plain, items = resolve(entries, key, f"{results}/stac")
    tiles = expand_tiles(plain, key) if plain else {}
    for name, path in items.items():
        if name in tiles and os.path.realpath(tiles[name]) != os.path.realpath(path):
            raise ConfigError(f"{key}: two tiles named {name!r} ({tiles[name]} and the searched item {path})")
        tiles[name] = path
    return tiles


def _product(path: str, *, explicit: bool, key: str) -> bool:
    """Whether ``path`` is a product folder rsvae recognises; a folder named outright that is none is an error."""
    from pipeline.errors import InputError
    from pipeline.product_folders import recognise

    if not os.path.isdir(path):
        return False
    if _hyperspectral(path):  # an EnMAP L2A folder
        return True
    try:
        recognise(path)
    except InputError as exc:
        if explicit:
            raise ConfigError(f"{key}: {exc}") from None
        return False
    return True


def _hyperspectral(path: str) -> bool:
    """Whether ``path`` is a hyperspectral product (EnMAP folder, EMIT .nc, PRISMA .he5, ENVI file with
    wavelengths), which becomes a stack job like a product folder; a damaged one is a ConfigError naming it."""
    from pipeline import hyperspectral
    from pipeline.errors import InputError

    try:
        return hyperspectral.recognise([path]) is not None
    except InputError as exc:
        raise ConfigError(str(exc)) from None


def _stacked(tiles: dict[str, str], results: str, stacks: dict[str, str]) -> dict[str, str]:
    """Product folders and dataset names (URLs, /vsi paths) replaced by the VRT their stack job writes
    (``RESULTS/stacks/NAME.vrt``), noted in ``stacks`` (name -> folder or name). A URL thus becomes a small local
    file the rules can name as input (Snakemake takes inputs for local paths), and the VRT reads the URL."""
    from pipeline.stac import is_item_name

    out = {}
    for name, path in tiles.items():
        if os.path.isdir(path) or is_dataset_name(path) or is_item_name(path) or _hyperspectral(path):
            if name in stacks and os.path.realpath(stacks[name]) != os.path.realpath(path):
                raise ConfigError(f"two tiles to stack named {name!r} ({stacks[name]} and {path})")
            stacks[name] = path
            path = f"{results}/stacks/{name}.vrt"
        out[name] = path
    return out


def batches(names: Sequence[str], size: int, prefix: str = "b") -> list[Batch]:
    """``names`` sorted and cut into batches of at most ``size``, named ``{prefix}0000``, ``{prefix}0001``, ...

    A batch's tiles are its job's inputs: adding or removing a tile shifts the later batches, which Snakemake
    then reruns (their input lists changed); the earlier ones stay done.
    """
    ordered = sorted(names)
    return [Batch(f"{prefix}{i // size:04d}", ordered[i:i + size]) for i in range(0, len(ordered), size)]


def plan(config: dict[str, Any]) -> Plan:
    """The run's tiles: the demo's (``demo: true``) or the ``normal``/``targets`` globs, truth where it exists,
    and their batches of ``cluster.tiles_per_job`` (one job per batch and step)."""
    plan = _tiles(config)
    size = int((config.get("cluster") or {}).get("tiles_per_job") or 1)
    return replace(plan, batches=batches(plan.targets, size), normal_batches=batches(plan.normal, size))


def _tiles(config: dict[str, Any]) -> Plan:
    """The run's tiles by name, before batching."""
    results = str(config["results"]).rstrip("/") or "."
    config_file = f"{results}/config.yaml"
    if config["demo"]:
        from pipeline.config import schema
        from pipeline.synth import demo_layout

        defaults = schema()["properties"]
        changed = [k for k in ("normal", "targets", "truth") if config[k] != defaults[k]["default"]]
        if changed:
            raise ConfigError(f"demo: is true, so the demo tiles are used, but {' and '.join(changed)} name "
                              "other tiles; set demo: false to use them")

        s = config["synth"]
        layout = demo_layout(s["outdir"], tiles_normal=s["tiles_normal"], tiles_test=s["tiles_test"])
        if not layout.test:
            raise ConfigError("synth.tiles_test: the demo needs at least one test tile to score")
        normal = {p.stem: str(p) for p in layout.normal}
        targets = {p.stem: str(p) for p in layout.test}
        truth = {p.stem: str(p) for p in layout.truth}
        files = [str(p) for p in (*layout.normal, *layout.test, *layout.truth)]
        pattern = str(Path(s["outdir"]) / "truth" / "{tile}.tif")  # where synth.demo_layout puts them
        return Plan(results, config_file, normal, targets, truth, files, config["features"], pattern)
    stacks: dict[str, str] = {}
    normal = _stacked(_entries(config["normal"], "normal", results), results, stacks)
    targets = _stacked(_entries(config["targets"], "targets", results), results, stacks)
    if not normal:
        raise ConfigError("normal: no tiles to train on; list globs of normal tiles")
    if not targets:
        raise ConfigError("targets: no tiles to score; list globs of target tiles")
    pattern = config["truth"]
    try:
        pattern.format(tile="x")
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"truth: {pattern!r} is not a pattern with {{tile}} ({exc})") from None
    if "{tile}" not in pattern:
        raise ConfigError(f"truth: {pattern!r} has no {{tile}}; every target would share one truth raster")
    truth = {name: path for name in targets if os.path.isfile(path := pattern.replace("{tile}", name))}
    return Plan(results, config_file, normal, targets, truth, [], config["features"], pattern, stacks=stacks)


def stack_input(source: str) -> list[str]:
    """The stack job's input files: the product folder, or none for a dataset name (a URL is no local file)."""
    return [] if is_dataset_name(source) else [source]


def cluster_resources(config: dict[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """SLURM account and partition for every job: the config's cluster section, else $SBATCH_ACCOUNT/PARTITION.

    Empty values are left out, so the SLURM executor falls back to its own guess (and local runs ignore them).
    """
    environ = os.environ if environ is None else environ
    cluster = config.get("cluster") or {}
    resources = {}
    for key, env in (("account", ACCOUNT_ENV), ("partition", PARTITION_ENV)):
        value = cluster.get(key) or environ.get(env, "")
        if value:
            resources[f"slurm_{key}"] = value
    return resources


def write_config(config: dict[str, Any], path: str | Path) -> Path:
    """Write the resolved config (defaults filled in) for the jobs' ``rsvae --config``; untouched if unchanged."""
    path = Path(path)
    plain = json.loads(json.dumps(config))  # Snakemake's config may hold dict subclasses YAML cannot dump
    text = ("# The resolved configuration of the last workflow run (written by the Snakefile; edit the\n"
            "# config you ran with, not this file). Every rsvae job of the run reads it with --config.\n"
            + yaml.safe_dump(validate(plain, "workflow config"), sort_keys=False))
    if path.is_file() and path.read_text() == text:
        return path
    from pipeline.files import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def batch_runtime(tiles: int, per_tile: int, base: int = 10) -> Callable[[Any, int], int]:
    """A rule's ``runtime`` resource (minutes) for a batch of ``tiles``: ``base + per_tile * tiles``, times the
    attempt (the SLURM profile's retries get longer limits)."""

    def runtime(wildcards: Any, attempt: int) -> int:
        return (base + per_tile * tiles) * attempt

    return runtime


def copy_workflow(source: str | Path, dest: str | Path) -> None:
    """Copy the workflow's files (``WORKFLOW_FILES``) from the checkout at ``source`` into the folder ``dest``, to
    run it there (the tests and benchmarks do; links such as ``configs/schema.yaml`` stay links)."""
    import shutil

    for name in WORKFLOW_FILES:
        src, dst = Path(source) / name, Path(dest) / name
        if src.is_dir():
            shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
