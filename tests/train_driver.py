"""Subprocess driver for the kill / resume / lock tests: ``ris_models.training.train`` as ``tools/train.py`` runs it.

    python tests/train_driver.py <steps.jsonl> <pause_at_step> <hydra override> ...

Composes ``conf/train.yaml`` with the overrides, records every trained global step in ``steps.jsonl`` and, when
``pause_at_step >= 0``, writes ``<steps.jsonl>.paused`` and sleeps before training that step (so a test can SIGKILL
the process at a known moment). Exit code 2 with a one-line message for project errors, like the tools.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402

from pseudo_ris.data.errors import PseudoRISError  # noqa: E402
from ris_models.training import train  # noqa: E402


class Recorder(L.Callback):
    def __init__(self, path: Path, pause_at: int) -> None:
        self.path, self.pause_at = path, pause_at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.pause_at:
            Path(f"{self.path}.paused").write_text(str(trainer.global_step))
            time.sleep(600)  # the test kills the process here
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"step": trainer.global_step}) + "\n")


def main() -> None:
    torch.set_num_threads(1)
    steps, pause_at, overrides = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    try:
        out = train(cfg, extra_callbacks=[Recorder(steps, pause_at)])
    except PseudoRISError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    print(json.dumps({"global_step": out["global_step"], "results": out["results"]}))


if __name__ == "__main__":
    main()
