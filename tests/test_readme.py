"""The README's commands are executable truth: each one names a real tool, its options exist, and (where it needs no
file of the user's) its option values pass the tool's own checks. A slow test runs the cheap ones for real at tiny
sizes in an empty working directory.

Commands are read from the README's ``bash`` blocks (``\\`` continuations joined, comments dropped); placeholders
such as ``<run>`` or ``<data_root>`` become paths in a temporary directory.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import main_job_generate_overrides

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
README = ROOT / "README.md"

#: tool -> Hydra config name (tools composed by Hydra); the others take key=value options of a YAML file or argparse
HYDRA_CONFIGS = {"train.py": "train", "generate.py": "generate", "evaluate.py": "evaluate",
                 "make_synthref.py": "synthref", "pseudo_quality.py": "pseudo_quality",
                 "import_checkpoint.py": "import_checkpoint", "rescore.py": "rescore",
                 "oracle_text.py": "oracle_text"}
DOTLIST_CONFIGS = {"reproduce.py": "reproduce.yaml", "train_foundation.py": "foundation.yaml",
                   "doctor.py": "doctor.yaml", "export_refer.py": "export_refer.yaml",
                   "import_pseudo.py": "import_pseudo.yaml"}
#: README commands that a tool refuses on purpose on one machine, with the start of the message that says why
REFUSED_ALONE = {"trainer.num_nodes=2": "trainer.num_nodes=2 needs a launcher"}


def readme_commands() -> list[str]:
    """Every ``python tools/...`` command line of the README's bash blocks, continuations joined, comments dropped."""
    commands, block = [], None
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            block = [] if block is None and line.strip() == "```bash" else None
            continue
        if block is None:
            continue
        block.append(line)
        if line.rstrip().endswith("\\"):
            continue
        text = " ".join(part.rstrip().rstrip("\\") for part in block)
        block = []
        text = re.split(r"\s#\s|\s#$", text)[0].strip() if not text.lstrip().startswith("#") else ""
        for piece in text.split("&&"):
            piece = piece.strip()
            if piece.startswith("python tools/"):
                commands.append(" ".join(piece.split()))
    return commands


def _fill(command: str, tmp: Path) -> tuple[str, bool]:
    """Placeholders -> temporary paths; returns (command, whether any placeholder was filled)."""
    filled = re.sub(r"<([^>]+)>", lambda m: str(tmp / re.sub(r"\W+", "_", m.group(1)).strip("_")), command)
    return filled, filled != command


def _tool_module(tool: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"readme_tool_{tool[:-3]}", ROOT / "tools" / tool)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the tools run nothing on import (``if __name__ == "__main__"``)
    return module


def _split(command: str) -> tuple[str, list[str]]:
    tokens = shlex.split(command)
    assert tokens[0] == "python" and tokens[1].startswith("tools/"), command
    return Path(tokens[1]).name, tokens[2:]


def test_readme_lists_commands_of_every_kind(tmp_path):
    commands = readme_commands()
    tools = {_split(_fill(c, tmp_path)[0])[0] for c in commands}
    assert len(commands) >= 20 and {"train.py", "generate.py", "evaluate.py", "reproduce.py"} <= tools


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_options_exist_and_pass_the_checks(command, tmp_path, monkeypatch):
    if "..." in command:
        pytest.skip("an abbreviated command (ellipsis)")
    filled, placeholders = _fill(command, tmp_path)
    tool, args = _split(filled)
    assert (ROOT / "tools" / tool).is_file(), f"README names tools/{tool}, which does not exist"
    monkeypatch.chdir(tmp_path)  # relative default paths resolve (and would be created) here, not in the repo
    if tool in HYDRA_CONFIGS:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name=HYDRA_CONFIGS[tool], overrides=args)  # unknown keys / groups raise
        cfg = OmegaConf.to_container(cfg, resolve=True)
    elif tool in DOTLIST_CONFIGS:
        base = OmegaConf.load(CONF / DOTLIST_CONFIGS[tool])
        cfg = OmegaConf.to_container(OmegaConf.merge(base, OmegaConf.from_dotlist(args)), resolve=False)
        unknown = sorted(set(cfg) - set(base))
        assert not unknown, f"{command}: unknown option(s) {unknown}"
    else:  # benchmarks: their own key=value parser (``_parse``) or argparse flags
        module = _tool_module(tool)
        if hasattr(module, "_parse"):
            module._parse(args)  # exits with code 2 on an unknown option
        else:
            assert all(a.startswith("-") for a in args), f"{command}: argparse tool with non-flag arguments"
        return
    if placeholders:
        return  # it needs the user's own files: the options above are all that can be checked
    refused = next((why for key, why in REFUSED_ALONE.items() if key in args), None)
    try:
        _check(tool, cfg, tmp_path)
    except Exception as exc:  # noqa: BLE001 - the message is what is asserted
        assert refused is not None and refused in str(exc), f"{command}: {exc}"
    else:
        assert refused is None, f"{command} should be refused when started alone ({refused})"
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a check wrote files"


def _check(tool: str, cfg: dict, tmp: Path) -> None:
    """The tool's own option checks (they read no data and write nothing)."""
    if tool == "train.py":
        from ris_models.validation import check_train_config

        check_train_config(cfg)
    elif tool == "generate.py":
        from pseudo_ris.validation import check_generate_options

        check_generate_options(cfg)
    elif tool == "make_synthref.py":
        from pseudo_ris.synthref import SynthRefConfig

        SynthRefConfig.from_cli(cfg).validate()
    elif tool == "reproduce.py":
        from ris_models.reproduction.plan import results_page_path
        from ris_models.validation import check_reproduce_config

        cfg["results_md"] = str(results_page_path(cfg))
        check_reproduce_config(cfg)


# ------------------------------------------------------------------------------------------ real runs (slow)
#: appended to every README command of a tool so that it runs in seconds (later overrides win)
TINY = {
    "make_synthref.py": ["num_images=12", "pool_images=4", "progress=false"],
    "generate.py": ["synthref.num_images=12", "synthref.pool_images=4", "max_images=2", "progress=false",
                    "report.max_images=2"],
    "train.py": ["synthref.num_images=12", "synthref.pool_images=4", "epochs=1", "max_steps=2", "limit_eval=2",
                 "batch_size=2", "num_overlays=0", "trainer=cpu", "trainer.enable_progress_bar=false",
                 "pseudo_labels.generate=[generator/captioner=synthref_shipped,max_images=2,progress=false]"],
}


def _runnable() -> list[str]:
    out = []
    for command in readme_commands():
        if "<" in command:
            continue
        tool, args = _split(command)
        if tool in TINY and not any(k in args for k in REFUSED_ALONE):
            out.append(command)
    return out


@pytest.mark.slow
def test_readme_commands_run_at_tiny_sizes(tmp_path):
    """Each runnable README command in order, in one fresh working directory with its own cache (minutes)."""
    cache = tmp_path / "cache"
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    for command in _runnable():
        tool, args = _split(command)
        extra = [] if tool == "make_synthref.py" else [f"cache_dir={cache}"]
        res = subprocess.run([sys.executable, str(ROOT / "tools" / tool), *args, *TINY[tool], *extra], cwd=work,
                             env=env, capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, f"{command}\n{res.stderr[-3000:]}"
    assert not (ROOT / "data").exists() or (ROOT / "data").is_dir()  # nothing was written into the repository


def test_readme_generate_command_with_the_main_jobs_settings_matches_the_main_job():
    """The README's "the main job's settings" command must make the labels ``tools/train.py data=pseudo`` makes: the
    same overrides as conf/train.yaml ``pseudo_labels.generate`` (its HTML report aside), on the shipped tiny SAM."""
    main_job = set(main_job_generate_overrides()) - {"report.enabled=true"}
    candidates = [c for c in readme_commands() if c.startswith("python tools/generate.py generator/captioner=")]
    assert len(candidates) == 1, candidates
    _, args = _split(candidates[0])
    assert set(args) == main_job | {"sam.checkpoint=shipped"}
