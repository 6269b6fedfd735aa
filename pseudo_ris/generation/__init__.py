"""Pseudo-label generation: per-image pipeline, resumable candidate store, filtering into a REFER dataset, report.

    from pseudo_ris.generation import run            # config-driven (what tools/generate.py calls)
    from pseudo_ris.generation import PseudoLabelPipeline, CandidateStore, run_generation, filter_store
"""

from pseudo_ris.generation.pipeline import (CocaCaptioner, ImageItem, PseudoLabelPipeline, RunStats, image_seed,
                                            run_generation)
from pseudo_ris.generation.report import write_gallery
from pseudo_ris.generation.runner import run
from pseudo_ris.generation.sources import ImageSource, folder_source, refer_source, synthref_pool_source
from pseudo_ris.generation.store import CandidateStore, StoreError, load_all
from pseudo_ris.generation.writer import filter_candidates, filter_store

__all__ = ["CocaCaptioner", "ImageItem", "PseudoLabelPipeline", "RunStats", "image_seed", "run_generation",
           "write_gallery", "run", "ImageSource", "folder_source", "refer_source", "synthref_pool_source",
           "CandidateStore", "StoreError", "load_all", "filter_candidates", "filter_store"]
