"""The work behind one run of the reproduction: candidate stores, variant datasets, trainings, zero-shot scoring.

Generation (`pseudo_ris.generation.runner.run`), training (`ris_models.training.train`) and evaluation
(`ris_models.evaluation.evaluate_checkpoint`, `ris_models.zero_shot`) are library calls; this module only composes
their configs from ``conf/`` with the plan's overrides and caches what they return.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from pseudo_ris.data.io import atomic_write_json
from ris_models.reproduction.figures import metrics_files
from ris_models.reproduction.plan import ROWS, STORES, Plan, Row, _q, compose, run_dir, run_spec, variant_key

PLAIN_SETTINGS = ("[{kind: beam, value: 6}, {kind: topk, value: 5, distinctive: true}, "
                  "{kind: topk, value: 7, distinctive: true}, {kind: topk, value: 9, distinctive: true}, "
                  "{kind: topk, value: 11, distinctive: true}, {kind: topk, value: 13, distinctive: true}, "
                  "{kind: topp, value: 0.4, distinctive: true}, {kind: topp, value: 0.5, distinctive: true}, "
                  "{kind: topp, value: 0.6, distinctive: true}, {kind: topp, value: 0.7, distinctive: true}, "
                  "{kind: topp, value: 0.8, distinctive: true}, {kind: topk, value: 5}, {kind: topk, value: 9}, "
                  "{kind: topk, value: 13}, {kind: topp, value: 0.5}, {kind: topp, value: 0.7}]")


def generate_config(plan: Plan, store: str) -> dict:
    """``conf/generate.yaml`` for one candidate store of the plan (``STORES``), written under ``generate/<store>``."""
    out = plan.out_dir / "generate" / store
    overrides = [_q("data_root", plan.data_root), *STORES[store], _q("out_dir", out), _q("out_root", out),
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


def ensure_variant(plan: Plan, row: Row) -> Path:
    """``pseudo_root`` of a row's variant dataset, written once: from its store with the row's filter policy, or for
    an oracle-text row from its caption variant (same store, variant and policy) with SynthRef's own expressions of
    each mask's object, unmatched masks dropped: same images and masks, perfect text."""
    from pseudo_ris.evaluation.oracle_text import write_oracle_text_dataset
    from pseudo_ris.evaluation.quality import GroundTruth
    from pseudo_ris.evaluation.variants import write_variant_dataset

    if row.text == "oracle":
        source = ensure_variant(plan, replace(row, text="captions"))

        def write(root: Path) -> dict:
            truth = GroundTruth.from_root(plan.data_root)
            return asdict(write_oracle_text_dataset(source, "pseudo", truth, root, "pseudo"))
    else:
        store = ensure_store(plan, row.store)

        def write(root: Path) -> dict:
            return write_variant_dataset(store, row.variant, root, policy=dict(row.policy) or None)
    root = plan.out_dir / "pseudo" / variant_key(row)
    info = root / "variant.json"
    if not info.is_file():
        atomic_write_json(info, write(root), indent=2)
    return root


def train_config(plan: Plan, model: str, row: Row, dataset: str, seed: int, out: Path,
                 pseudo_root: Path | None) -> dict:
    mode = {"pseudo": "pseudo", "human": "human", "mixed": "mixed"}[row.kind]
    overrides = [f"model={model}", f"dataset={dataset}", f"data={mode}", f"ratio={row.ratio}", f"seed={seed}",
                 _q("data_root", plan.data_root), _q("cache_dir", plan.cache_dir), _q("output_dir", out),
                 f"max_steps={plan.steps_for(model)}", "epochs=100000", f"trainer={plan.trainer}",
                 f"trainer.limit_train_batches={plan.val_every}", "logger=csv", *plan.train_overrides,
                 *row.train_extra]
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
    pseudo_root = ensure_variant(plan, row) if row.variant else None
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
            "metrics_csv": [str(p) for p in metrics_files(out)], "data_root": str(plan.data_root),
            "run_spec": run_spec(plan, model, row_name)}


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
            "data_root": str(plan.data_root), "run_spec": run_spec(plan, "-", row_name)}


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


