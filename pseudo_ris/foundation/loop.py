"""A small resumable training loop shared by the SAM and CoCa trainers.

Why not Lightning here: the data is an infinite, step-indexed stream (step ``s`` always draws the same scenes), so
resuming only needs the model, the optimiser and the step; a 60-line loop keeps that exact and easy to test.
State is saved atomically every ``checkpoint_every`` steps to ``<out>/train_state.pt``; a rerun with the same
recipe continues from there, a rerun with a different recipe is refused (it would silently mix two runs).
"""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from ..data.errors import PseudoRISError
from ..data.io import append_jsonl, atomic_write_bytes, atomic_write_json
from ..data.safe_load import load_torch_file

STATE_NAME = "train_state.pt"
LOG_NAME = "train_log.jsonl"


class ResumeMismatchError(PseudoRISError):
    """A training directory holds the state of a different recipe."""


def cosine_lr(step: int, total: int, base: float, warmup: int, min_frac: float) -> float:
    """Linear warmup then cosine decay to ``base * min_frac`` at ``total``."""
    if step < warmup:
        return base * (step + 1) / max(warmup, 1)
    progress = min(1.0, (step - warmup) / max(total - warmup, 1))
    return base * (min_frac + (1.0 - min_frac) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def adamw_without_norm_decay(model: torch.nn.Module, lr: float, weight_decay: float,
                              no_decay_names: tuple[str, ...] = ()) -> tuple[torch.optim.Optimizer, list[torch.nn.Parameter]]:
    """AdamW with weight decay on matrices only (biases, norms and the temperature are not decayed; nor are
    parameters whose name contains one of ``no_decay_names``), and the trainable parameters (for gradient clipping)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    exempt = [p.ndim < 2 or any(s in n for s in no_decay_names) for n, p in named]
    optimizer = torch.optim.AdamW([{"params": [p for (_, p), e in zip(named, exempt) if not e],
                                    "weight_decay": weight_decay},
                                   {"params": [p for (_, p), e in zip(named, exempt) if e], "weight_decay": 0.0}],
                                  lr=lr)
    return optimizer, [p for _, p in named]


def clamp_logit_scale(model: torch.nn.Module) -> Callable[[], None]:
    """After-step hook of contrastive models: open_clip's training clamps the temperature at 100 (ln 100)."""
    def clamp() -> None:
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
    return clamp


def save_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
               recipe_hash: str, extra: dict | None = None) -> None:
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "recipe_hash": recipe_hash, "extra": extra or {}}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, recipe_hash: str) -> int:
    """Restore model and optimiser from ``path``; returns the number of steps already done."""
    state = load_torch_file(path, what="training state")  # tensors and plain data only: loading runs no code
    if state.get("recipe_hash") != recipe_hash:
        raise ResumeMismatchError(
            f"{path} was written by recipe {state.get('recipe_hash')}, not {recipe_hash}; "
            "use another out= directory or delete the old state to start over")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


def run_loop(*, name: str, out_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             steps: int, recipe_hash: str, lr_at: Callable[[int], float],
             step_fn: Callable[[int], dict[str, torch.Tensor]], checkpoint_every: int, grad_clip: float,
             params: list[torch.nn.Parameter] | None = None, progress: bool = True,
             after_step: Callable[[], None] | None = None, stop_after: int | None = None) -> dict[str, Any]:
    """Run steps ``[done, min(steps, stop_after))`` of a ``steps``-long schedule.

    ``step_fn(step)`` returns a dict with a scalar ``"loss"`` (plus logged terms).
    """
    end = steps if stop_after is None else max(0, min(steps, int(stop_after)))
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / STATE_NAME
    done = load_state(state_path, model, optimizer, recipe_hash) if state_path.exists() else 0
    params = params or [p for p in model.parameters() if p.requires_grad]
    model.train()
    t0 = time.time()
    last: dict[str, float] = {}
    window: list[dict[str, float]] = []
    bar = tqdm(range(done, end), initial=done, total=end, desc=f"train {name}", disable=not progress,
               dynamic_ncols=True)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        terms = step_fn(step)
        loss = terms["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{name}: non-finite loss at step {step}: {float(loss)}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        if after_step is not None:
            after_step()
        window.append({k: float(v.detach()) for k, v in terms.items()})
        if len(window) >= 20 or step + 1 == end:
            last = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
            bar.set_postfix({k: f"{v:.3f}" for k, v in last.items()})
            append_jsonl(out_dir / LOG_NAME, [{"step": step + 1, "lr": lr_at(step),
                                                 "elapsed_s": round(time.time() - t0, 1), **last}])
            window = []
        if (step + 1) % checkpoint_every == 0 or step + 1 == end:
            save_state(state_path, model, optimizer, step + 1, recipe_hash)
    bar.close()
    model.eval()
    return {"steps_done": max(end, done), "schedule_steps": steps, "resumed_from": done,
            "elapsed_s": time.time() - t0, "last": last}


def write_recipe(out_dir: Path, kind: str, config: dict, recipe_hash: str, summary: dict, weights: str) -> Path:
    """Record what produced the weights next to them (one entry per run, so a resumed run shows its pieces)."""
    path = out_dir / "recipe.json"
    runs = []
    if path.exists():
        try:
            runs = json.loads(path.read_text()).get("runs", [])
        except (OSError, json.JSONDecodeError):
            runs = []
    runs.append({"finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "resumed_from": summary["resumed_from"], "steps_done": summary["steps_done"],
                 "schedule_steps": summary["schedule_steps"],
                 "elapsed_s": round(summary["elapsed_s"], 1), "last": summary["last"]})
    return atomic_write_json(path, {"model": kind, "weights": weights, "config": config, "config_hash": recipe_hash,
                                    "runs": runs}, indent=1)
