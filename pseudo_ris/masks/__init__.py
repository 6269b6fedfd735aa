"""Object masks for pseudo-labelling: SAM builders (`sam`) and mask sources with object-level selection (`source`)."""

from pseudo_ris.masks.sam import (SAM_CONFIGS, SamCheckpointError, SamConfig, build_sam, sam_from_config,
                                  sam_model_registry, save_sam_checkpoint)
from pseudo_ris.masks.source import (ExternalMaskSource, GtMaskSource, MaskSourceError, ObjectMask, SamMaskSource,
                                     SelectionConfig, build_mask_source, load_detections, select_objects)

__all__ = ["SAM_CONFIGS", "SamCheckpointError", "SamConfig", "build_sam", "sam_from_config", "sam_model_registry",
           "save_sam_checkpoint", "ExternalMaskSource", "GtMaskSource", "MaskSourceError", "ObjectMask",
           "SamMaskSource", "SelectionConfig", "build_mask_source", "load_detections", "select_objects"]
