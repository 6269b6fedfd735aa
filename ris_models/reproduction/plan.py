"""What a reproduction runs: the table's rows and columns, the resolved plan, and the order of its runs.

A plan is ``conf/reproduce.yaml`` with one profile applied; every other part of the reproduction reads it and
nothing else, so the same plan always names the same runs in the same directories.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from pseudo_ris.data.errors import PseudoRISError
from pseudo_ris.data.plain import to_plain as _plain

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


class ReproduceConfigError(PseudoRISError):
    """An invalid reproduction option (unknown row, profile, model)."""


DEFAULT_OUT_DIR = "outputs/reproduce"
DEFAULT_RESULTS_MD = "docs/results.md"


def results_page_path(cfg: Mapping[str, Any]) -> Path:
    """``results_md``, or by default: the repository's docs/results.md for the default ``out_dir`` (the command in
    the README), else ``<out_dir>/results.md``, so that another reproduction never overwrites the tracked page."""
    if cfg.get("results_md"):
        return Path(str(cfg["results_md"])).expanduser()
    out_dir = str(cfg.get("out_dir") or DEFAULT_OUT_DIR)
    if Path(out_dir).expanduser() == Path(DEFAULT_OUT_DIR):
        return Path(DEFAULT_RESULTS_MD)
    return Path(out_dir).expanduser() / "results.md"


#: where a pseudo row's sentences come from (``Row.text``)
TEXT_SOURCES = ("captions", "oracle")


@dataclass(frozen=True)
class Row:
    label: str
    kind: str                 # zero_shot | pseudo | human | mixed
    store: str | None = None  # a key of STORES (pseudo-label store / zero-shot mask source)
    variant: str | None = None
    ratio: float = 1.0
    #: DoC filter options replacing the store's recorded policy (filtered variants): the selection differs, the
    #: captions do not
    policy: tuple[tuple[str, Any], ...] = ()
    #: extra overrides of conf/train.yaml (e.g. the encoders' initialisation)
    train_extra: tuple[str, ...] = ()
    #: the models this row is run for (None: every model of the plan)
    models: tuple[str, ...] | None = None
    #: human / mixed rows: train on every dataset of the plan (False: the first only, an ablation on synthref)
    every_dataset: bool = True
    #: pseudo rows: ``captions`` (the generator's sentences) or ``oracle`` (the same masks, each with SynthRef's own
    #: expressions of the object it matches: what a perfect captioner and filter would give; see
    #: pseudo_ris.evaluation.oracle_text)
    text: str = "captions"

    def __post_init__(self) -> None:
        if self.text not in TEXT_SOURCES:
            raise ValueError(f"text must be one of {TEXT_SOURCES}, got {self.text!r}")
        if self.text == "oracle" and (self.kind != "pseudo" or not self.variant):
            raise ValueError("oracle text rewrites a pseudo-label variant: it needs kind='pseudo' and a variant")

    def runs_for(self, model: str) -> bool:
        return self.models is None or model in self.models

    def spec(self) -> dict[str, Any]:
        """What decides a run's numbers (not its label): recorded in every result, so a cached result of a row whose
        definition changed since is refused instead of shown under the new definition."""
        spec = {"kind": self.kind, "store": list(STORES[self.store]) if self.store else None, "variant": self.variant,
                "ratio": self.ratio, "policy": [list(p) for p in self.policy], "train_extra": list(self.train_extra)}
        if self.text != "captions":  # only then: the specs (and cached results) of every other row stay as they were
            spec["text"] = self.text
        return spec


#: candidate stores a row can draw from: name -> overrides of conf/generate.yaml
STORES: dict[str, tuple[str, ...]] = {
    "sam": ("masks=sam",),
    "gt": ("masks=gt",),
    "sam_spatial": ("masks=sam", "spatial.enabled=true"),  # + location / size phrases (beyond the paper)
    # the same captions scored by the CLIP stand-in instead of the CoCa's own head (the main job's scorer)
    "sam_clip": ("masks=sam", "generator/scorer=clip_synthref"),
    "gt_clip": ("masks=gt", "generator/scorer=clip_synthref"),
}

#: the main job's filter (conf/train.yaml pseudo_labels.generate, with the CLIP stand-in as scorer): the head-noun
#: vote, DoC > 1000 (a margin of ln 1000 = 6.9 in summed logits), masks without a kept caption dropped
MAIN_JOB_POLICY: tuple[tuple[str, Any], ...] = (("head_consensus", True), ("threshold", 1000.0), ("fallback", "drop"))
#: the head-noun vote at the looser threshold measured with the CoCa head as scorer
COCA_VOTE_POLICY: tuple[tuple[str, Any], ...] = (("head_consensus", True), ("threshold", 10.0), ("fallback", "drop"))

ROWS: dict[str, Row] = {
    "zero_shot": Row("zero-shot: SAM masks ranked by the CLIP scorer", "zero_shot", store="sam"),
    "zero_shot_gt": Row("zero-shot: GT masks ranked by the CLIP scorer", "zero_shot", store="gt"),
    # the paper's zero-shot baselines rank mask proposals with CLIP, not with the captioner: the CLIP stand-in here
    "zero_shot_clip": Row("zero-shot: SAM masks ranked by the CLIP stand-in", "zero_shot", store="sam_clip"),
    "beam": Row("pseudo: beam search only", "pseudo", "sam", "beam"),
    "distinctive": Row("pseudo: + distinctive sampling (no filter)", "pseudo", "sam", "beam_distinctive"),
    "full": Row("pseudo: + DoC filtering (full method)", "pseudo", "sam", "full"),
    "full_vote_coca": Row("pseudo: full method + head-noun vote, CoCa head scorer (DoC > 10, drop)", "pseudo", "sam",
                          "full", policy=COCA_VOTE_POLICY),
    "full_vote": Row("pseudo: the main job's labels (full method + head-noun vote, CLIP stand-in scorer, DoC > 1000, "
                     "drop)", "pseudo", "sam_clip", "full", policy=MAIN_JOB_POLICY),
    "full_gt": Row("pseudo, GT masks (`masks=gt`), full method", "pseudo", "gt", "full"),
    "full_gt_vote": Row("pseudo, GT masks, the main job's filter and scorer", "pseudo", "gt_clip", "full",
                        policy=MAIN_JOB_POLICY),
    # the text's ceiling: the main job's masks, each with the grammar's expressions of the object it matches
    "full_vote_oracle": Row("pseudo: the main job's masks with SynthRef's own expressions (oracle text)", "pseudo",
                            "sam_clip", "full", policy=MAIN_JOB_POLICY, text="oracle"),
    "full_spatial": Row("pseudo: full method + spatial phrases", "pseudo", "sam_spatial", "full"),
    "full_scratch": Row("pseudo: full method, encoders from scratch (`model.pretrained=false`)", "pseudo", "sam",
                        "full", train_extra=("model.pretrained=false",), models=("cris_tiny",)),
    "full_pretrained": Row("pseudo: full method, Swin stand-in (`model.pretrained=true`)", "pseudo", "sam", "full",
                           train_extra=("model.pretrained=true",), models=("lavt_tiny",)),
    "human_100": Row("human 100 %", "human", ratio=1.0),
    "human_100_scratch": Row("human 100 %, encoders from scratch (`model.pretrained=false`)", "human",
                             train_extra=("model.pretrained=false",), models=("cris_tiny",), every_dataset=False),
    "human_100_pretrained": Row("human 100 %, Swin stand-in (`model.pretrained=true`)", "human",
                                train_extra=("model.pretrained=true",), models=("lavt_tiny",), every_dataset=False),
    "human_10": Row("human 10 %", "human", ratio=0.1),
    "mixed_10": Row("human 10 % + pseudo (full)", "mixed", "sam", "full", ratio=0.1),
}


def variant_key(row: Row) -> str:
    """Directory name of a row's pseudo-label dataset: store, variant and (if any) the policy it overrides."""
    key = f"{row.store}_{row.variant}"
    for name, value in row.policy:
        key += f"_{name}-{value}"
    if row.text != "captions":
        key += f"_text-{row.text}"
    return key


#: table columns: (dataset, split, header)
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("synthref", "val", "SR val"), ("synthref", "testA", "SR testA"), ("synthref", "testB", "SR testB"),
    ("synthref+", "val", "SR+ val"), ("synthref+", "testA", "SR+ testA"), ("synthref+", "testB", "SR+ testB"),
    ("synthrefg", "val", "SRg val"), ("synthrefg", "test", "SRg test"), ("synthref", "unseen", "unseen"))


def compose(config_name: str, overrides: Sequence[str]) -> dict:
    """A config of ``conf/`` composed with Hydra's compose API (outside any running Hydra app)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return _plain(hydra_compose(config_name, overrides=list(overrides)))


def profile_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The chosen profile with ``override`` applied, checked (rows, datasets, budgets) before any work starts."""
    cfg = _plain(cfg)
    name = cfg["profile"]
    if name not in cfg["profiles"]:
        raise ReproduceConfigError(f"unknown profile {name!r}; choose one of {sorted(cfg['profiles'])}")
    p = {**cfg["profiles"][name], **{k: v for k, v in (cfg.get("override") or {}).items() if v is not None}}
    bad = [r for r in p["rows"] if r not in ROWS]
    if bad:
        raise ReproduceConfigError(f"unknown row(s) {bad}; choose from {list(ROWS)}")
    if not p["datasets"] or p["datasets"][0] != "synthref":
        raise ReproduceConfigError("datasets must start with synthref (pseudo rows select checkpoints on it)")
    p["max_steps"] = _steps(p["max_steps"], p["models"])
    return p


@dataclass
class Plan:
    """The resolved options of one reproduction (``conf/reproduce.yaml`` + the chosen profile)."""

    profile: str
    seeds: list[int]
    models: list[str]
    datasets: list[str]
    rows: list[str]
    max_steps: int | dict[str, int]   # one budget, or one per model (the tiny CRIS needs more steps to settle)
    val_every: int
    limit_eval: int | None
    gen_max_images: int | None
    plain_sampling: bool
    out_dir: Path
    results_md: Path
    data_root: Path
    train_overrides: list[str]
    generate_overrides: list[str]
    cache_dir: str
    gallery_images: int = 8
    notes_md: Path | None = None
    trainer: str = "cpu"      # conf/trainer group of every training (gpu / ddp for profile=full on GPUs)
    device: str = "cpu"       # device of generation and the zero-shot ranker (cuda on GPUs)

    def steps_for(self, model: str) -> int:
        return self.max_steps if isinstance(self.max_steps, int) else self.max_steps[model]

    def steps_text(self) -> str:
        if isinstance(self.max_steps, int):
            return str(self.max_steps)
        return ", ".join(f"{m} {self.max_steps[m]}" for m in self.models)

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any], data_root: Path) -> "Plan":
        cfg = _plain(cfg)
        name = cfg["profile"]
        p = profile_options(cfg)
        return cls(profile=name, seeds=[int(s) for s in p["seeds"]], models=list(p["models"]),
                   datasets=list(p["datasets"]), rows=list(p["rows"]), max_steps=p["max_steps"],
                   val_every=int(p["val_every"]), limit_eval=p.get("limit_eval"),
                   gen_max_images=p.get("gen_max_images"), plain_sampling=bool(p.get("plain_sampling", False)),
                   out_dir=Path(str(cfg["out_dir"])).expanduser() / name, results_md=Path(str(cfg["results_md"])),
                   data_root=data_root,
                   train_overrides=[*(cfg.get("train_overrides") or []), *_input_size_overrides(p.get("input_size"))],
                   generate_overrides=list(cfg.get("generate_overrides") or []), cache_dir=str(cfg["cache_dir"]),
                   gallery_images=int(cfg.get("gallery_images", 8)),
                   notes_md=Path(str(cfg["notes_md"])) if cfg.get("notes_md") else None,
                   trainer=str(cfg.get("trainer") or "cpu"), device=str(cfg.get("device") or "cpu"))


def _input_size_overrides(value: Any) -> list[str]:
    """A profile's ``input_size`` as a training override (null: each model's default, 128 px for the tiny ones)."""
    if value is None:
        return []
    if isinstance(value, bool) or not isinstance(value, int) or value < 32 or value % 32:
        raise ReproduceConfigError(f"input_size must be a positive multiple of 32 (the models' output stride), "
                                   f"got {value}")
    return [f"model.input_size={value}"]


def _steps(value: Any, models: Sequence[str]) -> int | dict[str, int]:
    """``max_steps`` of a profile: a number, or ``{model: number}`` naming every model of the plan."""
    if not isinstance(value, Mapping):
        if int(value) < 1:
            raise ReproduceConfigError(f"max_steps must be >= 1, got {value}")
        return int(value)
    missing = [m for m in models if m not in value]
    if missing:
        raise ReproduceConfigError(f"max_steps names no budget for model(s) {missing}: give a number for every "
                                   "model of the plan, or one number for all")
    steps = {str(m): int(value[m]) for m in models}
    bad = {m: n for m, n in steps.items() if n < 1}
    if bad:
        raise ReproduceConfigError(f"max_steps must be >= 1, got {bad}")
    return steps


def _q(key: str, value: Any) -> str:
    """A Hydra override with a quoted value (paths may hold ``~``, ``+``, ``=``)."""
    return f"{key}={json.dumps(str(value))}"


def run_spec(plan: Plan, model: str, row_name: str) -> dict[str, Any]:
    """Everything that decides a run's numbers besides its seed and dataset: the row's definition and the plan's
    budgets and overrides. Recorded in each result; a cached result made under another spec is refused, so widening a
    budget or changing an override in the same ``out_dir`` never shows old numbers as new ones."""
    row = ROWS[row_name]
    spec: dict[str, Any] = {"row": row.spec(), "limit_eval": plan.limit_eval, "data": plan.data_root.name}
    if row.store:
        spec.update(gen_max_images=plan.gen_max_images, plain_sampling=plan.plain_sampling,
                    generate_overrides=list(plan.generate_overrides))
    if row.kind != "zero_shot":
        spec.update(steps=plan.steps_for(model), val_every=plan.val_every, train_overrides=list(plan.train_overrides))
    return spec


def run_dir(plan: Plan, model: str, row: str, dataset: str, seed: int) -> Path:
    return plan.out_dir / "runs" / model / row / dataset / f"s{seed}"


def planned_runs(plan: Plan) -> list[tuple[str, str, str, int]]:
    """(model, row, training dataset, seed) in execution order; zero-shot rows are model- and seed-free.

    Order: zero-shot rows, then training dataset (pseudo rows train on the first only), seed, model, row; so a
    partial run (time out, Ctrl-C) leaves whole seeds of the first dataset rather than all seeds of a few rows."""
    runs = [("-", row, "all", 0) for row in plan.rows if ROWS[row].kind == "zero_shot"]
    for ds in plan.datasets:
        for seed in plan.seeds:
            for model in plan.models:
                for row in plan.rows:
                    spec, first = ROWS[row], ds == plan.datasets[0]
                    if not spec.runs_for(model):
                        continue
                    if (spec.kind in ("human", "mixed") and (spec.every_dataset or first)) or \
                            (spec.kind == "pseudo" and first):
                        runs.append((model, row, ds, seed))
    return runs


