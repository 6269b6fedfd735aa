"""SynthRef: the procedural RefCOCO-format dataset that the framework runs on by default.

Entry points: ``render_scene`` (one scene), ``build_synthref`` (write all datasets), ``ensure_synthref``
(cached build keyed by the config), ``ground_expression`` / ``is_referential`` (the grounding oracle).
"""

from pseudo_ris.synthref.build import (BUILD_MARKER, LABELLED_DATASETS, POOL_DATASET, SynthRefError, build_synthref,
                                       ensure_synthref, read_build_info)
from pseudo_ris.synthref.config import GENERATOR_VERSION, SynthRefConfig
from pseudo_ris.synthref.expressions import generate_expressions
from pseudo_ris.synthref.oracle import ground_expression, is_referential, objects_from_annotations, parse_expression
from pseudo_ris.synthref.scene import Scene, SceneConfig, SceneObject, render_scene

__all__ = ["BUILD_MARKER", "GENERATOR_VERSION", "LABELLED_DATASETS", "POOL_DATASET", "Scene", "SceneConfig",
           "SceneObject", "SynthRefConfig", "SynthRefError", "build_synthref", "ensure_synthref",
           "generate_expressions", "ground_expression", "is_referential", "objects_from_annotations",
           "parse_expression", "read_build_info", "render_scene"]
