"""Reproduction plumbing: run plan, mean ± std tables, variant datasets cut from a store, PIL plots; one slow
end-to-end run of tools/reproduce's library function with tiny random models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import main_job_generate_overrides
from ris_models.reproduction import ROWS, Plan, RunRecord, mean_std, planned_runs, results_table


def _plan(tmp_path: Path, **kw) -> Plan:
    base = dict(profile="quick", seeds=[0, 1], models=["cris_tiny", "lavt_tiny"], datasets=["synthref", "synthrefg"],
                rows=["human_100", "zero_shot", "full"], max_steps=2, val_every=1, limit_eval=4, gen_max_images=2,
                plain_sampling=False, out_dir=tmp_path, results_md=tmp_path / "results.md", data_root=tmp_path,
                train_overrides=[], generate_overrides=[], cache_dir=str(tmp_path))
    base.update(kw)
    return Plan(**base)


def test_planned_runs_train_pseudo_rows_once_and_zero_shot_once(tmp_path):
    runs = planned_runs(_plan(tmp_path))
    assert runs.count(("-", "zero_shot", "all", 0)) == 1
    human = [r for r in runs if r[1] == "human_100"]
    assert len(human) == 2 * 2 * 2  # models x seeds x datasets
    full = [r for r in runs if r[1] == "full"]
    assert len(full) == 2 * 2 and {r[2] for r in full} == {"synthref"}  # trained once, evaluated everywhere


def test_mean_std_and_table():
    assert mean_std([]) == "-"
    assert mean_std([0.5]) == "50.0"
    assert mean_std([0.4, 0.6]) == f"50.0 ± {100 * np.std([0.4, 0.6], ddof=1):.1f}"
    res = lambda v: {"datasets": {"synthref": {"val": {"mIoU": v, "oIoU": v}, "unseen": {"mIoU": v / 2}}}}
    records = [RunRecord("cris_tiny", "full", "synthref", 0, res(0.2)),
               RunRecord("cris_tiny", "full", "synthref", 1, res(0.4)),
               RunRecord("lavt_tiny", "full", "synthref", 0, res(0.9)),          # other model: not in the table
               RunRecord("-", "zero_shot", "all", 0, res(0.1)),
               RunRecord("cris_tiny", "human_100", "synthref", 0, None, "boom")]  # failed: no numbers
    table = results_table(records, "cris_tiny", "mIoU", ["human_100", "zero_shot", "full"])
    lines = table.splitlines()
    assert lines[0] == "| row | SR val | unseen |"
    full = next(line for line in lines if line.startswith(f"| {ROWS['full'].label}"))
    assert full.split(" | ")[1:] == [f"30.0 ± {100 * np.std([0.2, 0.4], ddof=1):.1f}", "15.0 ± 7.1 |"]
    assert f"| {ROWS['zero_shot'].label} | 10.0 | 5.0 |" in lines
    assert f"| {ROWS['human_100'].label} | - | - |" in lines
    assert lines.index(next(l for l in lines if "zero-shot" in l)) < lines.index(full)  # canonical row order


def test_plots_are_valid_pngs(tmp_path):
    from pseudo_ris.evaluation.plots import gallery_png, histogram_png, line_chart_png, read_metrics_csv

    (tmp_path / "metrics.csv").write_text("epoch,step,train/loss,val/oIoU\n0,9,0.5,\n0,19,0.25,\n0,19,,0.3\n")
    cols = read_metrics_csv(tmp_path / "metrics.csv")
    assert cols["train/loss"] == ([9.0, 19.0], [0.5, 0.25]) and cols["val/oIoU"] == ([19.0], [0.3])
    h = histogram_png({"kept": [1.0, 2.0, 2.5], "rejected": [-1.0, 0.0, float("nan")]}, tmp_path / "h.png")
    l = line_chart_png({"a": cols["train/loss"]}, tmp_path / "l.png", title="t")
    img = np.zeros((10, 10, 3), np.uint8)
    mask = np.zeros((10, 10), bool)
    mask[2:5, 2:5] = True
    g = gallery_png([{"image": img, "mask": mask, "lines": ["+ kept", "- rejected"]}] * 3, tmp_path / "g.png")
    for path in (h, l, g):
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 100
            assert len(set(im.convert("L").getdata())) > 2  # something was drawn


def _cand(mi, k, text, setting, distinctive, doc):
    c = [1.0, 1.0]
    c[mi] = doc
    return {"image_id": 5, "file_name": "a.png", "mask_index": mi, "cand_index": k, "view": 0,
            "view_name": "masked", "setting": setting, "distinctive": distinctive, "text": text, "noun": text,
            "M_all": [1.0, 1.0], "C_all": c, "doc": doc, "uniqueness": doc, "correctness": 1.0,
            "score_transform": "logit"}


def _two_mask_store(tmp_path: Path, extra: list[dict] = ()) -> Path:
    """A candidate store of one 8x8 image with two 2x2 masks: beam and distinctive captions (+ ``extra`` rows)."""
    from pseudo_ris.data.masks import mask_to_rle
    from pseudo_ris.generation.store import CandidateStore

    store = CandidateStore(tmp_path / "store")
    masks = [np.zeros((8, 8), bool) for _ in range(2)]
    masks[0][1:3, 1:3] = True
    masks[1][5:7, 5:7] = True
    row = {"key": "5", "image_id": 5, "file_name": "a.png", "height": 8, "width": 8, "status": "ok",
           "masks": [{"index": i, "rle": mask_to_rle(m), "bbox": [0, 0, 1, 1], "area": 4, "score": 1.0,
                      "source": "sam", "category_id": None} for i, m in enumerate(masks)]}
    store.add_image(row, [_cand(0, 0, "a circle", "beam", False, 0.5), _cand(0, 1, "a red circle", "topk5", True, 2.0),
                          _cand(1, 2, "a square", "beam", False, 3.0), _cand(1, 3, "a blue one", "topp0.5", True, 0.9),
                          *extra])
    (tmp_path / "store" / "summary.json").write_text(json.dumps({"policy": {"score_transform": "logit",
                                                                            "fallback": "drop"}}))
    return tmp_path / "store"


def _variant_sentences(store: Path, variant: str, out: Path) -> dict[int, list[str]]:
    from pseudo_ris.data.refer import ReferDataset
    from pseudo_ris.evaluation.variants import write_variant_dataset

    write_variant_dataset(store, variant, out, image_dir=out.parent)
    ds = ReferDataset(out, "pseudo")
    assert ds.split_by == "pseudo" and ds.splits == ["train"]
    for r in ds.refs:
        assert ds.ref_mask(r).sum() == 4
    return {int(r["ann_id"]): sorted(s["sent"] for s in r["sentences"]) for r in ds.refs}


def test_variant_datasets_from_a_store(tmp_path):
    """beam / unfiltered / filtered datasets of one store differ exactly by the selected captions."""
    store = _two_mask_store(tmp_path)
    sents = {v: _variant_sentences(store, v, tmp_path / v) for v in ("beam", "beam_distinctive", "full")}
    assert sorted(sents["beam"].values()) == [["a circle"], ["a square"]]
    assert sorted(sents["beam_distinctive"].values()) == [["a blue one", "a square"], ["a circle", "a red circle"]]
    assert sorted(sents["full"].values()) == [["a red circle"], ["a square"]]  # DoC > 1 only


def test_the_full_variant_keeps_the_spatial_steps_texts(tmp_path):
    """A spatial-phrase store's full method includes the phrases (they are the row's point); the unfiltered
    ablations stay the paper's decoding groups."""
    spatial = [_cand(0, 4, "the red circle on the left", "spatial_location", False, 5.0),
               _cand(1, 5, "the square on the right", "spatial_location", False, 0.2)]
    store = _two_mask_store(tmp_path, spatial)
    full = sorted(_variant_sentences(store, "full", tmp_path / "full").values())
    assert full == [["a red circle", "the red circle on the left"], ["a square"]]  # DoC-filtered like the rest
    unfiltered = sorted(_variant_sentences(store, "beam_distinctive", tmp_path / "bd").values())
    assert not any("left" in t or "right" in t for texts in unfiltered for t in texts)


@pytest.mark.slow
def test_reproduce_end_to_end_tiny(tmp_path):
    """Everything with random tiny models, 2 training steps, 3 pool images: the page and the cache work."""
    from omegaconf import OmegaConf

    from ris_models.reproduction import reproduce
    from pseudo_ris.synthref import build_synthref

    root = tmp_path / "sr"
    build_synthref(root, seed=0, num_images=40, pool_images=3, progress=False)
    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "reproduce.yaml")
    cfg.data_root, cfg.out_dir, cfg.results_md = str(root), str(tmp_path / "out"), str(tmp_path / "docs/results.md")
    cfg.generate_overrides = ["generator/captioner=synthref_tiny", "sam.pred_iou_thresh=-100",
                              "sam.stability_score_thresh=0", "decoding.max_len=6", "decoding.min_len=3",
                              "decoding.settings=[{kind: beam, value: 2}, {kind: topk, value: 3, distinctive: true}]",
                              "progress=false"]
    cfg.profiles.quick.update(dict(max_steps=2, val_every=1, limit_eval=4, gen_max_images=3, seeds=[0],
                                   models=["cris_tiny"], datasets=["synthref"],
                                   rows=["zero_shot_gt", "human_10", "full_gt"]))
    page = reproduce(cfg, progress=lambda s: None)
    text = page.read_text()
    assert "0 failed" in text and ROWS["full_gt"].label in text and "masks=gt" in text
    results = sorted((tmp_path / "out" / "quick" / "runs").rglob("result.json"))
    assert len(results) == 3
    stamps = [p.stat().st_mtime for p in results]
    reproduce(cfg, progress=lambda s: None)  # second run: everything cached
    assert [p.stat().st_mtime for p in results] == stamps
    assert "ok (cached)" in page.read_text()


def test_claims_compare_means_over_shared_columns():
    from ris_models.reproduction import claims_section

    def res(seen, unseen):
        return {"datasets": {"synthref": {"val": {"mIoU": seen}, "testA": {"mIoU": seen}, "unseen": {"mIoU": unseen}}}}

    records = [RunRecord("-", "zero_shot", "all", 0, res(0.10, 0.05)),
               RunRecord("m", "full", "synthref", 0, res(0.30, 0.20)),
               RunRecord("m", "human_100", "synthref", 0, res(0.60, 0.10))]
    lines = {line.split(" | ")[0][2:]: line for line in claims_section(records, "m").splitlines()[2:]}
    assert lines["full method > zero-shot baseline"].endswith("| 30.0 | 10.0 | +20.0 | - | 1 / 1 | yes (1 seed, untested) |")
    assert lines["pseudo labels beat human supervision on unseen concepts"].endswith(
        "| 20.0 | 10.0 | +10.0 | - | 1 / 1 | yes (1 seed, untested) |")
    assert lines["10 % human + pseudo > 10 % human alone"].endswith("not measured |")

    # three seeds each: per-seed means over the shared columns, then a 2-SE verdict
    records = [RunRecord("-", "zero_shot", "all", 0, res(0.10, 0.05))]
    for seed, (full, human) in enumerate([(0.30, 0.29), (0.32, 0.31), (0.34, 0.36)]):
        records += [RunRecord("m", "full", "synthref", seed, res(full, 0.2 + seed / 100)),
                    RunRecord("m", "human_100", "synthref", seed, res(human, 0.1))]
    lines = {line.split(" | ")[0][2:]: line for line in claims_section(records, "m").splitlines()[2:]}
    assert lines["full method > zero-shot baseline"].endswith("| 32.0 | 10.0 | +22.0 | 2.3 | 3 / 1 | yes |")
    assert lines["pseudo labels beat human supervision on unseen concepts"].endswith("| 3 / 3 | yes |")  # std 0 vs 0.01
    # one seed also trained on another dataset: the claim stays on the columns all seeds share
    extra = {"datasets": {"synthrefg": {"val": {"mIoU": 0.9}, "unseen": {"mIoU": 0.9}}}}
    records.append(RunRecord("m", "human_100", "synthrefg", 0, extra))
    lines = {line.split(" | ")[0][2:]: line for line in claims_section(records, "m").splitlines()[2:]}
    assert lines["pseudo labels beat human supervision on unseen concepts"].endswith("| 3 / 3 | yes |")


def test_claim_verdict_uses_two_standard_errors():
    from ris_models.reproduction import claim_verdict

    delta, two_se, verdict = claim_verdict([0.30, 0.32, 0.34], [0.29, 0.31, 0.36])
    assert delta == pytest.approx(0.0) and verdict == "within noise"
    assert two_se == pytest.approx(2 * np.sqrt(np.var([0.30, 0.32, 0.34], ddof=1) / 3
                                               + np.var([0.29, 0.31, 0.36], ddof=1) / 3))
    assert claim_verdict([0.5, 0.52], [0.1, 0.12])[2] == "yes"
    assert claim_verdict([0.1, 0.12], [0.5, 0.52])[2] == "no"
    assert claim_verdict([0.5], [0.1, 0.2])[2] == "yes (1 seed, untested)"
    assert claim_verdict([0.3, 0.31, 0.29], [0.1], deterministic_worse=True)[2] == "yes"  # zero-shot: exact


def test_planned_runs_order_finishes_whole_seeds_of_the_first_dataset_first(tmp_path):
    runs = planned_runs(_plan(tmp_path))
    assert runs[0] == ("-", "zero_shot", "all", 0)
    trained = runs[1:]
    first_other = next(i for i, r in enumerate(trained) if r[2] != "synthref")
    assert all(r[2] == "synthref" for r in trained[:first_other])
    assert all(r[2] == "synthrefg" for r in trained[first_other:])
    seeds_first = [r[3] for r in trained[:first_other]]
    assert seeds_first == sorted(seeds_first)  # seed 0 complete (both models, all rows) before seed 1


def test_run_lock_is_exclusive_across_processes(tmp_path):
    import multiprocessing as mp

    from ris_models.reproduction import run_lock

    def probe(path, queue):
        with run_lock(path) as mine:
            queue.put(mine)

    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    with run_lock(tmp_path / "run") as mine:
        assert mine
        proc = ctx.Process(target=probe, args=(tmp_path / "run", queue))
        proc.start()
        proc.join(30)
        assert queue.get(timeout=5) is False  # held here: the other process must skip the run
    proc = ctx.Process(target=probe, args=(tmp_path / "run", queue))
    proc.start()
    proc.join(30)
    assert queue.get(timeout=5) is True  # released


def test_cached_runs_are_completed_on_datasets_added_later(tmp_path, monkeypatch):
    import ris_models.reproduction.stages as rep

    plan = _plan(tmp_path, datasets=["synthref", "synthrefg"])
    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(b"x")
    path = tmp_path / "runs" / "result.json"
    path.parent.mkdir(parents=True)
    result = {"datasets": {"synthref": {"val": {"mIoU": 0.5}}}, "checkpoint": str(ckpt)}
    assert rep.missing_datasets(plan, "full", result) == ["synthrefg"]
    assert rep.missing_datasets(plan, "human_100", result) == []  # trained per dataset: nothing to complete
    calls = []
    monkeypatch.setattr(rep, "train_config", lambda *a, **k: {"trainer": {"accelerator": "cpu"}})
    monkeypatch.setattr(rep, "_evaluate_other",
                        lambda plan, c, name, trainer, out: calls.append((c, name)) or {"val": {"mIoU": 0.25}})
    done = rep.complete_datasets(plan, "cris_tiny", "full", "synthref", 0, result, path)
    assert calls == [(str(ckpt), "synthrefg")]
    assert done["datasets"]["synthrefg"] == {"val": {"mIoU": 0.25}}
    assert json.loads(path.read_text())["datasets"]["synthrefg"] == {"val": {"mIoU": 0.25}}
    rep.complete_datasets(plan, "cris_tiny", "full", "synthref", 0, done, path)
    assert len(calls) == 1  # complete now: nothing evaluated again
    ckpt.unlink()
    with pytest.raises(RuntimeError, match="checkpoint"):
        rep.complete_datasets(plan, "cris_tiny", "full", "synthref", 0, {"datasets": {}, "checkpoint": str(ckpt)},
                              path)


def test_train_and_generate_configs_follow_the_plan_devices(tmp_path):
    from ris_models.reproduction.stages import generate_config, train_config

    plan = _plan(tmp_path, trainer="gpu", device="cuda")
    cfg = train_config(plan, "lavt_tiny", ROWS["human_10"], "synthref", 1, tmp_path / "run", None)
    assert cfg["trainer"]["accelerator"] == "gpu" and cfg["max_steps"] == 2 and cfg["seed"] == 1
    assert cfg["ratio"] == 0.1 and cfg["model"]["name"] == "lavt_tiny"
    assert generate_config(plan, "gt")["device"] == "cuda"
    assert train_config(_plan(tmp_path), "cris_tiny", ROWS["full"], "synthref", 0, tmp_path / "r2",
                        tmp_path / "p")["trainer"]["accelerator"] == "cpu"


def test_init_ablation_rows_run_only_for_their_model_and_only_on_the_first_dataset(tmp_path):
    plan = _plan(tmp_path, seeds=[0], rows=["human_100", "human_100_scratch", "human_100_pretrained", "full",
                                            "full_scratch", "full_pretrained"])
    runs = set(planned_runs(plan))
    assert ("cris_tiny", "human_100_scratch", "synthref", 0) in runs
    assert ("cris_tiny", "human_100_scratch", "synthrefg", 0) not in runs       # an ablation on synthref only
    assert ("lavt_tiny", "human_100_scratch", "synthref", 0) not in runs        # the tiny LAVT starts from scratch
    assert ("lavt_tiny", "human_100_pretrained", "synthref", 0) in runs
    assert ("cris_tiny", "human_100_pretrained", "synthref", 0) not in runs
    assert ("cris_tiny", "full_scratch", "synthref", 0) in runs and ("lavt_tiny", "full_pretrained", "synthref", 0) in runs
    assert ("lavt_tiny", "human_100", "synthrefg", 0) in runs                   # ordinary human rows: every dataset
    res = {"datasets": {"synthref": {"val": {"mIoU": 0.5}}}}
    records = [RunRecord(m, r, d, s, res) for m, r, d, s in runs]
    cris = results_table(records, "cris_tiny", "mIoU", plan.rows)
    assert ROWS["human_100_scratch"].label in cris and ROWS["human_100_pretrained"].label not in cris


def test_init_rows_train_with_their_overrides(tmp_path):
    from ris_models.reproduction.stages import train_config

    plan = _plan(tmp_path)
    scratch = train_config(plan, "cris_tiny", ROWS["human_100_scratch"], "synthref", 0, tmp_path / "a", None)
    default = train_config(plan, "cris_tiny", ROWS["human_100"], "synthref", 0, tmp_path / "b", None)
    swin = train_config(plan, "lavt_tiny", ROWS["human_100_pretrained"], "synthref", 0, tmp_path / "c", None)
    assert scratch["model"]["pretrained"] is False and default["model"]["pretrained"] is True
    assert swin["model"]["pretrained"] is True


def test_per_model_step_budgets(tmp_path):
    from ris_models.reproduction.plan import ReproduceConfigError, _steps
    from ris_models.reproduction.stages import train_config

    plan = _plan(tmp_path, max_steps={"cris_tiny": 7, "lavt_tiny": 3})
    assert train_config(plan, "cris_tiny", ROWS["human_100"], "synthref", 0, tmp_path / "a", None)["max_steps"] == 7
    assert train_config(plan, "lavt_tiny", ROWS["human_100"], "synthref", 0, tmp_path / "b", None)["max_steps"] == 3
    assert plan.steps_text() == "cris_tiny 7, lavt_tiny 3"
    with pytest.raises(ReproduceConfigError, match="lavt_tiny"):
        _steps({"cris_tiny": 7}, ["cris_tiny", "lavt_tiny"])
    with pytest.raises(ReproduceConfigError, match=">= 1"):
        _steps(0, ["cris_tiny"])


def test_vote_rows_cut_their_datasets_with_their_filters(tmp_path, monkeypatch):
    """``full_vote_coca`` re-filters the ``full`` row's store; ``full_vote`` (the main job's labels) the same
    captions scored by the CLIP stand-in; both with the head-noun vote, at their own thresholds."""
    import ris_models.reproduction.stages as stages
    from ris_models.reproduction.plan import variant_key

    calls = []
    monkeypatch.setattr(stages, "ensure_store", lambda plan, masks: tmp_path / "store" / masks)
    monkeypatch.setattr("pseudo_ris.evaluation.variants.write_variant_dataset",
                        lambda store, variant, root, policy=None: calls.append((store, variant, policy)) or {})
    plan = _plan(tmp_path)
    roots = [stages.ensure_variant(plan, ROWS[r]) for r in ("full", "full_vote_coca", "full_vote")]
    assert len(set(roots)) == 3 and roots[2].name == variant_key(ROWS["full_vote"])
    assert calls[0] == (tmp_path / "store" / "sam", "full", None)
    assert calls[1] == (tmp_path / "store" / "sam", "full",
                        {"head_consensus": True, "threshold": 10.0, "fallback": "drop"})
    assert calls[2] == (tmp_path / "store" / "sam_clip", "full",
                        {"head_consensus": True, "threshold": 1000.0, "fallback": "drop"})


def test_the_clip_stores_differ_from_theirs_only_by_the_scorer(tmp_path):
    """Same masks, same captions (same seeds and captioner): the scorer is the only difference."""
    from ris_models.reproduction.stages import generate_config

    plan = _plan(tmp_path)
    for base, clip in (("sam", "sam_clip"), ("gt", "gt_clip")):
        a, b = generate_config(plan, base), generate_config(plan, clip)
        assert b["generator"]["scorer"]["name"] == "clip_synthref" and a["generator"]["scorer"]["kind"] == "captioner"
        drop = ("generator", "out_dir", "out_root")
        assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}
        assert a["generator"]["captioner"] == b["generator"]["captioner"]


def test_the_main_job_row_uses_the_main_jobs_filter_and_scorer():
    from ris_models.reproduction.plan import MAIN_JOB_POLICY, STORES

    main_job = main_job_generate_overrides()
    filters = dict(o.split("=", 1) for o in main_job if o.startswith("filter."))
    assert {f"filter.{k}": str(v).lower() for k, v in MAIN_JOB_POLICY} == \
        {k: str(float(v) if k == "filter.threshold" else v).lower() for k, v in filters.items()}
    assert ROWS["full_vote"].policy == MAIN_JOB_POLICY
    scorer = [o for o in main_job if o.startswith("generator/scorer=")]
    assert scorer and all(o in STORES[ROWS["full_vote"].store] for o in scorer)
    assert STORES[ROWS["full_gt_vote"].store] == ("masks=gt", *scorer) and ROWS["full_gt_vote"].policy == MAIN_JOB_POLICY


def test_reproduction_generates_with_the_main_jobs_settings():
    """Only the filter and scorer (a row's and store's business), the image count and the report may differ from
    the main job's labels."""
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[1] / "conf"
    reproduction = list(OmegaConf.load(conf / "reproduce.yaml").generate_overrides)
    shared = [o for o in main_job_generate_overrides()
              if not o.startswith(("filter.", "max_images=", "report.", "generator/scorer="))]
    assert shared and all(o in reproduction for o in shared), set(shared) - set(reproduction)


def test_a_store_generated_by_another_process_skips_the_run_instead_of_failing_it(tmp_path, monkeypatch):
    """Two processes sharing a plan: the second meets the first's candidate store mid-generation."""
    import importlib

    from pseudo_ris.data.locks import DirectoryInUse

    execute_mod = importlib.import_module("ris_models.reproduction.execute")  # the package exports the function

    def busy(*args, **kwargs):
        raise DirectoryInUse(f"{tmp_path}/generate/sam is in use by pid 1")

    monkeypatch.setattr(execute_mod, "run_trained", busy)
    monkeypatch.setattr(execute_mod, "run_zero_shot", lambda plan, row: {"datasets": {}})
    lines = []
    records = execute_mod.execute(_plan(tmp_path, seeds=[0], models=["cris_tiny"], rows=["full"]), lines.append)
    (rec,) = [r for r in records if r.row == "full"]
    assert rec.result is None and rec.error == "running in another process"
    assert any("another process, skipped" in line for line in lines) and not any("FAILED" in line for line in lines)
    assert not (tmp_path / "runs" / "cris_tiny" / "full" / "synthref" / "s0" / "result.json").exists()


def test_the_runs_table_tells_skipped_runs_from_failed_ones():
    from ris_models.reproduction.execute import RunRecord

    def status(**kw):
        return RunRecord("cris_tiny", "full", "synthref", 0, **kw).status

    assert status(result={"global_step": 2}) == "ok"
    assert status(result={"global_step": 2}, cached=True) == "ok (cached)"
    assert status(result=None, error="not run yet") == "not run yet"
    assert status(result=None, error="running in another process") == "running in another process"
    assert status(result=None, error="ValueError: bad\ntraceback lines") == "FAILED: ValueError: bad"


def test_a_cached_result_made_under_another_spec_is_refused(tmp_path, monkeypatch):
    """Results record their spec: after a row changes (store, filter, overrides) or the plan does (steps, overrides),
    old numbers are never shown as new ones; a result made under the current spec is read from the cache."""
    import importlib

    from ris_models.reproduction.plan import run_dir, run_spec

    ex = importlib.import_module("ris_models.reproduction.execute")  # the package re-exports the function `execute`
    plan = _plan(tmp_path, seeds=[0], models=["lavt_tiny"], datasets=["synthref"],
                 rows=["full_vote", "full", "human_100"])
    monkeypatch.setattr(ex, "complete_datasets", lambda plan, m, r, d, s, result, path: result)
    monkeypatch.setattr(ex, "run_trained", lambda *a: pytest.fail("a cached run was trained again"))
    cells = {"synthref": {"val": {"mIoU": 0.3}}}
    stale_row = run_spec(plan, "lavt_tiny", "full_vote")
    stale_row["row"] = dict(stale_row["row"], policy=[["threshold", 10.0]])
    stale_steps = dict(run_spec(plan, "lavt_tiny", "human_100"), steps=plan.max_steps + 1)
    for row, spec in (("full_vote", stale_row), ("full", run_spec(plan, "lavt_tiny", "full")),
                      ("human_100", stale_steps)):
        path = run_dir(plan, "lavt_tiny", row, "synthref", 0) / "result.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"datasets": cells, "run_spec": spec}))
    records = {r.row: r for r in ex.execute(plan, progress=lambda s: None)}
    assert records["full"].result is not None and records["full"].cached
    assert records["full_vote"].result is None and "StaleResult" in records["full_vote"].error
    assert "another row" in records["full_vote"].error and "delete its run directory" in records["full_vote"].status
    assert records["human_100"].result is None and "another steps" in records["human_100"].error


def test_a_run_spec_holds_what_decides_the_numbers(tmp_path):
    from ris_models.reproduction.plan import run_spec

    plan = _plan(tmp_path)
    base = run_spec(plan, "cris_tiny", "full")
    assert run_spec(_plan(tmp_path, max_steps=3), "cris_tiny", "full") != base
    assert run_spec(_plan(tmp_path, train_overrides=["x=1"]), "cris_tiny", "full") != base
    assert run_spec(_plan(tmp_path, generate_overrides=["x=1"]), "cris_tiny", "full") != base
    assert run_spec(_plan(tmp_path, limit_eval=5), "cris_tiny", "full") != base
    # the zero-shot row trains nothing: training budgets do not concern it, generation does
    zero = run_spec(plan, "-", "zero_shot")
    assert run_spec(_plan(tmp_path, max_steps=3, train_overrides=["x=1"]), "-", "zero_shot") == zero
    assert run_spec(_plan(tmp_path, gen_max_images=3), "-", "zero_shot") != zero
    # human rows use no store
    human = run_spec(plan, "cris_tiny", "human_100")
    assert run_spec(_plan(tmp_path, generate_overrides=["x=1"]), "cris_tiny", "human_100") == human


def test_the_quality_section_adds_the_labels_of_each_filtered_row(tmp_path, monkeypatch):
    """A store's quality table gets one line per row that re-filters it with its own policy (the main job's labels),
    computed with that policy and cached with the store's report."""
    import ris_models.reproduction.page as page

    plan = _plan(tmp_path, rows=["full", "full_vote", "full_vote_coca", "full_vote_oracle"])
    calls = []

    def fake_quality(store, truth, variants=None, policy=None):
        calls.append((Path(store).name, variants, policy))
        return {"variants": {"full": {"label": "full method", "referential": 0.5 if policy else 0.2}}}

    monkeypatch.setattr("pseudo_ris.evaluation.quality.store_quality", fake_quality)
    report = {"variants": {"full": {"label": "full method"}}}
    assert page._add_row_filters(plan, "sam_clip", tmp_path / "sam_clip", report, truth=None)
    assert calls == [("sam_clip", ["full"], {"head_consensus": True, "threshold": 1000.0, "fallback": "drop"})]
    line = report["variants"]["row:full_vote"]
    assert "row `full_vote`" in line["label"] and line["referential"] == 0.5
    assert not page._add_row_filters(plan, "sam_clip", tmp_path / "sam_clip", report, truth=None)  # cached
    report_sam = {"variants": {}}
    assert page._add_row_filters(plan, "sam", tmp_path / "sam", report_sam, truth=None)
    assert list(report_sam["variants"]) == ["row:full_vote_coca"] and calls[-1][2]["threshold"] == 10.0


def test_the_oracle_text_row_rewrites_the_main_jobs_labels(tmp_path, monkeypatch):
    """``full_vote_oracle`` trains on the main job's variant (same store and filter) with its sentences replaced by
    the grammar's: written once from that variant's dataset, into a directory of its own, against the plan's
    SynthRef pool."""
    import ris_models.reproduction.stages as stages
    from pseudo_ris.evaluation.oracle_text import OracleTextSummary

    monkeypatch.setattr(stages, "ensure_store", lambda plan, masks: tmp_path / "store" / masks)
    variants, oracles = [], []
    monkeypatch.setattr("pseudo_ris.evaluation.variants.write_variant_dataset",
                        lambda store, variant, root, policy=None: variants.append((store, variant, policy, root)) or {})
    monkeypatch.setattr("pseudo_ris.evaluation.quality.GroundTruth.from_root",
                        classmethod(lambda cls, root: ("truth of", root)))

    def fake_oracle(source, name, truth, out_root, out_name):
        oracles.append((source, name, truth, out_root, out_name))
        return OracleTextSummary(str(source), 5, 3, 2, 0, 9, "refcoco", 0, 0.5)

    monkeypatch.setattr("pseudo_ris.evaluation.oracle_text.write_oracle_text_dataset", fake_oracle)
    plan = _plan(tmp_path, data_root=tmp_path / "synthref_build")
    oracle = stages.ensure_variant(plan, ROWS["full_vote_oracle"])
    captions = stages.ensure_variant(plan, ROWS["full_vote"])
    assert oracle != captions and oracle.parent == captions.parent
    assert variants == [(tmp_path / "store" / "sam_clip", "full",
                         {"head_consensus": True, "threshold": 1000.0, "fallback": "drop"}, captions)]
    assert oracles == [(captions, "pseudo", ("truth of", tmp_path / "synthref_build"), oracle, "pseudo")]
    assert json.loads((oracle / "variant.json").read_text())["refs_out"] == 3
    stages.ensure_variant(plan, ROWS["full_vote_oracle"])
    assert len(oracles) == 1  # cached


def test_oracle_text_enters_the_spec_of_its_row_only():
    """The oracle row differs from the main job's row by its text alone; every other row's spec (and so its cached
    results) is unchanged by the option. Oracle text only rewrites pseudo-label variants."""
    from ris_models.reproduction.plan import Row

    assert ROWS["full_vote_oracle"].spec() == {**ROWS["full_vote"].spec(), "text": "oracle"}
    assert [n for n, r in ROWS.items() if "text" in r.spec()] == ["full_vote_oracle"]
    with pytest.raises(ValueError, match="kind='pseudo'"):
        Row("x", "human", text="oracle")
    with pytest.raises(ValueError, match="text must be one of"):
        Row("x", "pseudo", "sam", "full", text="gt")


def test_the_quality_section_recomputes_a_cached_report_of_an_older_layout(tmp_path, monkeypatch):
    """A store's cached quality.json is reused only when it has the current layout (it gained per-family numbers);
    an older one is recomputed instead of shown without them."""
    import json
    import time

    import pseudo_ris.evaluation.quality as quality
    import ris_models.reproduction.page as page

    plan = _plan(tmp_path, rows=["full"])
    store = plan.out_dir / "generate" / "sam"
    store.mkdir(parents=True)
    (store / "reproduce_done.json").write_text("{}")
    time.sleep(0.01)
    (store / "quality.json").write_text(json.dumps({"variants": {}, "masks": {}}))  # no version: older layout
    calls = []

    def fake_quality(store_dir, truth, variants=None, policy=None):
        calls.append(Path(store_dir).name)
        return {"version": quality.REPORT_VERSION, "variants": {}, "masks": {}}

    monkeypatch.setattr(quality, "store_quality", fake_quality)
    monkeypatch.setattr(quality.GroundTruth, "from_root", classmethod(lambda cls, root: None))
    monkeypatch.setattr(quality, "format_quality", lambda report, written, title=None: "table")
    monkeypatch.setattr(quality, "write_quality", lambda report, out, dataset=None, title=None: out.joinpath(
        "quality.json").write_text(json.dumps(report)))
    page.quality_section(plan)
    assert calls == ["sam"]
    page.quality_section(plan)  # now cached in the current layout
    assert calls == ["sam"]


def test_the_full_profile_trains_at_256_px_and_the_quick_one_at_the_models_default(tmp_path):
    """The full profile's input size reaches every training as an override (so it is part of each run's spec); a
    size the models cannot take is refused before any work starts."""
    from ris_models.reproduction.plan import ReproduceConfigError, compose, run_spec

    full = Plan.from_cfg(compose("reproduce", ["profile=full"]), tmp_path)
    quick = Plan.from_cfg(compose("reproduce", []), tmp_path)
    assert "model.input_size=256" in full.train_overrides
    assert not any(o.startswith("model.input_size") for o in quick.train_overrides)
    assert run_spec(full, "cris_tiny", "human_100")["train_overrides"] != run_spec(
        _plan(tmp_path, train_overrides=[o for o in full.train_overrides if "input_size" not in o]), "cris_tiny",
        "human_100")["train_overrides"]
    with pytest.raises(ReproduceConfigError, match="multiple of 32"):
        Plan.from_cfg(compose("reproduce", ["+override.input_size=200"]), tmp_path)
    with pytest.raises(ReproduceConfigError, match="multiple of 32"):
        Plan.from_cfg(compose("reproduce", ["+override.input_size=big"]), tmp_path)
