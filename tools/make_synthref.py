"""Generate SynthRef (thin Hydra entry point; the work is in ``pseudo_ris.synthref``).

    python tools/make_synthref.py root=data seed=0 num_images=1500
    python tools/make_synthref.py root=~/.cache/pseudo_ris cached=true      # build into root/<config hash>/
    python tools/make_synthref.py preview=docs/synthref_examples.png        # example grid only
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from pseudo_ris.cli import user_errors
from pseudo_ris.synthref import SynthRefConfig, build_synthref, ensure_synthref, read_build_info
from pseudo_ris.synthref.build import is_complete
from pseudo_ris.synthref.preview import format_summary, save_preview
from pseudo_ris.validation import check_int, check_writable_dir


@hydra.main(version_base="1.3", config_path="../conf", config_name="synthref")
def main(cfg: DictConfig) -> None:
    with user_errors():
        gen_cfg = SynthRefConfig.from_cli(OmegaConf.to_container(cfg, resolve=True))
        if cfg.preview:
            preview = Path(to_absolute_path(str(cfg.preview)))
            check_writable_dir(preview.parent, "preview (its directory)")
            out = save_preview(preview, gen_cfg, count=int(cfg.preview_count))
            print(f"wrote {out}")
            return
        root = Path(to_absolute_path(str(Path(str(cfg.root)).expanduser())))
        check_writable_dir(root, "root")
        check_int(cfg.workers, "workers", minimum=1)
        start = time.perf_counter()
        reused = bool(cfg.cached) and is_complete(root / gen_cfg.cache_key())
        if cfg.cached:
            path = ensure_synthref(root, gen_cfg, progress=bool(cfg.progress), workers=int(cfg.workers))
        else:
            path = build_synthref(root, cfg=gen_cfg, progress=bool(cfg.progress), workers=int(cfg.workers))
    elapsed = time.perf_counter() - start
    info = read_build_info(path)
    verb = "reused (complete build found)" if reused else f"written in {elapsed:.1f} s"
    print(f"SynthRef at {path} (cache key {info['cache_key']}): {verb}")
    print(format_summary(info["summary"]))


if __name__ == "__main__":
    main()
