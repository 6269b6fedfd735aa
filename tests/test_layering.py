"""Package layering: generation (`pseudo_ris`) never depends on the RIS trainers (`ris_models`).

The reverse direction is allowed (training reads the dataset format of `pseudo_ris.data`); code that drives both,
like the reproduction, lives in `ris_models`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PSEUDO_RIS = Path(__file__).resolve().parents[1] / "pseudo_ris"


def imported_modules(path: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file (function-level imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_scanner_sees_function_level_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from ris_models.training import train\n    import ris_models.zero_shot\n")
    assert imported_modules(probe) == {"ris_models.training", "ris_models.zero_shot"}


@pytest.mark.parametrize("path", sorted(PSEUDO_RIS.rglob("*.py")), ids=lambda p: str(p.relative_to(PSEUDO_RIS)))
def test_pseudo_ris_never_imports_ris_models(path):
    bad = sorted(m for m in imported_modules(path) if m == "ris_models" or m.startswith("ris_models."))
    assert not bad, f"{path} imports {bad}: move the code that needs both packages into ris_models"
