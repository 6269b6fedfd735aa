"""Geometry of the four crop views on constructed images, checked pixel by pixel at native size."""

import numpy as np
import pytest
import torch

from pseudo_ris.crops import enlarge_box, make_views, mask_box
from pseudo_ris.data.errors import EmptyMaskError

RED = np.array([255, 0, 0], np.uint8)
FILL = (0.25, 0.5, 0.75)


def _scene():
    img = np.zeros((40, 60, 3), np.uint8)
    img[:, :, 1] = 100  # green background everywhere
    img[5:25, 10:20] = RED  # object: x 10..19, y 5..24 (w 10, h 20)
    mask = np.zeros((40, 60), bool)
    mask[5:25, 10:20] = True
    return img, mask


def test_shape_range_and_view_count():
    img, mask = _scene()
    v = make_views(img, np.stack([mask, mask]), size=32, fill=FILL)
    assert v.shape == (2, 4, 3, 32, 32) and v.dtype == torch.float32
    assert v.min() >= 0 and v.max() <= 1


def test_masked_view_fills_outside_mask_and_pads_square():
    img, mask = _scene()
    lshape = mask.copy()
    lshape[5:15, 15:20] = False  # remove the top-right quarter of the object
    v = make_views(img, lshape[None], size=20, fill=FILL)[0]  # box is 10 x 20 -> square 20, no resize
    fill = torch.tensor(FILL).view(3, 1)
    # horizontal padding: 5 columns each side with the fill colour
    assert torch.allclose(v[0, :, :, :5].reshape(3, -1), fill.expand(3, 100))
    assert torch.allclose(v[0, :, :, 15:].reshape(3, -1), fill.expand(3, 100))
    # inside the box: mask pixels red, removed quarter filled with the mean colour (not the red image pixels)
    assert torch.allclose(v[0, :, 15:, 5:15], torch.tensor([1.0, 0, 0]).view(3, 1, 1).expand(3, 5, 10))
    assert torch.allclose(v[0, :, 0:10, 10:15], torch.tensor(FILL).view(3, 1, 1).expand(3, 10, 5))
    # plain 1.0 crop keeps the image pixels there (red) instead
    assert torch.allclose(v[1, :, 0:10, 10:15], torch.tensor([1.0, 0, 0]).view(3, 1, 1).expand(3, 10, 5))


def test_margin_crops_enlarge_about_centre():
    img, mask = _scene()
    assert mask_box(mask) == (10, 5, 20, 25)
    assert enlarge_box((10, 5, 20, 25), 1.2, 60, 40) == (9, 3, 21, 27)  # 12 x 24
    v = make_views(img, mask[None], size=24, margins=(1.2,), fill=FILL)[0, 1]  # 12 x 24 -> pad to 24, no resize
    # crop x 9..20 sits at columns 6..17; its first and last columns are background (green), middle red
    green = torch.tensor([0, 100 / 255, 0]).view(3, 1)
    assert torch.allclose(v[:, :, 6], green.expand(3, 24))
    assert torch.allclose(v[:, :, 17], green.expand(3, 24))
    assert torch.allclose(v[:, 2:22, 7:17].reshape(3, -1), torch.tensor([1.0, 0, 0]).view(3, 1).expand(3, 200))
    assert torch.allclose(v[:, 0:2, 7:17].reshape(3, -1), green.expand(3, 20))  # 2 rows above the object
    assert torch.allclose(v[:, :, :6].reshape(3, -1), torch.tensor(FILL).view(3, 1).expand(3, 144))


def test_margin_is_clipped_to_image():
    img = np.zeros((30, 30, 3), np.uint8)
    mask = np.zeros((30, 30), bool)
    mask[0:10, 0:10] = True  # object in the corner
    assert enlarge_box((0, 0, 10, 10), 1.2, 30, 30) == (0, 0, 11, 11)
    v = make_views(img, mask[None], size=11, margins=(1.2,), fill=FILL)[0, 1]
    assert torch.allclose(v, torch.zeros_like(v))  # clipped crop is all image (black), no fill at all


def test_resize_preserves_content_and_empty_mask_raises():
    img, mask = _scene()
    v = make_views(img, mask[None], size=64, fill=FILL)[0, 0]
    assert torch.allclose(v[:, 32, 32], torch.tensor([1.0, 0, 0]), atol=1e-4)  # centre of the object
    assert torch.allclose(v[:, 32, 2], torch.tensor(FILL), atol=1e-4)  # left padding
    with pytest.raises(EmptyMaskError):
        make_views(img, np.zeros((1, 40, 60), bool), size=16)
    with pytest.raises(ValueError):
        make_views(img, np.zeros((1, 10, 10), bool), size=16)
