"""The miniature reproduction of the paper's claims on SynthRef (issue 4): every run, cached, then one results page.

Rows (``ROWS``; arXiv 2407.07412 Tab. 1-4 in miniature):

* ``zero_shot`` / ``zero_shot_gt``: no training; SAM (or GT) masks ranked by the CLIP scorer (`ris_models.zero_shot`);
* ``beam`` / ``distinctive`` / ``full``: trained on pseudo labels of the SAM-mask store: beam-search captions only;
  + distinctive samples (unfiltered); + DoC filtering (the full method). One store, three selections
  (`pseudo_ris.evaluation.variants`), so only the labels differ;
* ``full_gt``: the full method on GT instance masks (``masks=gt``): caption quality without mask errors;
* ``human_100`` / ``human_10``: human labels, all / a 10 % image subset; ``mixed_10``: 10 % human + pseudo (full).

Pseudo-label rows do not depend on the evaluation dataset (the labels come from the unlabelled pool): each is trained
once, its checkpoint selected on ``synthref`` val (the first dataset), and evaluated on every dataset. Human and
mixed rows are trained per dataset. Every run writes ``<out_dir>/runs/<model>/<row>/<dataset>/s<seed>/result.json``;
a rerun skips finished runs and resumes a killed training from its ``last.ckpt``. The page (``docs/results.md``)
shows mean ± std over seeds (std over n seeds with ddof 1; "-" for one seed).

Library functions do the work: generation (`pseudo_ris.generation.runner.run`), training and evaluation
(`ris_models.training.train`, `ris_models.evaluation.evaluate_checkpoint`), quality (`pseudo_ris.evaluation.quality`).
Configs of the generator and the trainer are composed from ``conf/`` with the overrides in ``conf/reproduce.yaml``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from pseudo_ris.data.errors import PseudoRISError
from pseudo_ris.data.io import atomic_write_json, atomic_write_text
from pseudo_ris.data.plain import to_plain as _plain

log = logging.getLogger(__name__)
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


class ReproduceConfigError(PseudoRISError):
    """An invalid reproduction option (unknown row, profile, model)."""


@dataclass(frozen=True)
class Row:
    label: str
    kind: str                 # zero_shot | pseudo | human | mixed
    store: str | None = None  # sam | gt (pseudo-label store / zero-shot mask source)
    variant: str | None = None
    ratio: float = 1.0


ROWS: dict[str, Row] = {
    "zero_shot": Row("zero-shot: SAM masks ranked by the CLIP scorer", "zero_shot", store="sam"),
    "zero_shot_gt": Row("zero-shot: GT masks ranked by the CLIP scorer", "zero_shot", store="gt"),
    "beam": Row("pseudo: beam search only", "pseudo", "sam", "beam"),
    "distinctive": Row("pseudo: + distinctive sampling (no filter)", "pseudo", "sam", "beam_distinctive"),
    "full": Row("pseudo: + DoC filtering (full method)", "pseudo", "sam", "full"),
    "full_gt": Row("pseudo, GT masks (`masks=gt`), full method", "pseudo", "gt", "full"),
    "human_100": Row("human 100 %", "human", ratio=1.0),
    "human_10": Row("human 10 %", "human", ratio=0.1),
    "mixed_10": Row("human 10 % + pseudo (full)", "mixed", "sam", "full", ratio=0.1),
}

#: table columns: (dataset, split, header)
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("synthref", "val", "SR val"), ("synthref", "testA", "SR testA"), ("synthref", "testB", "SR testB"),
    ("synthref+", "val", "SR+ val"), ("synthref+", "testA", "SR+ testA"), ("synthref+", "testB", "SR+ testB"),
    ("synthrefg", "val", "SRg val"), ("synthrefg", "test", "SRg test"), ("synthref", "unseen", "unseen"))


# ------------------------------------------------------------------------------------------------- configs
def compose(config_name: str, overrides: Sequence[str]) -> dict:
    """A config of ``conf/`` composed with Hydra's compose API (outside any running Hydra app)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return _plain(hydra_compose(config_name, overrides=list(overrides)))


@dataclass
class Plan:
    """The resolved options of one reproduction (``conf/reproduce.yaml`` + the chosen profile)."""

    profile: str
    seeds: list[int]
    models: list[str]
    datasets: list[str]
    rows: list[str]
    max_steps: int
    val_every: int
    limit_eval: int | None
    gen_max_images: int | None
    plain_sampling: bool
    out_dir: Path
    results_md: Path
    data_root: Path
    train_overrides: list[str]
    generate_overrides: list[str]
    cache_dir: str
    gallery_images: int = 8
    notes_md: Path | None = None
    trainer: str = "cpu"      # conf/trainer group of every training (gpu / ddp for profile=full on GPUs)
    device: str = "cpu"       # device of generation and the zero-shot ranker (cuda on GPUs)

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any], data_root: Path) -> "Plan":
        cfg = _plain(cfg)
        name = cfg["profile"]
        if name not in cfg["profiles"]:
            raise ReproduceConfigError(f"unknown profile {name!r}; choose one of {sorted(cfg['profiles'])}")
        p = {**cfg["profiles"][name], **{k: v for k, v in (cfg.get("override") or {}).items() if v is not None}}
        bad = [r for r in p["rows"] if r not in ROWS]
        if bad:
            raise ReproduceConfigError(f"unknown row(s) {bad}; choose from {list(ROWS)}")
        if not p["datasets"] or p["datasets"][0] != "synthref":
            raise ReproduceConfigError("datasets must start with synthref (pseudo rows select checkpoints on it)")
        return cls(profile=name, seeds=[int(s) for s in p["seeds"]], models=list(p["models"]),
                   datasets=list(p["datasets"]), rows=list(p["rows"]), max_steps=int(p["max_steps"]),
                   val_every=int(p["val_every"]), limit_eval=p.get("limit_eval"),
                   gen_max_images=p.get("gen_max_images"), plain_sampling=bool(p.get("plain_sampling", False)),
                   out_dir=Path(str(cfg["out_dir"])).expanduser() / name, results_md=Path(str(cfg["results_md"])),
                   data_root=data_root, train_overrides=list(cfg.get("train_overrides") or []),
                   generate_overrides=list(cfg.get("generate_overrides") or []), cache_dir=str(cfg["cache_dir"]),
                   gallery_images=int(cfg.get("gallery_images", 8)),
                   notes_md=Path(str(cfg["notes_md"])) if cfg.get("notes_md") else None,
                   trainer=str(cfg.get("trainer") or "cpu"), device=str(cfg.get("device") or "cpu"))


def _q(key: str, value: Any) -> str:
    """A Hydra override with a quoted value (paths may hold ``~``, ``+``, ``=``)."""
    return f"{key}={json.dumps(str(value))}"


# --------------------------------------------------------------------------------------------- generation
PLAIN_SETTINGS = ("[{kind: beam, value: 6}, {kind: topk, value: 5, distinctive: true}, "
                  "{kind: topk, value: 7, distinctive: true}, {kind: topk, value: 9, distinctive: true}, "
                  "{kind: topk, value: 11, distinctive: true}, {kind: topk, value: 13, distinctive: true}, "
                  "{kind: topp, value: 0.4, distinctive: true}, {kind: topp, value: 0.5, distinctive: true}, "
                  "{kind: topp, value: 0.6, distinctive: true}, {kind: topp, value: 0.7, distinctive: true}, "
                  "{kind: topp, value: 0.8, distinctive: true}, {kind: topk, value: 5}, {kind: topk, value: 9}, "
                  "{kind: topk, value: 13}, {kind: topp, value: 0.5}, {kind: topp, value: 0.7}]")


def generate_config(plan: Plan, masks: str) -> dict:
    out = plan.out_dir / "generate" / masks
    overrides = [_q("data_root", plan.data_root), f"masks={masks}", _q("out_dir", out), _q("out_root", out),
                 _q("cache_dir", plan.cache_dir), f"device={plan.device}", *plan.generate_overrides]
    if plan.gen_max_images is not None:
        overrides.append(f"max_images={int(plan.gen_max_images)}")
    if plan.plain_sampling:
        overrides.append(f"decoding.settings={PLAIN_SETTINGS}")
    return compose("generate", overrides)


def ensure_store(plan: Plan, masks: str) -> Path:
    """Generate (resumably) the candidate store of ``masks`` and the generator's own dataset, gallery, summary."""
    from pseudo_ris.generation import runner

    cfg = generate_config(plan, masks)
    out = Path(cfg["out_dir"])
    marker = out / "reproduce_done.json"
    if marker.is_file():
        return out
    start = time.perf_counter()
    summary = runner.run(cfg)
    atomic_write_json(marker, {"seconds": round(time.perf_counter() - start, 1), "summary": summary}, indent=2)
    return out


def ensure_variant(plan: Plan, masks: str, variant: str) -> Path:
    """``pseudo_root`` of a variant dataset (written once from the store)."""
    from pseudo_ris.evaluation.variants import write_variant_dataset

    store = ensure_store(plan, masks)
    root = plan.out_dir / "pseudo" / f"{masks}_{variant}"
    info = root / "variant.json"
    if not info.is_file():
        summary = write_variant_dataset(store, variant, root)
        atomic_write_json(info, summary, indent=2)
    return root


# ------------------------------------------------------------------------------------------------ running
def run_dir(plan: Plan, model: str, row: str, dataset: str, seed: int) -> Path:
    return plan.out_dir / "runs" / model / row / dataset / f"s{seed}"


def train_config(plan: Plan, model: str, row: Row, dataset: str, seed: int, out: Path,
                 pseudo_root: Path | None) -> dict:
    mode = {"pseudo": "pseudo", "human": "human", "mixed": "mixed"}[row.kind]
    overrides = [f"model={model}", f"dataset={dataset}", f"data={mode}", f"ratio={row.ratio}", f"seed={seed}",
                 _q("data_root", plan.data_root), _q("cache_dir", plan.cache_dir), _q("output_dir", out),
                 f"max_steps={plan.max_steps}", "epochs=100000", f"trainer={plan.trainer}",
                 f"trainer.limit_train_batches={plan.val_every}", "logger=csv", *plan.train_overrides]
    if plan.limit_eval is not None:
        overrides.append(f"limit_eval={int(plan.limit_eval)}")
    if pseudo_root is not None:
        overrides.append(_q("pseudo_root", pseudo_root))
    last = out / "checkpoints" / "last.ckpt"
    if last.is_file():
        overrides.append(_q("ckpt_path", last))  # resume a killed run exactly
    return compose("train", overrides)


def _evaluate_other(plan: Plan, ckpt: str, dataset: str, trainer_cfg: dict, out: Path) -> dict:
    from ris_models.evaluation import evaluate_checkpoint

    cfg = {"ckpt": ckpt, "dataset": {"name": dataset, "split_by": None, "eval_splits": None},
           "data_root": str(plan.data_root), "cache_dir": plan.cache_dir, "trainer": trainer_cfg, "batch_size": 32,
           "num_workers": 0, "limit_eval": plan.limit_eval, "num_overlays": 0, "out_dir": str(out)}
    return evaluate_checkpoint(cfg)


def run_trained(plan: Plan, model: str, row_name: str, dataset: str, seed: int) -> dict:
    """Train one configuration (resuming if possible) and evaluate it; pseudo rows on every dataset."""
    from ris_models.training import train

    row = ROWS[row_name]
    pseudo_root = ensure_variant(plan, row.store, row.variant) if row.variant else None
    out = run_dir(plan, model, row_name, dataset, seed)
    cfg = train_config(plan, model, row, dataset, seed, out, pseudo_root)
    result = train(cfg)
    if not result["results"]:  # interrupted (Ctrl-C / SIGTERM): never cache a run without numbers
        raise RuntimeError(f"training of {out} stopped before its evaluation; rerun to resume from last.ckpt")
    ckpt = result["best_ckpt"] or result["last_ckpt"]
    datasets = {dataset: result["results"]}
    if row.kind == "pseudo":
        for other in plan.datasets[1:]:
            datasets[other] = _evaluate_other(plan, ckpt, other, cfg["trainer"], Path(ckpt).parent)
    return {"datasets": datasets, "global_step": int(result["global_step"]),
            "train_seconds": round(float(result["train_seconds"]), 1), "checkpoint": str(ckpt),
            "metrics_csv": [str(p) for p in metrics_files(out)], "data_root": str(plan.data_root)}


def _zero_shot_on(plan: Plan, row_name: str, datasets: Sequence[str]) -> dict[str, dict]:
    """Scores of a zero-shot row (masks of its store ranked by the CLIP scorer) on each of ``datasets``."""
    from pseudo_ris.data.refer import ReferDataset
    from ris_models.zero_shot import build_zero_shot, evaluate_zero_shot

    gen_cfg = generate_config(plan, ROWS[row_name].store)
    out = {}
    for name in datasets:
        ds = ReferDataset(plan.data_root, name)
        out[name] = evaluate_zero_shot(build_zero_shot(gen_cfg, dataset=ds), ds, limit=plan.limit_eval)
    return out


def run_zero_shot(plan: Plan, row_name: str) -> dict:
    start = time.perf_counter()
    datasets = _zero_shot_on(plan, row_name, plan.datasets)
    return {"datasets": datasets, "eval_seconds": round(time.perf_counter() - start, 1),
            "data_root": str(plan.data_root)}


def _cached(path: Path, fn: Callable[[], dict]) -> tuple[dict, bool]:
    if path.is_file():
        return json.loads(path.read_text()), True
    result = fn()
    atomic_write_json(path, result, indent=2)
    return result, False


def missing_datasets(plan: Plan, row_name: str, result: Mapping[str, Any]) -> list[str]:
    """Datasets of the plan a cached model-level run (pseudo / zero-shot) was not evaluated on yet."""
    if ROWS[row_name].kind not in ("pseudo", "zero_shot"):
        return []
    return [d for d in plan.datasets if d not in result.get("datasets", {})]


def complete_datasets(plan: Plan, model: str, row_name: str, dataset: str, seed: int, result: dict,
                      path: Path) -> dict:
    """Evaluate a cached pseudo / zero-shot run on datasets added to the plan after it finished (no retraining),
    and rewrite its result.json; so widening ``datasets`` reuses every finished training."""
    missing = missing_datasets(plan, row_name, result)
    if not missing:
        return result
    row = ROWS[row_name]
    if row.kind == "zero_shot":
        result["datasets"].update(_zero_shot_on(plan, row_name, missing))
    else:
        ckpt = result["checkpoint"]
        if not Path(ckpt).is_file():
            raise RuntimeError(f"{path}: checkpoint {ckpt} is gone; delete the run directory to retrain it")
        cfg = train_config(plan, model, row, dataset, seed, path.parent, None)
        for name in missing:
            result["datasets"][name] = _evaluate_other(plan, ckpt, name, cfg["trainer"], Path(ckpt).parent)
    atomic_write_json(path, result, indent=2)
    return result


@dataclass
class RunRecord:
    model: str
    row: str
    dataset: str
    seed: int
    result: dict | None
    error: str | None = None
    cached: bool = False


def planned_runs(plan: Plan) -> list[tuple[str, str, str, int]]:
    """(model, row, training dataset, seed) in execution order; zero-shot rows are model- and seed-free.

    Order: zero-shot rows, then training dataset (pseudo rows train on the first only), seed, model, row; so a
    partial run (time out, Ctrl-C) leaves whole seeds of the first dataset rather than all seeds of a few rows."""
    runs = [("-", row, "all", 0) for row in plan.rows if ROWS[row].kind == "zero_shot"]
    for ds in plan.datasets:
        for seed in plan.seeds:
            for model in plan.models:
                for row in plan.rows:
                    kind = ROWS[row].kind
                    if kind in ("human", "mixed") or (kind == "pseudo" and ds == plan.datasets[0]):
                        runs.append((model, row, ds, seed))
    return runs


@contextlib.contextmanager
def run_lock(run: Path) -> Iterator[bool]:
    """Non-blocking exclusive lock on a run directory: yields False when another process holds it, so several
    ``tools/reproduce.py`` processes can share one plan (each takes the runs nobody else is doing)."""
    run.mkdir(parents=True, exist_ok=True)
    with open(run / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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


# ------------------------------------------------------------------------------------------------- tables
def per_seed(records: Sequence[RunRecord], model: str, metric: str) -> dict[str, dict[int, dict[tuple[str, str], float]]]:
    """``{row: {seed: {(dataset, split): value}}}``: a seed's cells gathered over its per-dataset runs."""
    out: dict[str, dict[int, dict[tuple[str, str], float]]] = {}
    for rec in records:
        if rec.result is None or rec.model not in (model, "-"):
            continue
        cells = out.setdefault(rec.row, {}).setdefault(rec.seed, {})
        for ds, splits in rec.result["datasets"].items():
            for split, values in splits.items():
                if metric in values and values[metric] is not None and math.isfinite(values[metric]):
                    cells[(ds, split)] = float(values[metric])
    return out


def aggregate(records: Sequence[RunRecord], model: str, metric: str) -> dict[str, dict[tuple[str, str], list[float]]]:
    """``{row: {(dataset, split): [value per seed]}}`` for one model (zero-shot rows for every model)."""
    out: dict[str, dict[tuple[str, str], list[float]]] = {}
    for row, seeds in per_seed(records, model, metric).items():
        cells = out.setdefault(row, {})
        for _, values in sorted(seeds.items()):
            for key, value in values.items():
                cells.setdefault(key, []).append(value)
    return out


def mean_std(values: Sequence[float]) -> str:
    if not values:
        return "-"
    mean = 100.0 * float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100.0 * float(np.std(values, ddof=1)):.1f}"


def results_table(records: Sequence[RunRecord], model: str, metric: str, rows: Sequence[str]) -> str:
    cells = aggregate(records, model, metric)
    used = [c for c in COLUMNS if any(c[:2] in cells.get(r, {}) for r in rows)]
    lines = ["| row | " + " | ".join(c[2] for c in used) + " |", "|---|" + "|".join("---:" for _ in used) + "|"]
    for r in ROWS:
        if r not in rows:
            continue
        lines.append(f"| {ROWS[r].label} | " + " | ".join(mean_std(cells.get(r, {}).get(c[:2], [])) for c in used)
                     + " |")
    return "\n".join(lines)


#: the paper's claims as (description, better row, worse row, columns compared: "seen" or "unseen")
CLAIMS: tuple[tuple[str, str, str, str], ...] = (
    ("full method > zero-shot baseline", "full", "zero_shot", "seen"),
    ("distinctive sampling helps (unfiltered, vs beam search only)", "distinctive", "beam", "seen"),
    ("DoC filtering helps (vs unfiltered distinctive + beam)", "full", "distinctive", "seen"),
    ("both together help (full method vs beam search only)", "full", "beam", "seen"),
    ("10 % human + pseudo > 10 % human alone", "mixed_10", "human_10", "seen"),
    ("pseudo labels beat human supervision on unseen concepts", "full", "human_100", "unseen"),
)


def claim_verdict(better: Sequence[float], worse: Sequence[float], deterministic_worse: bool = False,
                  deterministic_better: bool = False) -> tuple[float, float | None, str]:
    """``(Δ, 2 SE or None, verdict)`` for "better > worse" from per-seed scores.

    The standard error of the difference of means is sqrt(s_a²/n_a + s_b²/n_b) (sample std, ddof 1); a zero-shot row
    is deterministic and contributes 0. Verdict: ``yes`` / ``no`` when |Δ| > 2 SE, ``within noise`` otherwise, and
    ``yes/no (1 seed, untested)`` when a trained side has a single seed.
    """
    a, b = np.asarray(better, float), np.asarray(worse, float)
    delta = float(a.mean() - b.mean())
    sides = [(a, deterministic_better), (b, deterministic_worse)]
    if any(len(x) < 2 and not det for x, det in sides):
        return delta, None, f"{'yes' if delta > 0 else 'no'} (1 seed, untested)"
    var = sum(0.0 if det else float(x.var(ddof=1)) / len(x) for x, det in sides)
    two_se = 2.0 * math.sqrt(var)
    if abs(delta) <= two_se:
        return delta, two_se, "within noise"
    return delta, two_se, "yes" if delta > 0 else "no"


def claims_section(records: Sequence[RunRecord], model: str, metric: str = "mIoU") -> str:
    """One line per claim: per seed, the mean of ``metric`` over the columns that every seed of both rows has (seen =
    every split but unseen); then the mean over seeds of each row, their difference, and a 2-standard-error verdict."""
    seeds = per_seed(records, model, metric)
    lines = [f"| claim ({model}, {metric}) | better row | worse row | Δ (points) | 2 SE | seeds | holds? |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for text, good, bad, which in CLAIMS:
        a, b = seeds.get(good, {}), seeds.get(bad, {})
        # columns every seed of both rows has (a partly finished plan compares on what all seeds share)
        shared = set.intersection(*(set(cells) for cells in [*a.values(), *b.values()])) if a and b else set()
        keys = sorted(k for k in shared if (k[1] == "unseen") == (which == "unseen"))
        sa = [float(np.mean([cells[k] for k in keys])) for _, cells in sorted(a.items())] if keys else []
        sb = [float(np.mean([cells[k] for k in keys])) for _, cells in sorted(b.items())] if keys else []
        if not sa or not sb:
            lines.append(f"| {text} | - | - | - | - | - | not measured |")
            continue
        delta, two_se, verdict = claim_verdict(sa, sb, deterministic_better=ROWS[good].kind == "zero_shot",
                                               deterministic_worse=ROWS[bad].kind == "zero_shot")
        se_txt = "-" if two_se is None else f"{100 * two_se:.1f}"
        lines.append(f"| {text} | {100 * np.mean(sa):.1f} | {100 * np.mean(sb):.1f} | {100 * delta:+.1f} | "
                     f"{se_txt} | {len(sa)} / {len(sb)} | {verdict} |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------- plots
FIGURE_CAPTIONS = {
    "doc_hist": "DoC (log10, with the generator's score transform) of the SAM-mask store's beam and distinctive "
                "candidates, kept vs rejected by the filter (keep DoC > 1, i.e. > 0 on this axis; kept candidates "
                "below 0 are the fallback pick of masks none of whose candidates passed).",
    "doc_by_referential": "the same DoC values split by the grounding oracle: does DoC separate captions that "
                          "single out their object from those that do not?",
    "gallery": "pseudo labels of the first pool images (SAM masks outlined): the beam-search caption, kept (+) and "
               "rejected (-) candidates.",
    "loss": "training loss (moving average) of the first seed of every trained row.",
    "val": "synthref val oIoU during training (first seed; checkpoints are selected on it).",
}


def metrics_files(run: Path) -> list[Path]:
    """The CSV logger's metrics.csv files of a run (``csv/metrics.csv`` or ``csv/version_N/metrics.csv``), oldest
    first."""
    return sorted((run / "csv").rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)


def make_plots(plan: Plan, records: Sequence[RunRecord], fig_dir: Path) -> dict[str, Path]:
    """DoC histogram and gallery of the SAM store, learning curves of the trained runs (seed = first)."""
    from pseudo_ris.evaluation.plots import line_chart_png, read_metrics_csv, smooth

    figs: dict[str, Path] = {}
    store = plan.out_dir / "generate" / "sam"
    if (store / "reproduce_done.json").is_file():
        try:
            figs.update(_store_plots(plan, store, fig_dir))
        except Exception as exc:  # noqa: BLE001 - a plot never fails the page
            log.warning("store plots failed: %s", exc)
    for model in plan.models:
        loss, val = {}, {}
        for rec in records:
            if rec.model != model or rec.result is None or rec.seed != plan.seeds[0] or rec.dataset != "synthref":
                continue
            files = metrics_files(run_dir(plan, rec.model, rec.row, rec.dataset, rec.seed))
            if not files:
                continue
            cols: dict[str, tuple[list[float], list[float]]] = {}
            for path in files:  # a resumed run logs into a new version directory: join them
                for key, (xs, ys) in read_metrics_csv(path).items():
                    cols.setdefault(key, ([], []))[0].extend(xs)
                    cols[key][1].extend(ys)
            if "train/loss" in cols:
                xs, ys = cols["train/loss"]
                loss[rec.row] = (xs, smooth(ys, 5))
            key = next((k for k in cols if k.endswith("val/oIoU") or k == "val/oIoU"), None)
            if key:
                val[rec.row] = (cols[key][0], [100 * v for v in cols[key][1]])
        if loss:
            figs[f"loss_{model}"] = line_chart_png(loss, fig_dir / f"loss_{model}.png", title=f"{model}: training "
                                                   "loss (moving average of 5 logged values)", xlabel="step",
                                                   ylabel="loss")
        if val:
            figs[f"val_{model}"] = line_chart_png(val, fig_dir / f"val_oiou_{model}.png",
                                                  title=f"{model}: synthref val oIoU during training",
                                                  xlabel="step", ylabel="oIoU %")
    return figs


def _store_plots(plan: Plan, store: Path, fig_dir: Path) -> dict[str, Path]:
    from pseudo_ris.data.masks import rle_to_mask
    from pseudo_ris.data.refer import load_rgb
    from pseudo_ris.evaluation.plots import gallery_png, histogram_png
    from pseudo_ris.evaluation.quality import _policy
    from pseudo_ris.generation.store import load_all
    from pseudo_ris.generation.writer import filter_candidates

    images, candidates = load_all(store)
    rows = [r for r in candidates if r.get("setting", "").startswith("beam") or r.get("distinctive")]
    result = filter_candidates(images, rows, _policy(store, rows, None))
    figs: dict[str, Path] = {}
    logd = {"kept": [], "rejected": []}
    for r in result.candidates:
        if r["doc"] is not None and r["doc"] > 0 and math.isfinite(r["doc"]):
            logd["kept" if r["kept"] else "rejected"].append(math.log10(r["doc"]))
    figs["doc_hist"] = histogram_png(logd, fig_dir / "doc_histogram.png", bins=40,
                                     title=f"log10 DoC of candidates (threshold {result.summary['policy']['threshold']})"
                                           f"; transform {result.summary['policy']['score_transform']}",
                                     xlabel="log10 DoC")
    from pseudo_ris.evaluation.quality import GroundTruth, per_candidate_flags

    by_ref = {"referential": [], "not referential": []}
    for r, ok in per_candidate_flags(store, GroundTruth.from_root(plan.data_root)):
        if (r.get("setting", "").startswith("beam") or r.get("distinctive")) and r.get("doc") is not None \
                and r["doc"] > 0 and math.isfinite(r["doc"]):
            by_ref["referential" if ok else "not referential"].append(math.log10(r["doc"]))
    figs["doc_by_referential"] = histogram_png(by_ref, fig_dir / "doc_by_referential.png", bins=40,
                                               title="log10 DoC of candidates, split by the grounding oracle",
                                               xlabel="log10 DoC")
    meta = json.loads((store / "meta.json").read_text())
    by_mask: dict[tuple[str, int], list[dict]] = {}
    for r in result.candidates:
        by_mask.setdefault((r["key"], int(r["mask_index"])), []).append(r)
    entries = []
    for img in sorted(images, key=lambda i: int(i["image_id"])):
        if len(entries) >= plan.gallery_images or img.get("status") != "ok":
            continue
        pixels = load_rgb(Path(meta["image_dir"]) / img["file_name"])
        for m in img["masks"][:2]:
            cands = by_mask.get((img["key"], int(m["index"])), [])
            kept = sorted({r["text"] for r in cands if r["kept"]})
            rejected = sorted({r["text"] for r in cands if not r["kept"]} - set(kept))
            beam = next((r["text"] for r in cands if r["setting"].startswith("beam")), "")
            entries.append({"image": pixels, "mask": rle_to_mask(m["rle"]),
                            "lines": [f"beam: {beam}"] + [f"+ {t}" for t in kept[:2]] + [f"- {t}" for t in
                                                                                        rejected[:1]]})
    if entries:
        figs["gallery"] = gallery_png(entries[: plan.gallery_images], fig_dir / "gallery.png")
    return figs


# ---------------------------------------------------------------------------------------------- quality
def quality_section(plan: Plan) -> str:
    from pseudo_ris.evaluation.quality import (GroundTruth, dataset_quality, format_quality, store_quality,
                                               write_quality)

    parts = []
    truth = GroundTruth.from_root(plan.data_root)
    for masks in ("sam", "gt"):
        store = plan.out_dir / "generate" / masks
        if not (store / "reproduce_done.json").is_file():
            continue
        path = store / "quality.json"
        if path.is_file() and path.stat().st_mtime >= (store / "reproduce_done.json").stat().st_mtime:
            report = json.loads(path.read_text())
            written = report.pop("dataset", None)
        else:
            report = store_quality(store, truth)
            # the generator's own output (all stored candidates, DoC-filtered): same labels as "full" unless the
            # store also holds plain samples
            written = dataset_quality(store, "pseudo", truth) if (store / "pseudo").is_dir() else None
            write_quality(report, store, dataset=written, title=f"masks={masks}")
        parts.append(format_quality(report, written, title=f"Pseudo labels with masks={masks} ({store})"))
    return "\n\n".join(parts) if parts else "_no candidate store yet_"


# ------------------------------------------------------------------------------------------------- report
def write_results_page(plan: Plan, records: Sequence[RunRecord], command: str, seconds: float) -> Path:
    page = plan.results_md
    fig_dir = page.parent / "figures"
    figs = make_plots(plan, records, fig_dir)
    done = [r for r in records if r.result is not None]
    failed = [r for r in records if r.result is None]
    steps = sorted({r.result.get("global_step") for r in done if r.result.get("global_step") is not None})
    run_seconds = sum(float(r.result.get("train_seconds", r.result.get("eval_seconds", 0))) for r in done)
    lines = ["# Reproduction on SynthRef (miniature of arXiv 2407.07412)", "",
             f"Command: `{command}`  ", f"Profile: **{plan.profile}**: seeds {plan.seeds}, models {plan.models}, "
             f"max {plan.max_steps} training steps (batch 16; steps actually run: {steps or '-'}), evaluation limited "
             f"to {plan.limit_eval or 'all'} sentences per split, generation on "
             f"{plan.gen_max_images or 'all'} pool images; {len(done)} runs finished, {len(failed)} failed or not "
             "run; "
             f"time in the finished runs {run_seconds / 60:.0f} min, this invocation {seconds / 60:.1f} min "
             "(CPU, 2 cores shared with other jobs).", "",
             "Numbers are percentages, mean ± std over seeds (a single number = one seed). SR = `synthref` "
             "(RefCOCO-style), SR+ = `synthref+` (no absolute location words), SRg = `synthrefg` (longer, "
             "RefCOCOg-style), unseen = `synthref` held-out-concept split (targets with a held-out shape or colour). "
             "Pseudo-label rows are trained once on the pool's labels (checkpoint chosen on SR val) and evaluated on "
             "every dataset; human/mixed rows are trained per dataset. Zero-shot rows do not depend on the model.", ""]
    roots = sorted({str(r.result["data_root"]) for r in done if r.result.get("data_root")})
    lines += [f"SynthRef build: `{plan.data_root}` (directory name = SynthRef cache key).", ""]
    if any(root != str(plan.data_root) for root in roots):
        lines += [f"> **Warning**: cached runs used other SynthRef builds ({roots}); their numbers are not "
                  "comparable. Delete their run directories and rerun.", ""]
    if plan.profile != "full":
        lines += [f"> **Caveat**: quick profile: seeds {plan.seeds} (a cell without ± is one seed), "
                  f"{plan.max_steps} steps, evaluation on the first {plan.limit_eval or 'all'} sentences of each "
                  "split. These are small-budget numbers of the pipeline, not converged results (the learning "
                  "curves below are still rising); differences of a few points are within noise.", ""]
    for model in plan.models:
        for metric in ("mIoU", "oIoU"):
            lines += [f"## {model}: {metric}", "", results_table(records, model, metric, plan.rows), ""]
        lines += [f"### {model}: the paper's claims", "", claims_section(records, model, "mIoU"), "",
                  "Per seed, the mean over the splits both rows were evaluated on (\"seen\" = all but unseen); "
                  "then means over seeds. 2 SE = twice the standard error of the difference of means (sample std "
                  "over seeds); a claim holds or fails only when |Δ| > 2 SE. Seeds = seeds of each row.", ""]
    if plan.notes_md is not None and plan.notes_md.is_file():  # hand-written reading of the numbers, kept on reruns
        lines += [plan.notes_md.read_text().rstrip(), ""]
    lines += ["## Pseudo-label quality against SynthRef ground truth", "", quality_section(plan), ""]
    if figs:
        lines += ["## Figures", ""]
        for key, path in figs.items():
            rel = path.relative_to(page.parent) if path.is_relative_to(page.parent) else path
            caption = FIGURE_CAPTIONS.get(key.split("_cris")[0].split("_lavt")[0], "")
            lines += [f"**{key}**: {caption}  ", f"![{key}]({rel})", ""]
        lines.append("")
    report = plan.out_dir / "generate" / "sam" / "report.html"
    if report.is_file():
        lines += [f"Full interactive gallery of the SAM-mask labels (HTML, not committed): `{report}`", ""]
    lines += ["## Runs", "", "| row | model | train dataset | seed | steps | train s | status |",
              "|---|---|---|---:|---:|---:|---|"]
    for r in records:
        res = r.result or {}
        status = "ok (cached)" if r.cached else ("ok" if r.result else (
            "not run yet" if r.error == "not run yet" else "FAILED: " + (r.error or "").splitlines()[0]))
        lines.append(f"| {r.row} | {r.model} | {r.dataset} | {r.seed} | {res.get('global_step', '-')} | "
                     f"{res.get('train_seconds', res.get('eval_seconds', '-'))} | {status} |")
    atomic_write_text(page, "\n".join(lines) + "\n")
    return page


DEFAULT_OUT_DIR = "outputs/reproduce"
DEFAULT_RESULTS_MD = "docs/results.md"
TRAINERS = ("cpu", "gpu", "ddp", "default")


def results_page_path(cfg: Mapping[str, Any]) -> Path:
    """``results_md``, or by default: the repository's docs/results.md for the default ``out_dir`` (the command in
    the README), else ``<out_dir>/results.md``, so that another reproduction never overwrites the tracked page."""
    if cfg.get("results_md"):
        return Path(str(cfg["results_md"])).expanduser()
    out_dir = str(cfg.get("out_dir") or DEFAULT_OUT_DIR)
    if Path(out_dir).expanduser() == Path(DEFAULT_OUT_DIR):
        return Path(DEFAULT_RESULTS_MD)
    return Path(out_dir).expanduser() / "results.md"


def check_reproduce_options(cfg: Mapping[str, Any]) -> None:
    """The options that can be checked before SynthRef is built or any run starts (`OptionError` / config error)."""
    from pseudo_ris.validation import check_choice, check_device, check_int, check_writable_dir

    if cfg.get("profile") not in (cfg.get("profiles") or {}):
        raise ReproduceConfigError(f"profile={cfg.get('profile')!r} is not one of "
                                   f"{', '.join(sorted(cfg.get('profiles') or {}))}")
    trainer = check_choice(str(cfg.get("trainer") or "cpu"), "trainer", TRAINERS)
    if trainer == "gpu":
        check_device("cuda", "trainer=gpu: device")
    check_device(cfg.get("device") or "cpu")
    check_int(cfg.get("threads", 1), "threads", minimum=1)
    check_writable_dir(cfg.get("out_dir") or DEFAULT_OUT_DIR, "out_dir")
    check_writable_dir(Path(str(cfg["results_md"])).expanduser().parent, "results_md (its directory)")
    if cfg.get("data_root"):
        from pseudo_ris.validation import check_existing_dir

        check_existing_dir(cfg["data_root"], "data_root")


def reproduce(cfg: Mapping[str, Any], command: str = "python tools/reproduce.py",
              progress: Callable[[str], None] = print) -> Path:
    """Run (or resume) the whole reproduction of ``cfg`` and write the results page; returns its path."""
    import torch

    from ris_models.prepare import synthref_root

    cfg = dict(_plain(cfg))
    cfg["results_md"] = str(results_page_path(cfg))
    check_reproduce_options(cfg)  # before SynthRef is built or any run starts
    torch.set_num_threads(int(cfg.get("threads", 1)))
    start = time.perf_counter()
    data_root = (Path(str(cfg["data_root"])).expanduser() if cfg.get("data_root")
                 else synthref_root(cfg["cache_dir"], cfg.get("synthref")))
    plan = Plan.from_cfg(cfg, data_root)
    progress(f"reproduction profile={plan.profile}: {len(planned_runs(plan))} runs, output {plan.out_dir}")
    records = execute(plan, progress, report_only=bool(cfg.get("report_only", False)))
    if cfg.get("report_only") and not any(r.result is not None for r in records):
        raise ReproduceConfigError(f"report_only=true: no finished run under {plan.out_dir}; {plan.results_md} "
                                   "was not written (run without report_only first, or point out_dir at a "
                                   "reproduction's output)")
    page = write_results_page(plan, records, command, time.perf_counter() - start)
    progress(f"wrote {page}")
    return page
