"""Running a plan: each run once (cached in its ``result.json``), several processes sharing one plan.

Errors are recorded on the run, not raised, so one broken configuration does not stop the rest of the table.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from pseudo_ris.data.io import atomic_write_json
from pseudo_ris.data.locks import LOCK_NAME, file_lock
from ris_models.reproduction.plan import ROWS, Plan, planned_runs, run_dir
from ris_models.reproduction.stages import complete_datasets, run_trained, run_zero_shot

log = logging.getLogger(__name__)


def _cached(path: Path, fn: Callable[[], dict]) -> tuple[dict, bool]:
    if path.is_file():
        return json.loads(path.read_text()), True
    result = fn()
    atomic_write_json(path, result, indent=2)
    return result, False



@dataclass
class RunRecord:
    model: str
    row: str
    dataset: str
    seed: int
    result: dict | None
    error: str | None = None
    cached: bool = False


@contextlib.contextmanager
def run_lock(run: Path) -> Iterator[bool]:
    """Non-blocking exclusive lock on a run directory: yields False when another process holds it, so several
    ``tools/reproduce.py`` processes can share one plan (each takes the runs nobody else is doing). The same
    ``<run>/.lock`` that training takes for its output directory (nested in this process)."""
    with file_lock(run / LOCK_NAME, blocking=False) as mine:
        yield mine


def execute(plan: Plan, progress: Callable[[str], None] = print, report_only: bool = False) -> list[RunRecord]:
    """Run everything the plan needs (finished runs are read from their result.json); errors are recorded, not
    raised, so one broken configuration does not stop the rest. ``report_only``: run nothing, collect what is
    cached (the others are listed as not run)."""
    records = []
    runs = planned_runs(plan)
    for k, (model, row, ds, seed) in enumerate(runs, 1):
        path = run_dir(plan, model, row, ds, seed) / "result.json"
        tag = f"[{k}/{len(runs)}] {row} {model} {ds} seed {seed}"
        if report_only and not path.is_file():
            progress(f"{tag}: not run (report_only)")
            records.append(RunRecord(model, row, ds, seed, None, "not run yet"))
            continue
        fn = (lambda row=row: run_zero_shot(plan, row)) if ROWS[row].kind == "zero_shot" else \
            (lambda model=model, row=row, ds=ds, seed=seed: run_trained(plan, model, row, ds, seed))
        try:
            start = time.perf_counter()
            if report_only:
                result, cached = _cached(path, fn)
            else:
                with run_lock(path.parent) as mine:
                    if not mine:
                        progress(f"{tag}: running in another process, skipped")
                        records.append(RunRecord(model, row, ds, seed, None, "running in another process"))
                        continue
                    result, cached = _cached(path, fn)
                    if cached:
                        result = complete_datasets(plan, model, row, ds, seed, result, path)
            progress(f"{tag}: {'cached' if cached else f'done in {time.perf_counter() - start:.0f} s'}")
            records.append(RunRecord(model, row, ds, seed, result, cached=cached))
        except Exception as exc:  # noqa: BLE001 - recorded on the page; the other runs go on
            progress(f"{tag}: FAILED {type(exc).__name__}: {exc}")
            log.debug("run failed", exc_info=True)
            records.append(RunRecord(model, row, ds, seed, None, f"{type(exc).__name__}: {exc}\n"
                                     + traceback.format_exc(limit=3)))
    return records


