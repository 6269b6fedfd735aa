"""The one dataset format module: REFER layout reading/writing, masks, atomic IO and errors."""

from .errors import EmptyMaskError, GeometryError, PseudoRISError, ReferDataError, UnknownDatasetError
from .masks import decode_segmentation, mask_area, mask_to_bbox, mask_to_rle, refer_segmentation, rle_to_mask
from .refer import DATASETS, ReferDataset, ReferSample, load_rgb, make_sentence, write_refer_dataset

__all__ = [
    "DATASETS", "EmptyMaskError", "GeometryError", "PseudoRISError", "ReferDataError", "ReferDataset", "ReferSample",
    "UnknownDatasetError", "decode_segmentation", "load_rgb", "make_sentence", "mask_area", "mask_to_bbox",
    "mask_to_rle", "refer_segmentation", "rle_to_mask", "write_refer_dataset",
]
