"""The results page (``docs/results.md`` by default) and the ``reproduce`` entry point that drives everything."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from pseudo_ris.data.io import atomic_write_text
from pseudo_ris.data.plain import to_plain as _plain
from ris_models.reproduction.execute import RunRecord, execute
from ris_models.reproduction.figures import FIGURE_CAPTIONS, make_plots
from ris_models.reproduction.plan import ROWS, STORES, Plan, ReproduceConfigError, planned_runs, results_page_path
from ris_models.reproduction.statistics import claims_section, results_table


def quality_section(plan: Plan) -> str:
    from pseudo_ris.evaluation.quality import (REPORT_VERSION, GroundTruth, dataset_quality, format_quality,
                                               store_quality, write_quality)

    parts = []
    truth = GroundTruth.from_root(plan.data_root)
    for masks in STORES:
        store = plan.out_dir / "generate" / masks
        if not (store / "reproduce_done.json").is_file():
            continue
        path = store / "quality.json"
        cached = (json.loads(path.read_text()) if path.is_file()
                  and path.stat().st_mtime >= (store / "reproduce_done.json").stat().st_mtime else None)
        fresh = cached is None or cached.get("version") != REPORT_VERSION  # older layouts lack newer fields
        if fresh:
            report = store_quality(store, truth)
            # the generator's own output (all stored candidates, DoC-filtered): same labels as "full" unless the
            # store also holds plain samples
            written = dataset_quality(store, "pseudo", truth) if (store / "pseudo").is_dir() else None
        else:
            report = cached
            written = report.pop("dataset", None)
        if _add_row_filters(plan, masks, store, report, truth) or fresh:
            write_quality(report, store, dataset=written, title=f"masks={masks}")
        parts.append(format_quality(report, written, title=f"Pseudo labels of the store {masks} ({store})"))
    return "\n\n".join(parts) if parts else "_no candidate store yet_"


def _add_row_filters(plan: Plan, store_name: str, store: Path, report: dict, truth: Any) -> bool:
    """Add to a store's quality report one line per row of the plan that re-filters it with its own policy (the
    labels that row trains on, e.g. the main job's filter); returns whether a line was (re)computed."""
    from pseudo_ris.evaluation.quality import store_quality

    changed = False
    for name in plan.rows:
        row = ROWS[name]
        if row.store != store_name or not row.policy or row.text != "captions":
            continue  # an oracle-text row's sentences are not the store's
        key, policy = f"row:{name}", dict(row.policy)
        if report["variants"].get(key, {}).get("row_policy") == policy:
            continue
        line = store_quality(store, truth, variants=[row.variant], policy=policy)["variants"][row.variant]
        report["variants"][key] = {**line, "label": f"{row.label} (row `{name}`)", "row_policy": policy}
        changed = True
    return changed


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
             f"max {plan.steps_text()} training steps (batch 16; steps actually run: {steps or '-'}), evaluation limited "
             f"to {plan.limit_eval or 'all'} sentences per split, generation on "
             f"{plan.gen_max_images or 'all'} pool images; {len(done)} runs finished, {len(failed)} failed or not "
             "run; "
             f"training time recorded by the finished runs {run_seconds / 60:.0f} min (a run resumed after a kill "
             f"records only its last part), this invocation {seconds / 60:.1f} min.", "",
             "Numbers are percentages, mean ± std over seeds (a single number = one seed). SR = `synthref` "
             "(RefCOCO-style), SR+ = `synthref+` (no absolute location words), SRg = `synthrefg` (longer, "
             "RefCOCOg-style), unseen = `synthref` held-out-concept split (targets with a held-out shape or colour). "
             "Pseudo-label rows are trained once on the pool's labels (checkpoint chosen on SR val) and evaluated on "
             "every dataset; human/mixed rows are trained per dataset. Zero-shot rows do not depend on the model.", ""]
    roots = sorted({str(r.result["data_root"]) for r in done if r.result.get("data_root")})
    home = str(Path.home())  # the page is committed: no user's home directory in it
    lines += [f"SynthRef build: `{str(plan.data_root).replace(home, '~', 1)}` (directory name = SynthRef cache "
              "key).", ""]
    if any(root != str(plan.data_root) for root in roots):
        lines += [f"> **Warning**: cached runs used other SynthRef builds ({roots}); their numbers are not "
                  "comparable. Delete their run directories and rerun.", ""]
    if plan.profile != "full":
        lines += [f"> **Caveat**: quick profile: seeds {plan.seeds} (a cell without ± is one seed), "
                  f"{plan.steps_text()} steps, evaluation on the first {plan.limit_eval or 'all'} sentences of each "
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
        lines.append(f"| {r.row} | {r.model} | {r.dataset} | {r.seed} | {res.get('global_step', '-')} | "
                     f"{res.get('train_seconds', res.get('eval_seconds', '-'))} | {r.status} |")
    atomic_write_text(page, "\n".join(lines) + "\n")
    return page


def reproduce(cfg: Mapping[str, Any], command: str = "python tools/reproduce.py",
              progress: Callable[[str], None] = print) -> Path:
    """Run (or resume) the whole reproduction of ``cfg`` and write the results page; returns its path."""
    import torch

    from ris_models.prepare import synthref_root

    from ris_models.validation import check_reproduce_config

    cfg = dict(_plain(cfg))
    cfg["results_md"] = str(results_page_path(cfg))
    check_reproduce_config(cfg)  # before SynthRef is built or any run starts
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
