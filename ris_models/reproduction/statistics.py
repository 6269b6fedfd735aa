"""Tables and claim verdicts from finished runs: mean ± std over seeds, and a 2-standard-error test per claim."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ris_models.reproduction.execute import RunRecord
from ris_models.reproduction.plan import COLUMNS, ROWS


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
        if r not in rows or not ROWS[r].runs_for(model):
            continue
        lines.append(f"| {ROWS[r].label} | " + " | ".join(mean_std(cells.get(r, {}).get(c[:2], [])) for c in used)
                     + " |")
    return "\n".join(lines)


#: the paper's claims and ours as (description, better row, worse row, columns compared: "seen" or "unseen")
CLAIMS: tuple[tuple[str, str, str, str], ...] = (
    ("full method > zero-shot baseline", "full", "zero_shot", "seen"),
    # the headline's precondition: in the paper, models trained on human labels are far above zero-shot rankers
    ("human 100 % > zero-shot baseline (the headline claim's precondition)", "human_100", "zero_shot", "seen"),
    ("distinctive sampling helps (unfiltered, vs beam search only)", "distinctive", "beam", "seen"),
    ("DoC filtering helps (vs unfiltered distinctive + beam)", "full", "distinctive", "seen"),
    ("both together help (full method vs beam search only)", "full", "beam", "seen"),
    ("10 % human + pseudo > 10 % human alone", "mixed_10", "human_10", "seen"),
    ("pseudo labels beat human supervision on unseen concepts", "full", "human_100", "unseen"),
    ("spatial phrases help (full method with vs without them)", "full_spatial", "full", "seen"),
    ("the head-noun vote helps (vs the paper's filter; both scored by the CoCa head)", "full_vote_coca", "full",
     "seen"),
    ("the main job's scorer and threshold help (CLIP stand-in, DoC > 1000 vs CoCa head, DoC > 10; both with the vote)",
     "full_vote", "full_vote_coca", "seen"),
    ("full method with the main job's filter > zero-shot baseline", "full_vote", "zero_shot", "seen"),
    ("full method with the main job's filter > zero-shot, CLIP stand-in ranker", "full_vote", "zero_shot_clip",
     "seen"),
    ("GT masks help the main job's labels (vs SAM masks)", "full_gt_vote", "full_vote", "seen"),
    # the text's ceiling: with the grammar's own expressions on the same masks, could pseudo labels pass zero-shot?
    ("oracle text on the main job's masks > zero-shot baseline (a perfect captioner's ceiling)", "full_vote_oracle",
     "zero_shot", "seen"),
    ("oracle text > the main job's captions (same masks: what the captioner and filter cost)", "full_vote_oracle",
     "full_vote", "seen"),
    ("pretrained CLIP encoders help (human 100 %, vs from scratch)", "human_100", "human_100_scratch", "seen"),
    ("pretrained CLIP encoders help (full method, vs from scratch)", "full", "full_scratch", "seen"),
    ("the Swin stand-in helps (human 100 %, vs random init)", "human_100_pretrained", "human_100", "seen"),
    ("the Swin stand-in helps (full method, vs random init)", "full_pretrained", "full", "seen"),
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
        if not (ROWS[good].runs_for(model) and ROWS[bad].runs_for(model)):
            continue  # a comparison of another model (e.g. the Swin stand-in for the tiny CRIS)
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


