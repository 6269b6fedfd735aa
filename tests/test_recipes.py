"""The papers' training recipes (conf/recipe/): values as in the official code, optimiser groups, schedules,
total batch size by accumulation, and a short run that prints its groups and schedule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from ris_models.optimization import (OptimConfigError, OptimSpec, accumulation, build_optimizer, build_scheduler,
                                     spec_from)
from ris_models.registry import build_model

CONF = Path(__file__).resolve().parents[1] / "conf"


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


# Read off the official sources: CRIS.pytorch e596332 config/refcoco/cris_r50.yaml + train.py (Adam, MultiStepLR,
# amp); LAVT-RIS 1da0af9 args.py + README command (4 GPUs x 8) + train.py (AdamW, per-iteration poly 0.9).
OFFICIAL = {
    "cris_paper": dict(optimizer="adam", lr=1e-4, weight_decay=0.0, lr_schedule="multistep", lr_milestones=[35],
                       lr_gamma=0.1, epochs=50, total_batch_size=64, backbone_lr_mult=0.1, clip=None,
                       precision="16-mixed", sync_batchnorm=True),
    "lavt_paper": dict(optimizer="adamw", lr=5e-5, weight_decay=0.01, lr_schedule="poly", poly_power=0.9, epochs=40,
                       batch_size=8, total_batch_size=32, backbone_lr_mult=1.0, clip=None, precision="32-true",
                       sync_batchnorm=True),
    # today's fast default, unchanged by the recipe group
    "project": dict(optimizer="adamw", lr=5e-4, weight_decay=0.01, lr_schedule="poly", poly_power=0.9, epochs=10,
                    batch_size=16, total_batch_size=None, backbone_lr_mult=None, clip=1.0, precision="32-true",
                    sync_batchnorm=False),
}


@pytest.mark.parametrize("recipe", sorted(OFFICIAL))
def test_recipe_values(recipe):
    cfg = _cfg(f"recipe={recipe}", "model=cris_r50")
    expected = dict(OFFICIAL[recipe])
    assert cfg.recipe_name == recipe
    assert cfg.model.get("backbone_lr_mult") == expected.pop("backbone_lr_mult")
    assert cfg.trainer.gradient_clip_val == expected.pop("clip")
    assert cfg.trainer.precision == expected.pop("precision")
    assert cfg.trainer.sync_batchnorm == expected.pop("sync_batchnorm")
    for key, value in expected.items():
        assert cfg[key] == value, key
    assert _cfg(f"recipe={recipe}", "lr=3e-4").lr == 3e-4  # the command line still wins


def test_cris_parameter_groups_as_the_official_code():
    """CLIP backbone at lr x 0.1 except its positional embeddings, which join the head (build_segmenter)."""
    torch.manual_seed(0)
    model = build_model("cris_tiny", load_pretrained=False, backbone_lr_mult=0.1)
    spec = spec_from(dict(_cfg("recipe=cris_paper")))
    optimizer = build_optimizer(model.param_groups(spec.lr), spec)
    assert type(optimizer) is torch.optim.Adam
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["backbone"]["lr"] == pytest.approx(1e-5) and groups["head"]["lr"] == pytest.approx(1e-4)
    assert all(g["weight_decay"] == 0.0 for g in optimizer.param_groups)
    head = {id(p) for p in groups["head"]["params"]}
    assert id(model.text_encoder.positional_embedding) in head
    assert id(model.image_encoder.dense_pool.pool.positional_embedding) in head
    assert id(model.image_encoder.dense_pool.pool.q_proj.weight) not in head
    n_all = sum(1 for p in model.parameters() if p.requires_grad)
    assert len(groups["backbone"]["params"]) + len(groups["head"]["params"]) == n_all


def test_multistep_schedule_decays_after_epoch_35():
    p = torch.nn.Parameter(torch.zeros(1))
    spec = OptimSpec(optimizer="adam", lr=1e-4, weight_decay=0.0, schedule="multistep", milestones=(35,), gamma=0.1)
    optimizer = build_optimizer([{"params": [p]}], spec)
    entry = build_scheduler(optimizer, spec, total_steps=1000)
    assert entry["interval"] == "epoch"
    lrs = []
    for _ in range(50):  # Lightning steps an epoch scheduler after each epoch
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        entry["scheduler"].step()
    assert lrs[:35] == [pytest.approx(1e-4)] * 35 and lrs[35:] == [pytest.approx(1e-5)] * 15


def test_accumulation_makes_the_total_batch():
    assert accumulation(16, 1, 64) == 4 and accumulation(16, 4, 64) == 1 and accumulation(8, 4, 32) == 1
    assert accumulation(8, 1, None, accumulate=3) == 3
    with pytest.raises(OptimConfigError, match="total_batch_size=64 is not a multiple of batch_size 16 x 8"):
        accumulation(16, 8, 64)
    with pytest.raises(OptimConfigError, match="optimizer='sgd'"):
        spec_from({"optimizer": "sgd"})
    with pytest.raises(OptimConfigError, match="lr_schedule='cosine'"):
        spec_from({"lr_schedule": "cosine"})


def test_a_paper_recipe_run_prints_groups_and_accumulates(tiny_ris_data, tmp_path, capsys):
    from test_train import _train_cfg

    from ris_models.training import train

    class Seen:
        accumulate = None

    import lightning as L

    class Probe(L.Callback):
        def on_train_start(self, trainer, pl_module):
            Seen.accumulate = trainer.accumulate_grad_batches

    cfg = _train_cfg(tiny_ris_data, tmp_path / "run", "recipe=cris_paper", "trainer.precision=32-true", "epochs=1",
                     "batch_size=4", "total_batch_size=8", "evaluate_after=false")
    out = train(cfg, extra_callbacks=[Probe()])
    printed = capsys.readouterr().out
    assert "optimizer: Adam\n" in printed and "schedule: multistep, lr x 0.1 after epochs [35], per epoch" in printed
    assert "group backbone:" in printed and "lr 1e-05" in printed and "group head:" in printed
    assert Seen.accumulate == 2  # 8 = 4 per device x 1 device x 2
    assert out["global_step"] == 3  # 20 train refs / 4 = 5 batches, an optimiser step every 2 (and the last)
    with pytest.raises(OptimConfigError, match="total_batch_size=6"):
        train(_train_cfg(tiny_ris_data, tmp_path / "bad", "total_batch_size=6", "batch_size=4"))
