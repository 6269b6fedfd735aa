"""Numerical parity with the official LAVT and CRIS code, for maintainers (needs their checkouts; not run in CI).

    python tools/parity_check.py lavt_root=<LAVT-RIS checkout> cris_root=<CRIS.pytorch checkout>
    python tools/parity_check.py lavt_root=<LAVT-RIS checkout> lavt_record=tests/fixtures   # re-record fixtures
    python tools/parity_check.py cris_root=<CRIS.pytorch checkout> cris_record=tests/fixtures

Each check builds the official model with random initialisation, maps its weights into our preset through the
checkpoint importer and prints the largest absolute logits difference (CPU, float32). A root that is not given is
skipped. The work is in ``ris_models.official``; this file only parses options and prints.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from pseudo_ris.cli import user_errors


def check_lavt(root: str, size: int = 480, seed: int = 0, record: str | None = None,
               dtype: str = "float32") -> list[str]:
    """LAVT-RIS vs ``lavt_swin_b``: stage-wise and logits differences at ``size`` px; lines to print."""
    from ris_models.official.lavt_reference import check_lavt as run, record_lavt_fixtures

    lines = run(root, size=size, seed=seed, dtype=dtype)
    if record is not None:
        lines += [f"wrote {p}" for p in record_lavt_fixtures(root, Path(record))]
    return lines


def record_cris(root: str, out_dir: str, seed: int = 0) -> list[str]:
    """Re-record the tiny official CRIS head fixture into ``out_dir``; lines to print."""
    from ris_models.official.cris_reference import record_cris_head

    return [f"wrote {record_cris_head(root, Path(out_dir), seed)}"]


def check_cris(root: str, preset: str, dtype: str = "float32", random_norms: bool = False) -> list[str]:
    """CRIS.pytorch vs ``preset`` (cris_r50 / cris_r101) at 416 px, 17 tokens; lines to print."""
    import torch

    from ris_models.official.cris_reference import check_cris as run

    return run(root, preset, dtype=getattr(torch, dtype), randomise_norms=random_norms)


@hydra.main(version_base="1.3", config_path="../conf", config_name="parity_check")
def main(cfg: DictConfig) -> None:
    if cfg.lavt_root is None and cfg.cris_root is None:
        print("error: give lavt_root=<LAVT-RIS checkout> and/or cris_root=<CRIS.pytorch checkout>", file=sys.stderr)
        raise SystemExit(2)
    with user_errors():  # bad input: one line and exit code 2 (PSEUDO_RIS_DEBUG=1: traceback)
        if cfg.lavt_root is not None:
            record = None if cfg.lavt_record is None else to_absolute_path(str(cfg.lavt_record))
            for line in check_lavt(to_absolute_path(str(cfg.lavt_root)), int(cfg.lavt_size), int(cfg.seed), record,
                                   str(cfg.lavt_dtype)):
                print(line)
        if cfg.cris_root is not None and cfg.cris_record is not None:
            for line in record_cris(to_absolute_path(str(cfg.cris_root)), to_absolute_path(str(cfg.cris_record)),
                                    int(cfg.seed)):
                print(line)
        if cfg.cris_root is not None:
            for preset in ("cris_r50", "cris_r101"):
                for line in check_cris(to_absolute_path(str(cfg.cris_root)), preset, str(cfg.cris_dtype),
                                       bool(cfg.cris_random_norms)):
                    print(line)


if __name__ == "__main__":
    main()
