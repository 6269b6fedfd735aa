"""Evaluation of pseudo labels against SynthRef's ground truth, and the reproduction's tables and plots.

    from pseudo_ris.evaluation import GroundTruth, store_quality, dataset_quality, format_quality
"""

from pseudo_ris.evaluation.quality import (MATCH_IOU, VARIANTS, GroundTruth, QualityError, Variant, dataset_quality,
                                           format_quality, is_referential_label, match_image,
                                           setting_group, store_quality, variant_rows, write_quality)

__all__ = ["MATCH_IOU", "VARIANTS", "GroundTruth", "QualityError", "Variant", "dataset_quality", "format_quality",
           "is_referential_label", "match_image", "setting_group", "store_quality", "variant_rows",
           "write_quality"]
