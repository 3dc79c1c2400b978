"""The ``rsvae`` command line: each command parses options, calls one library function, reports.

Options left unset fall back to the ``--config`` file's section for the step, then to the schema's defaults.
User errors print one line (``Error: FILE: problem``) and exit non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from pipeline import __version__
from pipeline.cli_options import (
    chunk_option,
    common,
    device_option,
    library_choice,
    option,
    quiet_option,
    renamed,
    schema_choice,
    seed_option,
    threads_option,
)
from pipeline.errors import RsvaeError, RsvaeWarning

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class RsvaeGroup(click.Group):
    """A click group that turns RsvaeErrors into one-line messages and a non-zero exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        debug = bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except RsvaeError as exc:
            if debug:
                raise
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except OSError as exc:  # the system refused (disk full, I/O error) somewhere not wrapped in an RsvaeError
            if debug:
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"Error: {where}{exc.strerror or exc}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt as exc:
            from pipeline.streaming import cleanup

            cleanup()  # threads and temporaries that the signal kept their own context managers from ending
            click.echo("Interrupted; no partial output was left.", err=True)
            ctx.exit(128 + getattr(exc, "signum", signal.SIGINT))


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    prefix = "Warning" if issubclass(category, RsvaeWarning) else category.__name__
    click.echo(f"{prefix}: {message}", err=True)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM (Ctrl-C, a cluster's job kill, Snakemake's cancel), raised like Ctrl-C so every
    context manager removes its temporary files; the exit code is 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum: int, frame: Any) -> None:
    # A repeated signal (schedulers send SIGTERM more than once, users press Ctrl-C twice) must not
    # interrupt the cleanup the first one started; SIGKILL still ends the process at once.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Interrupted(signum)


@contextmanager
def pixel_bar(total: int, quiet: bool, desc: str) -> Iterator[Callable[[int], None]]:
    """A progress bar over pixels, shown only on a terminal and never with --quiet."""
    from tqdm import tqdm

    with tqdm(total=total, unit="px", unit_scale=True, desc=desc, disable=quiet or not sys.stderr.isatty(),
              leave=False) as bar:
        yield bar.update


def settings(config_path: str | None, name: str, **overrides: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The step's settings (config section + overrides, validated) and the whole config."""
    from pipeline.config import load_config, section

    config = load_config(config_path)
    return section(config, name, overrides), config


def say(quiet: bool, text: str) -> None:
    if not quiet:
        click.echo(text, err=True)


@click.group(cls=RsvaeGroup, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="rsvae")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
def cli(debug: bool) -> None:
    """rsvae: find anomalies in multispectral and hyperspectral GeoTIFFs with a variational autoencoder.

    \b
    A typical run, one step at a time:
      rsvae synth demo/ --seed 0
      rsvae ingest demo/normal/*.tif -o work/sample.nc --seed 0
      rsvae train work/sample.nc -o work/model --seed 0
      rsvae score work/model demo/test/tile_000.tif -o work/scores/tile_000.tif \\
          --mask-out work/masks/tile_000.tif --fpr 0.001

    Run `rsvae COMMAND --help` for each command's options.
    """
    warnings.showwarning = _show_warning
    # rasterio's own note duplicates rsvae's one-line warning about a tile without georeference.
    warnings.filterwarnings("ignore", message="Dataset has no geotransform")
    if not debug:
        # GDAL prints some failures (a write error while closing a file) straight to stderr, and rasterio
        # logs others; the one-line Error that rsvae raises for them says it, --debug shows the raw text.
        os.environ.setdefault("CPL_LOG", "OFF")
        rio_log = logging.getLogger("rasterio")
        if not any(isinstance(h, logging.NullHandler) for h in rio_log.handlers):
            rio_log.addHandler(logging.NullHandler())


@cli.command(context_settings=CONTEXT)
@click.argument("outdir", type=click.Path(file_okay=False))
@seed_option("synth", "Random seed; the same seed gives the same files.")
@option("--bands", type=int, section="synth", help="Number of spectral bands.")
@option("--size", type=int, section="synth", help="Tile width and height in pixels.")
@option("--tiles-normal", type=int, section="synth", help="Tiles of normal ground (for training).")
@option("--tiles-test", type=int, section="synth", help="Test tiles with implanted anomalies.")
@option("--dtype", type=schema_choice("synth", "dtype"), section="synth", help="Pixel type.")
@common
def synth(outdir: str, config_path: str | None, quiet: bool, **opts: Any) -> None:
    """Write a georeferenced demo data set to OUTDIR.

    \b
    OUTDIR/normal/normal_NNN.tif   tiles of normal ground
    OUTDIR/test/tile_NNN.tif       tiles with implanted anomalies
    OUTDIR/truth/tile_NNN.tif      uint8 truth (1 = anomaly), same grid

    \b
    Example:
      rsvae synth demo/ --seed 0 --bands 64 --size 256
    """
    from pipeline.synth import make_demo

    s, _ = settings(config_path, "synth", **opts)
    s.pop("outdir")
    layout = make_demo(outdir, **s)
    say(quiet, f"wrote {len(layout.normal)} normal, {len(layout.test)} test and {len(layout.truth)} truth "
               f"tiles to {outdir}")


@cli.command(context_settings=CONTEXT)
@click.argument("tiles", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Sample file to write (.nc); with --partial, one tile's partial sample.")
@click.option("--outdir", type=click.Path(file_okay=False),
              help="With --partial: one partial sample per tile, OUTDIR/NAME.nc (a bad tile is reported, the others "
                   "go on).")
@option("--max-pixels", type=int, section="ingest", help="Most pixels in the sample, shared fairly across tiles.")
@seed_option("ingest", "Random seed of the sampling.")
@click.option("--partial", is_flag=True,
              help="Write per-tile partial samples, for `rsvae merge` (the workflow's ingest jobs).")
@option("--context", callback=lambda ctx, param, value: _ints(ctx, param, value), section="ingest",
        help="Also record each sampled pixel's ring mean, guard,outer window (e.g. 3,9), for "
             "`rsvae train --context ring`.")
@common
def ingest(tiles: tuple[str, ...], output: str | None, outdir: str | None, partial: bool, config_path: str | None,
           quiet: bool, **opts: Any) -> None:
    """Sample valid pixels of normal TILES into a sample file, with band statistics over all valid pixels.

    \b
    Examples:
      rsvae ingest demo/normal/*.tif -o work/sample.nc --seed 0
      rsvae ingest demo/normal/normal_000.tif --partial -o work/parts/normal_000.nc
      rsvae ingest demo/normal/*.tif --partial --outdir work/parts
      rsvae ingest demo/normal/*.tif -o work/sample-ctx.nc --context 3,9
    """
    from pipeline import sample
    from pipeline.raster import describe

    s, _ = settings(config_path, "ingest", **opts)
    if not partial:
        if output is None or outdir is not None:
            raise click.UsageError("give -o FILE (--outdir goes with --partial)")
    elif one_or_many(tiles, output, outdir, {}, {}):
        sample.partial_tiles(tiles, outdir, s["max_pixels"], s["seed"],
                             on_done=tile_reporter(quiet, lambda path: f"wrote {path}"), context=s["context"]).check()
        return
    total = sum(info.width * info.height for info in map(describe, tiles))
    with pixel_bar(total, quiet, "ingest") as bar:
        if partial:
            sample.write_sample(sample.sample_tile(tiles[0], s["max_pixels"], s["seed"], bar, s["context"]), output)
        else:
            sample.ingest(tiles, output, max_pixels=s["max_pixels"], seed=s["seed"], progress=bar,
                          context=s["context"])
    say(quiet, f"wrote {output}")


@cli.command(context_settings=CONTEXT)
@click.argument("parts", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Sample file to write (.nc).")
@option("--max-pixels", type=int, section="ingest", help="Most pixels in the merged sample.")
@common
def merge(parts: tuple[str, ...], output: str, config_path: str | None, quiet: bool, **opts: Any) -> None:
    """Merge partial samples (from `rsvae ingest --partial`) into one sample file.

    The result equals `rsvae ingest` over the same tiles with the same seed.

    \b
    Example:
      rsvae merge work/parts/*.nc -o work/sample.nc
    """
    from pipeline import sample

    s, _ = settings(config_path, "ingest", max_pixels=opts["max_pixels"])
    merged = sample.merge_samples([sample.open_sample_dataset(p) for p in parts], s["max_pixels"])
    sample.write_sample(merged, output)
    say(quiet, f"wrote {output} ({merged.sizes['sample']} pixels from {len(parts)} tiles)")


def _ints(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, e.g. 64,32; got {value!r}") from None


@cli.command(context_settings=CONTEXT)
@click.argument("sample_file", metavar="SAMPLE", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="Model folder to write.")
@option("--method", type=schema_choice("train", "method"), section="train", help="Detector.")
@option("--context", type=schema_choice("train", "context"), section="train",
        help="none: the per-pixel VAE; ring: the context VAE (needs a sample ingested with --context).")
@click.option("--preset", type=schema_choice("train", "preset"),
              help="Named architecture; 'seed' is the textbook VAE (hidden 32, latent 32, BCE).")
@option("--hidden", callback=_ints, section="train", help="Hidden layer sizes, comma-separated.")
@option("--latent", type=int, section="train", help="Latent dimensions.")
@option("--beta", type=float, section="train", help="Weight of the KL term.")
@option("--reconstruction", type=schema_choice("train", "reconstruction"), section="train",
        help="Reconstruction term.")
@option("--noise", type=schema_choice("train", "noise"), section="train",
        help="Covariance of the Gaussian reconstruction term when scoring.")
@option("--trim", type=float, section="train",
        help="Train again without this fraction of worst-scoring sample pixels (0 = one pass).")
@option("--epochs", type=int, section="train", help="Most training epochs.")
@option("--max-steps", type=int, section="train", help="Most optimiser steps per training pass.")
@option("--batch-size", type=int, section="train", help="Pixels per optimiser step.")
@option("--lr", type=float, section="train", help="Adam learning rate.")
@option("--val-fraction", type=float, section="train", help="Held-out share of the sample.")
@option("--patience", type=int, section="train", help="Epochs without improvement before stopping (0 = never).")
@seed_option("train", "Random seed (weights, shuffling, split).")
@device_option("train", "train")
@threads_option("train")
@option("--inner-window", type=int, section="train", help="LRX guard window, odd.")
@option("--outer-window", type=int, section="train", help="LRX background window, odd.")
@common
def train(sample_file: str, output: str, config_path: str | None, quiet: bool, **opts: Any) -> None:
    """Train a detector on a SAMPLE file and save it as a model folder.

    The folder holds weights.safetensors and model.json: architecture, bands, normalisation, training history,
    held-out score quantiles (for --fpr) and versions. Loading it never executes code.

    \b
    Examples:
      rsvae train work/sample.nc -o work/model --seed 0
      rsvae train work/sample.nc -o work/model-seed --preset seed
      rsvae train work/sample.nc -o work/rx --method rx
      rsvae train work/sample.nc -o work/lrx --method lrx --inner-window 3 --outer-window 15
      rsvae train work/sample-ctx.nc -o work/model-ctx --context ring
    """
    from tqdm import tqdm

    from pipeline.training import train as train_model

    s, config = settings(config_path, "train", **opts)
    with tqdm(total=s["epochs"], unit="epoch", desc="train", disable=quiet or not sys.stderr.isatty(),
              leave=False) as bar:
        def progress(rec: dict[str, float]) -> None:
            if rec["epoch"] == 1:  # a new training pass, with its own number of epochs
                bar.reset(total=rec.get("epochs", s["epochs"]))
            bar.update(1)
            bar.set_postfix(train=f"{rec['train_loss']:.4g}", val=f"{rec['val_loss']:.4g}")

        det = train_model(sample_file, output, s, progress, config)
    t = det.meta.get("training", {})
    extra = f" in {t['epochs_run']} epochs ({t['seconds']:.1f} s), best val epoch {t['best_epoch']}" if t else ""
    say(quiet, f"wrote {output}: {det.kind} on {det.bands} bands{extra}")


def one_or_many(tiles: tuple[str, ...], output: str | None, outdir: str | None, single: dict[str, Any],
                many: dict[str, Any]) -> bool:
    """Check the -o (one tile) / --outdir (many tiles) choice and that each extra output option fits it; True
    for --outdir. ``single`` and ``many`` map the options of each mode (as the user spells them) to their values."""
    if (output is None) == (outdir is None):
        raise click.UsageError("give -o FILE (one tile) or --outdir DIR (one or more tiles)")
    if output is not None and len(tiles) != 1:
        raise click.UsageError(f"-o writes one tile's output; for {len(tiles)} tiles give --outdir DIR")
    wrong = [opt for opt, value in (many if output is not None else single).items() if value is not None]
    if wrong:
        raise click.UsageError(f"{wrong[0]} goes with {'--outdir' if output is not None else '-o'}")
    return outdir is not None


def tile_reporter(quiet: bool, describe_result: Callable[[Any], str]) -> Callable[[Any], None]:
    """``on_done`` for a many-tile command: one line per tile, an error always (named by tile), others unless -q."""

    def report(outcome: Any) -> None:
        if outcome.ok:
            say(quiet, describe_result(outcome.result))
            return
        exc = outcome.error
        text = str(exc) if isinstance(exc, RsvaeError) else f"{exc.strerror or exc}"
        if outcome.job.tile not in text:
            text = f"{outcome.job.tile}: {text}"
        click.echo(f"Error: {text}", err=True)

    return report


def _score_line(summary: Any, fpr: float | None) -> str:
    msg = (f"wrote {summary.output}: {summary.valid_pixels} of {summary.pixels} pixels scored in "
           f"{summary.seconds:.1f} s")
    if summary.flagged is not None:
        msg += f"; {summary.flagged} flagged above {summary.threshold:.4g} (fpr {fpr})"
    return msg


@cli.command(context_settings=CONTEXT)
@click.argument("model", type=click.Path())
@click.argument("tiles", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Score raster to write for one TILE (float32 COG; bands score, reconstruction, kl, rarity; "
                   "a QGIS .qml beside it).")
@click.option("--outdir", type=click.Path(file_okay=False),
              help="Folder for the score rasters of one or more TILES: OUTDIR/NAME.tif (NAME = tile file name "
                   "without extension).")
@click.option("--mask-out", type=click.Path(dir_okay=False),
              help="With -o: also write a uint8 anomaly mask (needs --fpr).")
@click.option("--mask-dir", type=click.Path(file_okay=False),
              help="With --outdir: also write each tile's anomaly mask as MASK_DIR/NAME.tif (needs --fpr).")
@click.option("--fpr", type=float, help="False-alarm rate on held-out normal pixels that sets the mask threshold.")
@option("--samples", type=int, section="score", help="Posterior samples to average the reconstruction over.")
@seed_option("score", "Seed of the posterior samples.")
@device_option("score", "score")
@threads_option("score")
@chunk_option("score")
@option("--scoring-path", type=schema_choice("score", "scoring_path"), section="score",
        help="VAE: folded (standardisation and residual whitening folded into the layers, fewer passes per pixel), "
             "layered (the model's layers one by one), or auto (the faster of the two on this CPU, measured at "
             "start); the same scores within float32 rounding.")
@click.option("--fast/--exact", "old_fast", default=None, hidden=True,
              help="Deprecated: --scoring-path folded / layered.")
@click.option("-v", "--verbose", is_flag=True, help="Also say which scoring path runs, and why.")
@common
def score(model: str, tiles: tuple[str, ...], output: str | None, outdir: str | None, mask_out: str | None,
          mask_dir: str | None, config_path: str | None, quiet: bool, verbose: bool, **opts: Any) -> None:
    """Score every valid pixel of each TILE with MODEL into a georeferenced float32 GeoTIFF.

    Nodata, NaN and masked pixels are nodata in the output. With a mask (--mask-out or --mask-dir) and --fpr,
    pixels scoring above the threshold at which a fraction FPR of held-out normal pixels would be flagged are 1.

    With --outdir, torch and the model load once for all TILES; a tile that fails is reported by name and the
    others go on; the exit code is non-zero when any failed.

    \b
    Examples:
      rsvae score work/model demo/test/tile_000.tif -o work/scores/tile_000.tif \\
          --mask-out work/masks/tile_000.tif --fpr 0.001
      rsvae score work/model demo/test/*.tif --outdir work/scores --mask-dir work/masks --fpr 0.001
    """
    from pipeline.cog_writer import check_distinct
    from pipeline.scorer import saved_halo
    from pipeline.scoring import read_blocks

    many = one_or_many(tiles, output, outdir, {"--mask-out": mask_out}, {"--mask-dir": mask_dir})
    if not many:
        check_distinct(tiles[0], [output, mask_out])
    old_fast = opts.pop("old_fast")
    if old_fast is not None:
        opts["scoring_path"] = renamed("--fast" if old_fast else "--exact", "--scoring-path",
                                       "folded" if old_fast else "layered", opts["scoring_path"])
    s, _ = settings(config_path, "score", **opts)
    with contextlib.ExitStack() as stack:
        # one tile: its first windows are decoded while torch and the model load (where model.json says which
        # margin the model reads them with; otherwise loading it says what is wrong)
        halo = None if many else saved_halo(model)
        ahead = None
        if halo is not None:  # (a tile that cannot be read stops here, with its own one-line error)
            ahead = stack.enter_context(read_blocks(tiles[0], halo))
        det = _load_model(model, s["device"], s["threads"])
        _score(det, tiles, many, output, outdir, mask_out, mask_dir, quiet, verbose, s, ahead)


def _score(det: Any, tiles: tuple[str, ...], many: bool, output: str | None, outdir: str | None,
           mask_out: str | None, mask_dir: str | None, quiet: bool, verbose: bool, s: dict[str, Any],
           ahead: Any) -> None:
    """``rsvae score`` once the model is loaded (``many``: --outdir; ``ahead``: the one tile's reader, started)."""
    from pipeline.raster import describe
    from pipeline.scoring import score_raster, score_tiles

    if verbose and det.scoring_path("folded") is not None:  # a detector with more than one scoring path (the VAE)
        path = ("the reference path (posterior samples)" if s["samples"] > 1
                else det.scoring_path(s["scoring_path"]).describe())
        click.echo(f"scoring path: {path}", err=True)
    fpr = s["fpr"] if (mask_out or mask_dir) else None
    if many:
        score_tiles(det, tiles, outdir, mask_dir=mask_dir, fpr=fpr, samples=s["samples"], seed=s["seed"],
                    chunk=s["chunk"], scoring_path=s["scoring_path"],
                    on_done=tile_reporter(quiet, lambda r: _score_line(r, fpr))).check()
        return
    info = describe(tiles[0])
    with pixel_bar(info.width * info.height, quiet, "score") as bar:
        summary = score_raster(det, tiles[0], output, mask_out=mask_out, fpr=fpr, samples=s["samples"],
                               seed=s["seed"], chunk=s["chunk"], progress=bar,
                               scoring_path=s["scoring_path"], blocks=ahead)
    say(quiet, _score_line(summary, fpr))


@cli.command(context_settings=CONTEXT)
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Metrics JSON to write (one SCORES TRUTH pair).")
@click.option("--truth", "truth_pattern",
              help="Many SCORES: each one's truth raster, {tile} standing for its name (e.g. 'truth/{tile}.tif').")
@click.option("--outdir", type=click.Path(file_okay=False),
              help="With --truth: folder for the metrics, OUTDIR/NAME.json.")
@click.option("--plots", type=click.Path(file_okay=False), help="Folder for PNG plots (ROC, quicklook, histogram).")
@quiet_option
def evaluate(files: tuple[str, ...], output: str | None, truth_pattern: str | None, outdir: str | None,
             plots: str | None, quiet: bool) -> None:
    """Compare a score raster with a truth raster (1 = anomaly) on the same grid: FILES is SCORES TRUTH, or
    with --truth and --outdir any number of score rasters (one process; a bad one is reported by name and the
    others go on).

    Reports pixel ROC AUC, average precision, detection rate at false-alarm rates 1e-3 and 1e-2, the best-F1
    threshold and background suppression; invalid (nodata) pixels are left out.

    \b
    Examples:
      rsvae evaluate work/scores/tile_000.tif demo/truth/tile_000.tif -o work/metrics/tile_000.json --plots work/plots
      rsvae evaluate work/scores/*.tif --truth 'demo/truth/{tile}.tif' --outdir work/metrics --plots work/plots
    """
    from pipeline.evaluate import evaluate as run
    from pipeline.evaluate import evaluate_tiles

    def line(m: dict[str, Any]) -> str:
        return (f"{m['scores']}: ROC AUC {m['roc_auc']:.4f}, AP {m['average_precision']:.4f}, "
                f"detection at 1e-3 false alarms {m['detection_rate_at_far_0.001']:.3f}")

    if (truth_pattern is None) != (outdir is None):
        raise click.UsageError("--truth and --outdir go together (many score rasters)")
    if truth_pattern is not None:
        if output is not None:
            raise click.UsageError("-o goes with one SCORES TRUTH pair, not with --outdir")
        evaluate_tiles(files, truth_pattern, outdir, plots, on_done=tile_reporter(quiet, line)).check()
        return
    if len(files) != 2:
        raise click.UsageError(f"give SCORES TRUTH (got {len(files)} files); for many score rasters give "
                               "--truth PATTERN --outdir DIR")
    m = run(files[0], files[1], output, plots)
    if output is None:
        import json

        click.echo(json.dumps({k: v for k, v in m.items() if k != "plots"}, indent=2))
    say(quiet, line(m))


@cli.command(context_settings=CONTEXT)
@click.argument("metrics", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--mask", "masks", multiple=True, type=click.Path(dir_okay=False),
              help="Anomaly mask of a tile (from `rsvae score --mask-out`); repeat for each tile.")
@click.option("--detections", "detections", multiple=True, type=click.Path(dir_okay=False),
              help="Detections of a tile (from `rsvae detect`); repeat for each tile.")
@click.option("--part", "parts", multiple=True, type=click.Path(dir_okay=False),
              help="A table an earlier `rsvae summarize -o` wrote, whose rows to include; repeat for each.")
@click.option("--model", type=click.Path(), help="Model folder whose training curve to plot.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Table to write (CSV).")
@click.option("--html", "html_out", type=click.Path(dir_okay=False), help="Also write the table as HTML.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Training curve PNG to write (needs --model).")
@quiet_option
def summarize(metrics: tuple[str, ...], masks: tuple[str, ...], detections: tuple[str, ...], parts: tuple[str, ...],
              model: str | None, output: str, html_out: str | None, plot: str | None, quiet: bool) -> None:
    """Tabulate every tile's results: pixels flagged in its mask, its detections (count, count at rarity >= 4,
    top rarity) and its METRICS (from `rsvae evaluate -o`).

    One row per tile (the file name without extension); tiles without truth have empty metric cells.

    \b
    Example:
      rsvae summarize results/metrics/*.json --mask results/masks/tile_000.tif --mask results/masks/tile_001.tif \\
          --model results/model -o results/summary.csv --plot results/training_curve.png
      rsvae summarize --part parts/b0000.csv --part parts/b0001.csv -o results/summary.csv
    """
    from pipeline.report import summarize as run

    rows = run(metrics, masks, output, model=model, plot=plot, out_html=html_out, detections=detections,
               parts=parts)
    say(quiet, f"wrote {output} ({len(rows)} tiles)" + (f" and {plot}" if plot else ""))


@cli.command(context_settings=CONTEXT)
@click.argument("scores", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="PNG to write for one SCORES raster.")
@click.option("--outdir", type=click.Path(file_okay=False), help="Folder for the PNGs of many: OUTDIR/NAME.png.")
@click.option("--mask", type=click.Path(dir_okay=False),
              help="With -o: anomaly mask to overlay (flagged pixels in cyan).")
@click.option("--mask-dir", type=click.Path(file_okay=False),
              help="With --outdir: overlay each raster's mask MASK_DIR/NAME.tif.")
@click.option("--band", type=int, help="Band of SCORES to show.  [default: rarity, else 1]")
@click.option("--max-size", type=int, default=1024, show_default=True, help="Most pixels a side in the picture.")
@quiet_option
def quicklook(scores: tuple[str, ...], output: str | None, outdir: str | None, mask: str | None,
              mask_dir: str | None, band: int | None, max_size: int, quiet: bool) -> None:
    """Draw a PNG quicklook of each SCORES raster (rarity on a fixed 0-8 scale, other bands
    stretched; nodata grey).

    \b
    Examples:
      rsvae quicklook results/scores/tile_000.tif --mask results/masks/tile_000.tif -o tile_000.png
      rsvae quicklook results/scores/*.tif --mask-dir results/masks --outdir quicklooks
    """
    from pipeline.report import quicklook as draw
    from pipeline.report import quicklook_tiles

    if max_size < 16:
        raise click.BadParameter("must be at least 16", param_hint="--max-size")
    if one_or_many(scores, output, outdir, {"--mask": mask}, {"--mask-dir": mask_dir}):
        quicklook_tiles(scores, outdir, mask_dir=mask_dir, band=band, max_size=max_size,
                        on_done=tile_reporter(quiet, lambda path: f"wrote {path}")).check()
        return
    draw(scores[0], output, mask=mask, band=band, max_size=max_size)
    say(quiet, f"wrote {output}")


@cli.command(context_settings=CONTEXT)
@click.argument("scores", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Detections to write for one SCORES raster: .gpkg (with a QGIS style), .geojson or .fgb.")
@click.option("--outdir", type=click.Path(file_okay=False),
              help="Folder for the detections of one or more SCORES rasters: OUTDIR/NAME.gpkg (see --format).")
@click.option("--format", "suffix", type=library_choice("pipeline.detections", "DRIVERS"),
              help="With --outdir: the files' format.  [default: .gpkg]")
@option("--min-rarity", type=float, section="detect",
        help="Rarity a pixel needs to be flagged (2: one normal pixel in 100).")
@click.option("--fpr", type=float, help="Or: false-alarm rate per pixel (--fpr 1e-5 is --min-rarity 5).")
@option("--min-pixels", type=int, section="detect", help="Smallest group of flagged pixels kept.")
@common
def detect(scores: tuple[str, ...], output: str | None, outdir: str | None, suffix: str | None,
           min_rarity: float | None, fpr: float | None, min_pixels: int | None, config_path: str | None,
           quiet: bool) -> None:
    """Turn each SCORES raster into ranked detections: one polygon per 8-connected group of rare pixels.

    Attributes: tile, rank (1 = highest peak rarity), pixels, area_m2, peak_rarity, mean_rarity, peak_score,
    peak_row, peak_col (from 0), peak_x, peak_y (the raster's CRS), lon, lat (WGS84).

    \b
    Examples:
      rsvae detect results/scores/tile_000.tif -o results/detections/tile_000.gpkg --min-rarity 5
      rsvae detect results/scores/*.tif --outdir results/detections
    """
    from pipeline.detections import detect as run
    from pipeline.detections import detect_tiles, threshold_of

    threshold_of(min_rarity, fpr)  # both given: a usage conflict (exit 2), before any other check
    many = one_or_many(scores, output, outdir, {}, {"--format": suffix})
    s, _ = settings(config_path, "detect", min_rarity=min_rarity, min_pixels=min_pixels)
    threshold = {"min_rarity": None if fpr is not None else s["min_rarity"], "fpr": fpr,
                 "min_pixels": s["min_pixels"]}
    if many:
        detect_tiles(scores, outdir, suffix=suffix or ".gpkg", **threshold,
                     on_done=tile_reporter(quiet, lambda r: f"wrote {r[0]}: {r[1]} detections")).check()
        return
    n = run(scores[0], output, **threshold)
    say(quiet, f"wrote {output}: {n} detections")


@cli.command("merge-detections", context_settings=CONTEXT)
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Merged detections (.gpkg, .geojson or .fgb).")
@quiet_option
def merge_detections(inputs: tuple[str, ...], output: str, quiet: bool) -> None:
    """Merge per-tile detection files into one layer, ranked again across all tiles.

    \b
    Example:
      rsvae merge-detections results/detections/*.gpkg -o results/detections.gpkg
    """
    from pipeline.detections import merge

    n = merge(inputs, output)
    say(quiet, f"wrote {output}: {n} detections from {len(inputs)} files")


@cli.command(context_settings=CONTEXT)
@click.argument("detections", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="HTML page to write.")
@click.option("--tile", "tiles", multiple=True, type=click.Path(dir_okay=False),
              help="Input tile of the detections (default: the path recorded when scoring); repeat per tile.")
@option("-n", "--count", type=int, section="detect", key="review", help="Detections to show, highest ranked first.")
@common
def review(detections: str, output: str, tiles: tuple[str, ...], count: int | None, config_path: str | None,
           quiet: bool) -> None:
    """Build a self-contained HTML page to review the highest-ranked DETECTIONS.

    For each: a colour chip of the input around it with its outline, its spectrum against the spectra around it
    (mean and 5-95 %), and its attributes.

    \b
    Example:
      rsvae review results/detections.gpkg -o review.html
    """
    from pipeline.review import write_review

    s, _ = settings(config_path, "detect", review=count)
    n = write_review(detections, output, tiles=tiles, count=s["review"])
    say(quiet, f"wrote {output}: {n} detections")


@cli.command(context_settings=CONTEXT)
@click.argument("model", type=click.Path())
@click.argument("tiles", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Feature raster to write for one TILE (float32 COG; bands latent_1 ... latent_k).")
@click.option("--outdir", type=click.Path(file_okay=False),
              help="Folder for the feature rasters of one or more TILES: OUTDIR/NAME.tif.")
@device_option("score", "encode")
@threads_option("score")
@chunk_option("score")
@common
def features(model: str, tiles: tuple[str, ...], output: str | None, outdir: str | None, config_path: str | None,
             quiet: bool, **opts: Any) -> None:
    """Write the VAE's latent features of every valid pixel of each TILE: a float32 GeoTIFF with one band per
    latent dimension (the posterior means), on TILE's grid, CRS and nodata.

    Uses the score section of --config for device, threads and chunk. With --outdir, the model loads once for
    all TILES, a tile that fails is reported by name and the others go on (non-zero exit code if any failed).

    \b
    Examples:
      rsvae features work/model demo/test/tile_000.tif -o work/features/tile_000.tif
      rsvae features work/model demo/test/*.tif --outdir work/features
    """
    from pipeline.raster import describe

    many = one_or_many(tiles, output, outdir, {}, {})
    s, _ = settings(config_path, "score", **opts)
    loaded = _load_model(model, s["device"], s["threads"])  # first: it imports torch

    from pipeline.generative import features as write_features
    from pipeline.generative import features_tiles, require_vae

    det = require_vae(loaded, "rsvae features")
    latent = det.architecture["latent"]

    def line(summary: Any) -> str:
        return (f"wrote {summary.output}: {latent} latent bands for {summary.valid_pixels} of {summary.pixels} "
                f"pixels in {summary.seconds:.1f} s")

    if many:
        features_tiles(det, tiles, outdir, chunk=s["chunk"], on_done=tile_reporter(quiet, line)).check()
        return
    info = describe(tiles[0])
    with pixel_bar(info.width * info.height, quiet, "features") as bar:
        summary = write_features(det, tiles[0], output, chunk=s["chunk"], progress=bar)
    say(quiet, line(summary))


@cli.command(context_settings=CONTEXT)
@click.argument("model", type=click.Path())
@click.option("-n", "--count", type=click.IntRange(min=1), default=16, show_default=True,
              help="Spectra to generate.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="CSV to write: one row per spectrum, one column per band (wavelength or band name).")
@click.option("--plot", type=click.Path(dir_okay=False), help="Also plot them beside real training spectra (PNG).")
@click.option("--sample", "sample_path", type=click.Path(dir_okay=False),
              help="Sample file with the real spectra for --plot.  [default: the one the model was trained on]")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the prior draws.")
@click.option("--temperature", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Scale of the prior draws: below 1 stays nearer typical spectra (fewer from the tails).")
@common
def generate(model: str, count: int, output: str, plot: str | None, sample_path: str | None, seed: int,
             temperature: float, config_path: str | None, quiet: bool) -> None:
    """Generate spectra from a VAE MODEL: decode draws of the prior N(0, I) into spectra in the input's units.

    The plot shows what the model believes normal ground looks like, beside the real training spectra's mean
    and spread per band, so you can see whether it learned the data.

    \b
    Examples:
      rsvae generate work/model -n 50 -o work/generated.csv --plot work/generated.png
      rsvae generate work/model -n 50 --temperature 0.5 -o work/typical.csv
    """
    from pipeline.generative import generate_csv

    det, source = generate_csv(model, count, output, seed=seed, temperature=temperature, plot=plot,
                               sample_path=sample_path)
    msg = f"wrote {output}: {count} spectra of {det.bands} bands"
    if plot:
        msg += f" and {plot}" + (f" (real spectra from {source})" if source else "")
    say(quiet, msg)


def _pair(kind: type) -> Callable[[click.Context, click.Parameter, str | None], tuple | None]:
    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple | None:
        if value is None:
            return None
        parts = value.split(",")
        try:
            if len(parts) != 2:
                raise ValueError
            return kind(parts[0]), kind(parts[1])
        except ValueError:
            what = "ROW,COL (two integers)" if kind is int else "X,Y (two numbers in the raster's CRS)"
            raise click.BadParameter(f"expected {what}, got {value!r}") from None

    return parse


@cli.command(context_settings=CONTEXT)
@click.argument("model", type=click.Path())
@click.argument("tile", type=click.Path())
@click.option("--from", "start", callback=_pair(int), metavar="ROW,COL", help="First pixel (row, col from 0).")
@click.option("--to", "end", callback=_pair(int), metavar="ROW,COL", help="Second pixel (row, col from 0).")
@click.option("--from-xy", "start_xy", callback=_pair(float), metavar="X,Y",
              help="First pixel by map coordinates in TILE's CRS.")
@click.option("--to-xy", "end_xy", callback=_pair(float), metavar="X,Y",
              help="Second pixel by map coordinates in TILE's CRS.")
@click.option("--steps", type=click.IntRange(min=2), default=10, show_default=True,
              help="Spectra along the path, both end points included.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="CSV to write: one row per step (step, t, then one column per band).")
@click.option("--plot", type=click.Path(dir_okay=False), help="Also plot the path and the two real spectra (PNG).")
@common
def interpolate(model: str, tile: str, start: tuple[int, int] | None, end: tuple[int, int] | None,
                start_xy: tuple[float, float] | None, end_xy: tuple[float, float] | None, steps: int,
                output: str, plot: str | None, config_path: str | None, quiet: bool) -> None:
    """Decode the straight path in latent space between two pixels of TILE (their posterior means).

    Give each end as --from/--to ROW,COL or --from-xy/--to-xy X,Y. The first and last spectra are the model's
    reconstructions of the two pixels; the steps between show the transition the model sees between them.

    \b
    Examples:
      rsvae interpolate work/model demo/test/tile_000.tif --from 10,10 --to 200,180 --steps 12 \\
          -o work/path.csv --plot work/path.png
      rsvae interpolate work/model demo/test/tile_000.tif --from-xy 500315,4991525 --to-xy 505415,4985825 \\
          -o work/path.csv
    """
    from pipeline.generative import interpolate_csv, pixel_labels

    for name, rc, xy in (("from", start, start_xy), ("to", end, end_xy)):
        if (rc is None) == (xy is None):
            raise click.UsageError(f"give exactly one of --{name} ROW,COL and --{name}-xy X,Y")
    pixels = interpolate_csv(model, tile, [start or start_xy, end or end_xy], [start is None, end is None], steps,
                             output, plot)
    labels = pixel_labels(pixels)
    msg = f"wrote {output}: {steps} spectra from {labels[0]} to {labels[1]}"
    if plot:
        msg += f" and {plot}"
    say(quiet, msg)


@cli.command(context_settings=CONTEXT)
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Stack to write: .vrt (references the inputs, no pixels copied) or .tif (a COG; a plain tiled "
                   "GeoTIFF beyond 128 float32 bands).")
@click.option("--bands", callback=lambda ctx, p, v: [b for b in v.split(",") if b.strip()] if v else None,
              help="Bands by name, comma-separated, in the order wanted (e.g. B02,B03,B04,B08; a STAC item's "
                   "asset keys and common names too: red,nir08).  "
                   "[default: the reflective bands in wavelength order]")
@click.option("--resolution", type=float, help="Pixel size in CRS units.  [default: the finest among the inputs]")
@click.option("--like", help="Put the stack on this raster's grid, or on a model folder's CRS (at the inputs' "
                             "finest resolution).")
@option("--resampling", type=library_choice("pipeline.stack", "RESAMPLING"), section="stack", help="Resampling of bands.")
@click.option("--mask", help="Mask raster (any grid; resampled with nearest) whose --mask-values or --mask-bits "
                             "mark invalid pixels.")
@click.option("--mask-values", callback=_ints, help="Values of --mask that are invalid, comma-separated.")
@click.option("--mask-bits", callback=_ints, help="Bits of --mask that make a pixel invalid when set (0 = lowest).")
@click.option("--no-mask", "no_mask", is_flag=True, default=None,
              help="Do not mask a product folder's quality layer (SCL, QA_PIXEL).")
@click.option("--keep-all-bands", "keep_all_bands", is_flag=True, default=None,
              help="Hyperspectral products: keep the bands the product marks bad and those in the water-vapour "
                   "windows (1340-1460, 1790-1960 nm).")
@click.option("--swath", is_flag=True, help="EMIT: write the reflectance on the sensor's swath grid (no map "
                                            "georeference) as the output .tif, instead of through its GLT.")
@common
def stack(inputs: tuple[str, ...], output: str, no_mask: bool | None, config_path: str | None, quiet: bool,
          **opts: Any) -> None:
    """Put the bands of one scene on one grid: band files at several resolutions, a product folder or a STAC item.

    INPUTS are band files (any raster rasterio opens: files, URLs, /vsizip/...; every band of each, in the
    order given) or one product folder: Sentinel-2 L2A (.SAFE, or a folder of *_B02*.jp2|tif files such as a
    BigEarthNet patch) or Landsat 4-9 Collection 2 (*_SR_B*.TIF or *_B1.TIF ...), or one STAC item (a .json
    file or URL, or an API's .../items/ID URL: its assets read where they are, remote ones by ranges), or a
    folder of an item's assets downloaded and named by key (B02.tif or blue.tif ..., scl.tif), or one
    hyperspectral product: an EnMAP L2A folder, an EMIT L2A reflectance .nc, a PRISMA L2D .he5 or an ENVI file
    with wavelengths (bands B1...BN in wavelength order; bad and water-vapour bands left out). A product's
    quality layer
    (Sentinel-2 SCL: no data, defective, cloud shadow, cloud, cirrus; Landsat QA_PIXEL: fill, dilated cloud,
    cirrus, cloud, cloud shadow) masks pixels unless --no-mask; masked pixels are invalid in every command.
    A .vrt stack writes its mask beside it (SCENE.mask.tif). Band descriptions are the sensor's band names,
    with the centre wavelength in nm as the band tag `wavelength`.

    \b
    Examples:
      rsvae stack S2B_MSIL2A_20240601T103629_N0510_R008_T32TQM_20240601T140502.SAFE -o scene.vrt
      rsvae stack LC09_L2SP_193029_20240612_20240613_02_T1/ -o landsat.vrt
      rsvae stack https://earth-search.aws.element84.com/v1/collections/sentinel-2-l2a/items/ITEM_ID -o s2.vrt
      rsvae stack a_B02.tif a_B03.tif a_B04.tif a_B8A.tif -o scene.tif --resolution 20
      rsvae stack other_zone.tif --like work/model -o other_zone_utm32.vrt
      rsvae stack EMIT_L2A_RFL_001_20230401T061523_2309104_002.nc -o emit.vrt
    """
    from pipeline.stack import stack as run

    like = opts.pop("like")  # per scene, so no config key
    swath = opts.pop("swath")
    if no_mask:
        opts["quality_mask"] = False
    s, _ = settings(config_path, "stack", **opts)
    summary = run(inputs, output, bands=s["bands"], resolution=s["resolution"], like=like,
                  resampling=s["resampling"], mask=s["mask"], mask_values=s["mask_values"],
                  mask_bits=s["mask_bits"], quality_mask=s["quality_mask"], keep_all_bands=s["keep_all_bands"],
                  swath=swath)
    g = summary.grid
    what = f"{summary.product} " if summary.product else ""
    names = summary.bands if len(summary.bands) <= 12 else [*summary.bands[:2], "...", summary.bands[-1]]
    count = f"{len(summary.bands)} " if len(summary.bands) > 12 else ""
    msg = (f"wrote {output}: {what}{count}bands {', '.join(names)} on {g.width} x {g.height} pixels of "
           f"{abs(g.transform.a):g} ({g.crs.to_string() if g.crs else 'no CRS'})")
    for note in summary.notes:
        msg += f"; {note}"
    for label, count in summary.masked.items():
        msg += f"; {label} masked {count} of {g.width * g.height} pixels"
    if summary.mask_file:
        msg += f" (mask in {summary.mask_file})"
    say(quiet, msg)


def _load_model(model: str, device: str, threads: int) -> Any:
    """``load_detector`` for a command that streams, with torch held to ``threads``. Python's cyclic garbage
    collector is off while torch imports and the model loads, and what they made is then frozen out of later
    collections: otherwise it walks torch's objects during the import, while streaming and once more at exit
    (0.1 s of the import and 0.25 s of the exit, measured; the README's Performance section)."""
    gc.disable()
    try:
        from pipeline.detectors import load_detector

        _set_threads(threads)
        return load_detector(model, device)
    finally:
        gc.freeze()
        gc.enable()


def _set_threads(threads: int) -> None:
    import os

    import torch

    torch.set_num_threads(threads or os.cpu_count() or 1)


def main() -> None:
    """Console-script entry point."""
    # Idle OpenMP threads sleep instead of spinning: spinning threads collapse torch's speed on a busy machine
    # (one training step: 252 ms with two spinning threads vs 2.4 ms passive, benchmarks in the perf notes).
    # Set before torch is imported (commands import it lazily); a user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    cli(prog_name="rsvae")


if __name__ == "__main__":
    main()
