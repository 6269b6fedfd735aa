"""Bad input a user can cause: refused before any work with one line naming the option or file, nothing left behind.

Most cases call the library entry points the tools call (``train``, ``evaluate_checkpoint``, the generation
``run``, ``reproduce``, ``ReferDataset``) in-process; a few go through the real command line for the exit code 2 and
the absence of a traceback. Payload files would write a marker file if they were ever unpickled: the marker must
never appear.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pseudo_ris.data.errors import PseudoRISError, ReferDataError
from pseudo_ris.data.refer import ReferDataset

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
TOOLS = sorted(p.name for p in (ROOT / "tools").glob("*.py"))


class Payload:
    """Unpickling this runs ``exec`` and writes ``marker``: proof that a loader ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('payload ran')",)


def _one_line(exc: BaseException | str) -> str:
    text = str(exc)
    assert "\n" not in text.strip(), f"message spans several lines: {text!r}"
    return text


def _compose(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*")) if path.exists() else []


# --------------------------------------------------------------------------------------------------- train.py
@pytest.fixture
def train_env(tmp_path):
    data_root = tmp_path / "data"
    data_root.mkdir()
    return {"data_root": data_root, "out": tmp_path / "run", "cache": tmp_path / "cache"}


def _train(env: dict, *overrides: str):
    from ris_models.training import train

    cfg = _compose("train", [f"data_root={env['data_root']}", f"output_dir={env['out']}",
                             f"cache_dir={env['cache']}", "trainer=cpu", *overrides])
    with pytest.raises(PseudoRISError) as info:
        train(cfg)
    # nothing built, generated or written: no output directory, no cache
    assert not env["out"].exists(), _files(env["out"])
    assert not env["cache"].exists(), _files(env["cache"])
    return _one_line(info.value)


@pytest.mark.parametrize("overrides, message", [
    (["epochs=0"], "epochs must be >= 1, got 0"),
    (["batch_size=0"], "batch_size must be >= 1, got 0"),
    (["lr=-0.001"], "lr must be > 0, got -0.001"),
    (["lr=nan"], "lr must be a finite number, got nan"),
    (["weight_decay=-1"], "weight_decay must be >= 0, got -1"),
    (["max_steps=0"], "max_steps must be >= 1 (or -1, None), got 0"),
    (["hflip_prob=2"], "hflip_prob must be >= 0 and <= 1, got 2"),
    (["num_workers=-1"], "num_workers must be >= 0, got -1"),
    (["resume=sometimes"], "resume='sometimes' is not one of auto, extend, never"),
    (["checkpoint_every_n_steps=0"], "checkpoint_every_n_steps must be >= 1, got 0"),
    (["trainer.precision=17"], "trainer.precision=17 is not one of"),
    (["trainer.devices=0"], "trainer.devices must be >= 1"),
    # on a fresh cache this used to build SynthRef and generate pseudo labels for minutes first
    (["data=mixed", "ratio=1.5"], "ratio must be in [0, 1]"),
])
def test_train_option_refused_before_any_work(train_env, overrides, message):
    assert message in _train(train_env, *overrides)


def test_train_gpu_without_cuda(train_env, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    msg = _train(train_env, "trainer=gpu")
    assert "trainer.accelerator=gpu" in msg and "needs a CUDA GPU" in msg and "trainer=cpu" in msg


def test_train_multi_node_without_launcher(train_env, monkeypatch):
    from ris_models.validation import LAUNCHER_ENV

    for keys in LAUNCHER_ENV:
        for key in keys:
            monkeypatch.delenv(key, raising=False)
    msg = _train(train_env, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.num_nodes=2")
    assert "trainer.num_nodes=2 needs a launcher" in msg and "MASTER_ADDR" in msg


def test_train_output_dir_not_writable(train_env, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    env = {**train_env, "out": blocker / "run"}
    msg = _train(env, "epochs=1")
    assert f"output_dir={blocker / 'run'}" in msg and f"{blocker} is a file" in msg


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only directories")
def test_train_output_dir_read_only(train_env, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        msg = _train({**train_env, "out": ro / "run"}, "epochs=1")
    finally:
        ro.chmod(0o700)
    assert "output_dir=" in msg and "not writable" in msg


@pytest.fixture
def bad_checkpoints(tmp_path) -> dict[str, Path]:
    d = tmp_path / "ckpts"
    d.mkdir()
    good = d / "weights.pt"
    torch.save({"state_dict": {"w": torch.ones(3)}}, good)
    truncated = d / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    foreign = d / "foreign.ckpt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    text = d / "text.ckpt"
    text.write_text("this is not a checkpoint\n")
    payload = d / "payload.ckpt"
    torch.save({"state_dict": {}, "ris_model": Payload(tmp_path / "MARKER")}, payload)
    return {"missing": d / "missing.ckpt", "truncated": truncated, "foreign": foreign, "text": text,
            "payload": payload, "marker": tmp_path / "MARKER"}


def test_payload_files_are_real(bad_checkpoints, tmp_path):
    """The payloads used below do run code when loaded the unsafe way (else the refusals would prove nothing)."""
    marker = bad_checkpoints["marker"]
    torch.load(bad_checkpoints["payload"], weights_only=False)
    assert marker.read_text() == "payload ran"
    marker.unlink()
    pickle.loads(pickle.dumps([Payload(marker)], protocol=2))
    assert marker.is_file()


@pytest.mark.parametrize("kind, message", [
    ("missing", "ckpt_path: checkpoint {path} not found"),
    ("truncated", "ckpt_path: checkpoint {path} is truncated or not a torch file"),
    ("text", "ckpt_path: checkpoint {path} is truncated or not a torch file"),
    ("foreign", "ckpt_path: {path} is not a Lightning checkpoint (no state_dict)"),
    ("payload", "ckpt_path: checkpoint {path} refused: it holds Python objects beyond tensors and plain data"),
])
def test_train_bad_checkpoint(train_env, bad_checkpoints, kind, message):
    path = bad_checkpoints[kind]
    msg = _train(train_env, f"ckpt_path={path}")
    assert message.format(path=path) in msg
    assert not bad_checkpoints["marker"].exists()


# ------------------------------------------------------------------------------------------------ evaluate.py
def _evaluate(tmp_path: Path, *overrides: str) -> str:
    from ris_models.evaluation import evaluate

    out = tmp_path / "eval_out"
    cfg = _compose("evaluate", [f"out_dir={out}", f"cache_dir={tmp_path / 'cache'}", "trainer=cpu", *overrides])
    with pytest.raises(PseudoRISError) as info:
        evaluate(cfg)
    assert not out.exists() and not (tmp_path / "cache").exists()
    return _one_line(info.value)


@pytest.mark.parametrize("kind, message", [
    ("payload", "ckpt: checkpoint {path} refused: it holds Python objects beyond tensors and plain data "
                "(global exec); it was not loaded (it could run code)"),
    ("missing", "ckpt: checkpoint {path} not found"),
    ("truncated", "ckpt: checkpoint {path} is truncated or not a torch file"),
])
def test_evaluate_bad_checkpoint(tmp_path, bad_checkpoints, kind, message):
    path = bad_checkpoints[kind]
    assert message.format(path=path) in _evaluate(tmp_path, f"ckpt={path}")
    assert not bad_checkpoints["marker"].exists()


def test_evaluate_bad_batch_size(tmp_path, bad_checkpoints):
    assert "batch_size must be >= 1, got 0" in _evaluate(tmp_path, f"ckpt={bad_checkpoints['payload']}",
                                                         "batch_size=0")


# ------------------------------------------------------------------------------------------------ generate.py
def _generate(tmp_path: Path, *overrides: str) -> str:
    from pseudo_ris.generation.runner import run

    out = tmp_path / "gen_out"
    cfg = _compose("generate", [f"out_dir={out}", f"cache_dir={tmp_path / 'cache'}", *overrides])
    with pytest.raises(PseudoRISError) as info:
        run(OmegaConf.to_container(cfg, resolve=True))
    assert not out.exists() and not (tmp_path / "cache").exists()
    return _one_line(info.value)


@pytest.mark.parametrize("overrides, message", [
    (["sam.name=vit_z"], "sam.name='vit_z' is not one of tiny, vit_b, vit_h, vit_l"),
    (["filter.threshold=-1"], "filter.threshold must be > 0, got -1; DoC and uniqueness are ratios of positive "
                              "scores, so a threshold <= 0 would keep every candidate"),
    (["filter.threshold=0"], "filter.threshold must be > 0, got 0"),
    (["filter.fallback=maybe"], "filter.fallback='maybe' is not one of random, drop, topk"),
    (["shard=4", "num_shards=4"], "shard must be in [0, 3], got 4"),
    (["num_shards=0"], "num_shards must be >= 1, got 0"),
    (["decoding.min_len=10", "decoding.max_len=5"], "decoding.max_len must be >= 10, got 5"),
    (["stage=everything"], "stage='everything' is not one of all, generate, filter"),
    (["max_images=0"], "max_images must be >= 1, got 0"),
    (["selection.nms_iou=0"], "selection.nms_iou must be > 0 and <= 1, got 0"),
])
def test_generate_option_refused_before_any_work(tmp_path, overrides, message):
    assert message in _generate(tmp_path, *overrides)


def test_generate_missing_sam_checkpoint(tmp_path):
    missing = tmp_path / "sam_vit_h.pth"
    assert f"sam.checkpoint={missing}: file not found" in _generate(tmp_path, "sam.name=vit_h",
                                                                     f"sam.checkpoint={missing}")


def test_generate_cuda_without_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "device=cuda needs a CUDA GPU" in _generate(tmp_path, "device=cuda")


def test_generate_out_dir_under_a_file(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    from pseudo_ris.generation.runner import run

    cfg = _compose("generate", [f"out_dir={blocker / 'gen'}"])
    with pytest.raises(PseudoRISError) as info:
        run(OmegaConf.to_container(cfg, resolve=True))
    assert f"out_dir={blocker / 'gen'} cannot be a directory: {blocker} is a file" in _one_line(info.value)


# ------------------------------------------------------------------------------------------------- refs files
def _refer_with_refs(handmade_refer: Path, payload: bytes) -> Path:
    path = handmade_refer / "refcoco" / "refs(unc).p"
    path.write_bytes(payload)
    return path


def test_refs_payload_is_refused_not_run(handmade_refer, tmp_path):
    marker = tmp_path / "MARKER"
    refs = _refer_with_refs(handmade_refer, pickle.dumps([Payload(marker)], protocol=2))
    with pytest.raises(ReferDataError) as info:
        ReferDataset(handmade_refer, "refcoco")
    msg = _one_line(info.value)
    assert f"refs file {refs} refused: it holds Python objects, not plain data" in msg and "exec" in msg
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    ([1, 2, 3], "ref #0 is a int (1), expected a dict with keys"),
    (["a ref", "another"], "ref #0 is a str ('a ref'), expected a dict with keys"),
    ({"refs": []}, "holds a dict, expected a list of refs"),
    ([{"ref_id": 0}], "ref #0 in {path} lacks keys ['ann_id', 'image_id', 'split', 'sent_ids', 'sentences']"),
])
def test_refs_structure_is_checked(handmade_refer, content, message):
    refs = _refer_with_refs(handmade_refer, pickle.dumps(content, protocol=2))
    with pytest.raises(ReferDataError) as info:
        ReferDataset(handmade_refer, "refcoco")
    msg = _one_line(info.value)
    assert message.format(path=refs) in msg and str(refs) in msg


def test_truncated_refs_file(handmade_refer):
    path = handmade_refer / "refcoco" / "refs(unc).p"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ReferDataError) as info:
        ReferDataset(handmade_refer, "refcoco")
    assert f"refs file {path} is truncated or not a pickle" in _one_line(info.value)


def test_annotation_pointing_to_a_missing_image(handmade_refer):
    inst = handmade_refer / "refcoco" / "instances.json"
    data = json.loads(inst.read_text())
    data["annotations"][0]["image_id"] = 99
    inst.write_text(json.dumps(data))
    with pytest.raises(ReferDataError) as info:  # at load time, not as a KeyError mid-epoch
        ReferDataset(handmade_refer, "refcoco")
    assert f"annotation 10 in {inst} is on image 99, which is not in its images list" in _one_line(info.value)


def test_python2_refs_pickle_still_reads(handmade_refer):
    """Hand-assembled protocol-2 pickle as Python 2 writes it: byte strings (opcode U) with a latin-1 byte."""
    ds = ReferDataset(handmade_refer, "refcoco")
    ref = dict(ds.refs[0])
    body = b"\x80\x02]q\x00}q\x01(U\x06ref_idq\x02K\x00U\x06ann_idq\x03K\nU\x08image_idq\x04K\x01U\x05splitq\x05" \
           b"U\x05trainq\x06U\x08sent_idsq\x07]q\x08K\x00aU\tsentencesq\t]q\n}q\x0b(U\x07sent_idq\x0cK\x00U\x04sent" \
           b"q\rU\x04caf\xe9q\x0euaua."
    _refer_with_refs(handmade_refer, body)
    ds = ReferDataset(handmade_refer, "refcoco")
    assert ds.refs[0]["sentences"][0]["sent"] == "caf\u00e9" and ds.refs[0]["ann_id"] == ref["ann_id"] == 10


def test_protocol2_bytes_and_sets_still_read(tmp_path):
    from pseudo_ris.data.safe_load import load_plain_pickle

    data = [{"b": b"\xff\x00", "s": {1, 2}, "f": frozenset({"a"}), "t": (1.5, None, True)}]
    path = tmp_path / "plain.p"
    path.write_bytes(pickle.dumps(data, protocol=2))
    assert load_plain_pickle(path) == data


# ----------------------------------------------------------------------------------------------- reproduce.py
def _reproduce_cfg(tmp_path: Path, *dotlist: str):
    base = OmegaConf.load(CONF / "reproduce.yaml")
    return OmegaConf.merge(base, OmegaConf.from_dotlist([f"cache_dir={tmp_path / 'cache'}",
                                                         f"data_root={tmp_path}", *dotlist]))


def test_report_only_on_an_empty_out_dir_writes_nothing(tmp_path):
    from ris_models.reproduction import reproduce

    tracked = ROOT / "docs" / "results.md"
    before = tracked.read_bytes() if tracked.exists() else None
    out = tmp_path / "empty"
    out.mkdir()
    with pytest.raises(PseudoRISError) as info:
        reproduce(_reproduce_cfg(tmp_path, "report_only=true", f"out_dir={out}"), progress=lambda _: None)
    msg = _one_line(info.value)
    assert f"report_only=true: no finished run under {out / 'quick'}; {out / 'results.md'} was not written" in msg
    assert _files(out) == [] and (tracked.read_bytes() if tracked.exists() else None) == before


def test_reproduce_unknown_profile(tmp_path):
    from ris_models.reproduction import reproduce

    with pytest.raises(PseudoRISError) as info:
        reproduce(_reproduce_cfg(tmp_path, "profile=huge", f"out_dir={tmp_path / 'o'}"), progress=lambda _: None)
    assert "profile='huge' is not one of full, quick" in _one_line(info.value)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------- the command line
def _cli(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", **(env or {})}
    full_env.pop("PSEUDO_RIS_DEBUG", None) if not env or "PSEUDO_RIS_DEBUG" not in env else None
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=300)


def test_cli_train_bad_option_exit_2_one_line(tmp_path):
    res = _cli([str(ROOT / "tools" / "train.py"), "epochs=0", f"output_dir={tmp_path / 'run'}",
                f"cache_dir={tmp_path / 'cache'}"], cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip() == "error: epochs must be >= 1, got 0"
    assert "Traceback" not in res.stdout + res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no run dir, no cache, no log in the working dir


def test_cli_evaluate_payload_checkpoint(tmp_path, bad_checkpoints):
    res = _cli([str(ROOT / "tools" / "evaluate.py"), f"ckpt={bad_checkpoints['payload']}"], cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().startswith(f"error: ckpt: checkpoint {bad_checkpoints['payload']} refused")
    assert len(res.stderr.strip().splitlines()) == 1
    assert not bad_checkpoints["marker"].exists() and not (tmp_path / "evaluate.log").exists()


def test_cli_generate_and_reproduce_bad_options(tmp_path):
    res = _cli([str(ROOT / "tools" / "generate.py"), "sam.name=vit_z", f"out_dir={tmp_path / 'g'}"], cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.strip() == (
        "error: sam.name='vit_z' is not one of tiny, vit_b, vit_h, vit_l")
    res = _cli([str(ROOT / "tools" / "reproduce.py"), "no_such_option=1"], cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.strip() == (
        "error: unknown option(s) ['no_such_option']; see python tools/reproduce.py --help")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_debug_option_shows_the_traceback(tmp_path):
    res = _cli([str(ROOT / "tools" / "generate.py"), "filter.threshold=-1", f"out_dir={tmp_path / 'g'}"],
               cwd=tmp_path, env={"PSEUDO_RIS_DEBUG": "1", "HYDRA_FULL_ERROR": "1"})
    assert res.returncode != 0 and "Traceback" in res.stderr and "OptionError" in res.stderr


@pytest.mark.parametrize("tool", TOOLS)
def test_help_works_for_every_tool(tool, tmp_path):
    res = _cli([str(ROOT / "tools" / tool), "--help"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(res.stdout) > 200 and "Traceback" not in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
