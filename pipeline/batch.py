"""Many tiles in one process: each tile's outputs named ``FOLDER/NAME.tif`` (NAME = the tile's file name without
extension), one tile after another, a bad tile reported by name while the others go on.

A command that loads something expensive once (torch and a model) hands ``run_tiles`` the list of tiles, the
output folders by role (``{"scores": "out/scores", "masks": "out/masks"}``) and a function that does one tile;
``rsvae score``, ``rsvae features`` (and any later per-tile command) share this loop, so they name outputs, refuse
clashing names and report failures the same way. Each tile's outputs are written atomically by the function itself
(``RasterWriter``), so an interrupted or failed tile leaves nothing half-written and finished tiles stay.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import InputError, RsvaeError
from pipeline.names import tile_name  # the workflow's {tile}: the same name for files, URLs and /vsi paths


@dataclass(frozen=True)
class TileJob:
    """One tile of a batch: its input path, its name and its output path for each role."""

    tile: str
    name: str
    outputs: dict[str, Path]


@dataclass
class TileOutcome:
    """What became of one tile: the work function's result, or the error that stopped this tile only."""

    job: TileJob
    result: Any = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class BatchResult:
    """Every tile's outcome, in the order given."""

    outcomes: list[TileOutcome] = field(default_factory=list)

    @property
    def failed(self) -> list[TileOutcome]:
        return [o for o in self.outcomes if not o.ok]

    def check(self) -> None:
        """Raise TilesFailed naming the tiles that failed (after the others were done), if any did."""
        if self.failed:
            names = ", ".join(o.job.tile for o in self.failed[:5]) + (" ..." if len(self.failed) > 5 else "")
            raise TilesFailed(f"{len(self.failed)} of {len(self.outcomes)} tiles failed: {names}")


class TilesFailed(RsvaeError):
    """Some tiles of a many-tile command failed; the others were written (each failure was reported by name)."""


def plan_outputs(tiles: Sequence[str | Path], folders: Mapping[str, str | Path | None],
                 suffix: str = ".tif") -> list[TileJob]:
    """Each tile's output path per role, ``FOLDER/NAME{suffix}`` (roles whose folder is None are left out).

    Two tiles with the same name would overwrite each other's outputs: that is an InputError naming both,
    raised before any tile is worked on.
    """
    seen: dict[str, str] = {}
    jobs = []
    for tile in tiles:
        name = tile_name(tile)
        if name in seen:
            raise InputError(f"{tile}: has the same name {name!r} as {seen[name]}; their outputs in one folder "
                             "would overwrite each other (rename one, or run them separately)")
        seen[name] = str(tile)
        outputs = {role: Path(folder) / f"{name}{suffix}" for role, folder in folders.items() if folder is not None}
        jobs.append(TileJob(str(tile), name, outputs))
    return jobs


def run_tiles(jobs: Sequence[TileJob], work: Callable[[TileJob], Any],
              on_done: Callable[[TileOutcome], None] | None = None) -> BatchResult:
    """Call ``work(job)`` for every tile in order; a user error (RsvaeError) or a system refusal (OSError) of one
    tile is recorded and the next tile goes on. ``on_done`` hears each outcome as it happens (for logs).

    Interrupts (KeyboardInterrupt, the CLI's SIGTERM) and bugs stop the batch: the tile in progress removes its
    temporaries, tiles already finished stay complete.
    """
    result = BatchResult()
    for job in jobs:
        try:
            outcome = TileOutcome(job, result=work(job))
        except (RsvaeError, OSError) as exc:
            outcome = TileOutcome(job, error=exc)
        result.outcomes.append(outcome)
        if on_done is not None:
            on_done(outcome)
    return result
