"""Rescoring a candidate store with another DoC scorer (pseudo_ris.generation.rescore, tools/rescore.py): the same
scorer reproduces the stored scores exactly, another scorer changes only the scores, and the tool's errors are one
line with exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir

from pseudo_ris.generation import runner
from pseudo_ris.generation.store import load_all
from pseudo_ris.synthref import build_synthref

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
FAST = ["decoding.settings=[{kind: beam, value: 2}, {kind: topk, value: 3, distinctive: true}]",
        "decoding.max_len=8", "decoding.min_len=3", "progress=false", "report.enabled=false"]
SCORES = ("M", "C", "M_all", "C_all", "doc", "uniqueness", "correctness")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A 2-image store of the random tiny CoCa on GT masks, scored by the CoCa's own head."""
    root = tmp_path_factory.mktemp("synthref")
    build_synthref(root, seed=0, num_images=0, pool_images=2, progress=False)
    out = tmp_path_factory.mktemp("gen")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = runner._plain(compose("generate", overrides=[f"out_dir={out}", f"data_root={root}", "masks=gt",
                                                           "max_images=2", *FAST]))
    runner.run(cfg)
    return out, cfg


def _pipeline(cfg, scorer):
    from pseudo_ris.generation import PseudoLabelPipeline

    bundle = runner.build_captioner_bundle(cfg["generator"]["captioner"], "cpu")
    scorer = scorer(bundle)
    nouns = runner.build_noun_extractor(cfg["filter"]["nouns"], cfg["filter"]["keep_modifiers"])
    return PseudoLabelPipeline(None, SimpleNamespace(mean=tuple(bundle.mean), image_size=bundle.image_size), scorer,
                               nouns, score_transform=cfg["filter"]["score_transform"])


def _by_key(rows):
    return {(r["key"], r["cand_index"]): r for r in rows}


def test_same_scorer_reproduces_the_stored_scores(store, tmp_path):
    from pseudo_ris.filtering.scorer import ClipScorer
    from pseudo_ris.generation.rescore import rescore_store

    src, cfg = store
    pipe = _pipeline(cfg, lambda b: ClipScorer.from_coca_bundle(b))
    counts = rescore_store(src, tmp_path / "same", pipe, scorer_cfg=cfg["generator"]["scorer"], progress=False)
    old_images, old = load_all(src)
    new_images, new = load_all(tmp_path / "same")
    assert counts["images"] == len(old_images) == 2 and counts["candidates"] == len(old) > 0
    old, new = _by_key(old), _by_key(new)
    assert old.keys() == new.keys()
    for key, row in old.items():
        assert new[key]["text"] == row["text"] and new[key]["mask_index"] == row["mask_index"]
        for name in SCORES:
            assert new[key][name] == pytest.approx(row[name], rel=1e-5, abs=1e-6), (key, name)
    again = rescore_store(src, tmp_path / "same", pipe, scorer_cfg=cfg["generator"]["scorer"], progress=False)
    assert again["images"] == 0 and again["skipped_done"] == 2  # resumed: nothing redone


def test_another_scorer_changes_scores_only(store, tmp_path):
    from pseudo_ris.generation.rescore import rescore_store

    class ConstantImages:  # every view gets the same feature, so every mask scores a text alike: DoC == 1
        image_size = 16

        def image_features(self, views):
            return torch.ones(len(views), 4) / 2.0

        def text_features(self, texts):
            return torch.nn.functional.normalize(torch.arange(1.0, 5.0).repeat(len(texts), 1), dim=-1)

        def logits(self, a, b):
            return 10.0 * a @ b.T

    src, cfg = store
    rescore_store(src, tmp_path / "other", _pipeline(cfg, lambda b: ConstantImages()),
                  scorer_cfg={"kind": "test"}, progress=False)
    old, new = _by_key(load_all(src)[1]), _by_key(load_all(tmp_path / "other")[1])
    assert old.keys() == new.keys()
    multi = [k for k, r in new.items() if r["doc"] is not None]
    assert multi, "the store needs an image with several masks"
    for key in multi:
        assert new[key]["doc"] == pytest.approx(1.0) and new[key]["text"] == old[key]["text"]
    assert any(old[k]["doc"] != pytest.approx(1.0) for k in multi)
    import json

    meta = json.loads((tmp_path / "other" / "meta.json").read_text())
    assert meta["scorer"] == {"kind": "test"} and meta["rescored_from"] == str(src)


def test_command_line(store, tmp_path):
    src, _ = store
    tool = [sys.executable, str(ROOT / "tools" / "rescore.py")]
    assert subprocess.run(tool + ["--help"], capture_output=True, timeout=120).returncode == 0
    bad = subprocess.run(tool + [f"store={tmp_path / 'nothing'}", f"out_dir={tmp_path / 'o'}"], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert bad.returncode == 2 and "meta.json" in bad.stderr and "Traceback" not in bad.stderr
    same = subprocess.run(tool + [f"store={src}", f"out_dir={src}", "generator/scorer=captioner", "progress=false"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert same.returncode == 2 and "source store itself" in same.stderr
    ok = subprocess.run(tool + [f"store={src}", f"out_dir={tmp_path / 'cli'}", "generator/scorer=captioner",
                                "progress=false"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "rescored 2 images" in ok.stdout
