"""Score a finished candidate store again with another DoC scorer, same caption candidates (thin Hydra entry point).

    python tools/rescore.py store=<store dir> out_dir=<new store dir> generator/scorer=clip_synthref
    python tools/pseudo_quality.py store=<new store dir>      # then compare with the source store's report

The captions are not decoded again: only the CLIP scores (M, C) and DoC of every stored candidate are recomputed, so
two scorers are compared on exactly the same candidates. See conf/rescore.yaml and pseudo_ris.generation.rescore.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import hydra
import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from pseudo_ris.cli import user_errors


@hydra.main(version_base="1.3", config_path="../conf", config_name="rescore")
def main(cfg: DictConfig) -> None:
    from pseudo_ris.filtering.nouns import build_noun_extractor
    from pseudo_ris.generation.pipeline import PseudoLabelPipeline
    from pseudo_ris.generation.rescore import RescoreError, rescore_store
    from pseudo_ris.generation.runner import build_captioner_bundle, build_scorer
    from pseudo_ris.validation import check_int

    params = OmegaConf.to_container(cfg, resolve=True)
    with user_errors():
        check_int(params["threads"], "threads", minimum=1)
        torch.set_num_threads(int(params["threads"]))
        src = Path(to_absolute_path(str(params["store"])))
        dst = Path(to_absolute_path(str(params["out_dir"])))
        meta_path = src / "meta.json"
        if not meta_path.is_file():
            raise RescoreError(f"store={src}: no meta.json (not a store written by tools/generate.py)")
        meta = json.loads(meta_path.read_text())
        cap = params.get("captioner") or meta.get("captioner")
        if not cap:
            raise RescoreError(f"store={src}: its meta.json records no captioner; pass captioner=...")
        device, allow = str(params["device"]), bool(params["allow_download"])
        bundle = build_captioner_bundle(cap, device, allow)
        scorer = build_scorer(params["generator"]["scorer"], bundle, device, allow)
        nouns = meta.get("nouns") or {}
        pipeline = PseudoLabelPipeline(None, SimpleNamespace(mean=tuple(bundle.mean), image_size=bundle.image_size),
                                       scorer, build_noun_extractor(nouns.get("nouns", "auto"),
                                                                    bool(nouns.get("keep_modifiers", True))),
                                       score_transform=params["generator"]["scorer"]["score_transform"])
        image_dir = to_absolute_path(str(params["image_dir"])) if params.get("image_dir") else None
        counts = rescore_store(src, dst, pipeline, scorer_cfg=params["generator"]["scorer"], image_dir=image_dir,
                               progress=bool(params["progress"]))
    print(f"rescored {counts['images']} images ({counts['candidates']} candidates; {counts['skipped_done']} already "
          f"done) into {dst}")


if __name__ == "__main__":
    main()
