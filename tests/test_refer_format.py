"""Our REFER files are read by the official REFER ``getMask``, and our reader reads every COCO segmentation form.

``refer_get_mask`` below is written from the REFER API's documented behaviour (lichengunc/refer, ``getMask``): a
segmentation whose first element is a list is a polygon list decoded with ``frPyObjects``; anything else is handed
to ``mask.decode`` as is; the per-part masks are summed into a uint8 map. It shares no code with our reader.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from conftest import uncompressed_rle
from pseudo_ris.data import GeometryError, ReferDataError, ReferDataset, make_sentence, write_refer_dataset
from pseudo_ris.synthref import build_synthref


def refer_get_mask(ann: dict, image: dict) -> np.ndarray:
    """REFER's getMask: uint8 sum of the decoded parts (polygons via frPyObjects, RLE lists as they are)."""
    seg = ann["segmentation"]
    if type(seg[0]) == list:  # noqa: E721 - REFER tests the exact type
        rle = mask_utils.frPyObjects(seg, image["height"], image["width"])
    else:
        rle = seg
    m = mask_utils.decode(rle)
    return np.sum(m, axis=2).astype(np.uint8)


def _raw(root: Path, name: str) -> tuple[list[dict], dict]:
    ds_dir = root / name
    refs_file = next(ds_dir.glob("refs(*).p"))
    refs = pickle.loads(refs_file.read_bytes())  # our own test file
    return refs, json.loads((ds_dir / "instances.json").read_text())


def _check_every_ref_decodes_like_refer(root: Path, name: str) -> int:
    refs, instances = _raw(root, name)
    anns = {a["id"]: a for a in instances["annotations"]}
    images = {i["id"]: i for i in instances["images"]}
    ours = ReferDataset(root, name)
    for ref in refs:
        ann = anns[ref["ann_id"]]
        theirs = refer_get_mask(ann, images[ann["image_id"]])
        assert theirs.shape == (images[ann["image_id"]]["height"], images[ann["image_id"]]["width"])
        assert np.array_equal(theirs > 0, ours.ref_mask(ref["ref_id"])), (name, ref["ref_id"])
    return len(refs)


@pytest.fixture(scope="module")
def synthref_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthref_fmt")
    build_synthref(root, seed=0, num_images=12, pool_images=3, progress=False)
    return root


def test_every_synthref_ref_decodes_with_refer_get_mask(synthref_root):
    counted = {name: _check_every_ref_decodes_like_refer(synthref_root, name)
               for name in ("synthref", "synthref+", "synthrefg", "synthref_pool")}
    assert all(n > 0 for n in counted.values()), counted


def test_pseudo_writer_output_decodes_with_refer_get_mask(synthref_root, tmp_path):
    """The generation writer's records (masks from the candidate store's RLEs), streamed as filter_store does."""
    from pseudo_ris.data.masks import mask_to_bbox, mask_to_rle
    from pseudo_ris.data.refer_stream import ReferStreamWriter
    from pseudo_ris.generation.writer import DEFAULT_CATEGORY, _Ids, image_records

    pool = ReferDataset(synthref_root, "synthref_pool")
    writer = ReferStreamWriter(tmp_path, "pseudo", split_by="pseudo", categories=[DEFAULT_CATEGORY],
                               image_dir=str(pool.image_dir))
    ids, n_masks = _Ids(), 0
    for image_id in sorted(pool.images)[:2]:
        image = pool.images[image_id]
        masks = [pool.ann_mask(a["id"]) for a in pool.anns_by_image[image_id]]
        key = f"img{image_id}"
        img = {"key": key, "image_id": image_id, "file_name": image["file_name"], "status": "ok",
               "height": image["height"], "width": image["width"],
               "masks": [{"index": i, "rle": mask_to_rle(m), "area": int(m.sum()), "bbox": mask_to_bbox(m),
                          "score": 1.0, "source": "gt"} for i, m in enumerate(masks)]}
        rows = [{"key": key, "image_id": image_id, "mask_index": i, "cand_index": 0, "kept": True, "doc": 1.5,
                 "correctness": 0.3, "text": f"object {i}", "setting": 0, "view": 0} for i in range(len(masks))]
        writer.add(*image_records(img, rows, [DEFAULT_CATEGORY], ids))
        n_masks += len(masks)
    writer.close()
    assert _check_every_ref_decodes_like_refer(tmp_path, "pseudo") == n_masks > 0


@pytest.mark.slow
def test_every_generated_pseudo_ref_decodes_with_refer_get_mask(synthref_root, tmp_path):
    from hydra import compose, initialize_config_dir

    from pseudo_ris.generation import runner

    conf = Path(__file__).resolve().parents[1] / "conf"
    overrides = [f"out_dir={tmp_path / 'gen'}", f"data_root={synthref_root}", "masks=gt", "max_images=2",
                 "decoding.settings=[{kind: beam, value: 2}]", "decoding.max_len=6", "decoding.min_len=2",
                 "progress=false", "report.max_images=0", "filter.fallback=random"]
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = runner._plain(compose("generate", overrides=overrides))
    runner.run(cfg)
    assert _check_every_ref_decodes_like_refer(tmp_path / "gen", "pseudo") > 0


def _tiny_dataset(tmp_path: Path, segmentation, *, size=(10, 12), write_raw: bool = True) -> Path:
    """One image, one annotation with ``segmentation`` written as is (raw files, not through our writer)."""
    h, w = size
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(root / "images" / "a.png")
    ds_dir = root / "tiny"
    ds_dir.mkdir(exist_ok=True)
    instances = {"images": [{"id": 1, "file_name": "a.png", "height": h, "width": w}],
                 "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "segmentation": segmentation,
                                  "area": 1.0, "bbox": [0, 0, 1, 1], "iscrowd": 0}],
                 "categories": [{"id": 1, "name": "thing"}]}
    refs = [{"ref_id": 3, "ann_id": 5, "image_id": 1, "split": "val", "sent_ids": [0],
             "sentences": [make_sentence(0, "the thing")]}]
    (ds_dir / "instances.json").write_text(json.dumps(instances))
    (ds_dir / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    return root


def _rle(mask: np.ndarray, as_str: bool = True) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode() if as_str else rle["counts"]}


def _box(h, w, y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_reader_accepts_every_coco_form_and_unions_overlaps(tmp_path):
    a, b = _box(10, 12, 1, 6, 1, 6), _box(10, 12, 4, 9, 4, 10)  # overlapping at rows 4-5, cols 4-5
    union = a | b
    forms = {
        "bare compressed RLE (our old files)": (_rle(a), a),
        "bare uncompressed RLE (iscrowd)": (uncompressed_rle(a), a),
        "list of one RLE (REFER form)": ([_rle(a)], a),
        "list of two overlapping RLEs": ([_rle(a), _rle(b)], union),
        "list of uncompressed RLEs": ([uncompressed_rle(a), uncompressed_rle(b)], union),
    }
    for what, (seg, expected) in forms.items():
        ds = ReferDataset(_tiny_dataset(tmp_path / what.replace(" ", "_"), seg), "tiny")
        assert np.array_equal(ds.ann_mask(5), expected), what
    # overlapping polygons: REFER sums them (2 in the overlap); we keep the union, i.e. REFER's sum > 0
    polys = [[1, 1, 7, 1, 7, 7, 1, 7], [4, 4, 11, 4, 11, 9, 4, 9]]
    root = _tiny_dataset(tmp_path / "polys", polys)
    refs, instances = _raw(root, "tiny")
    theirs = refer_get_mask(instances["annotations"][0], instances["images"][0])
    assert theirs.max() == 2  # the overlap is counted twice by REFER
    assert np.array_equal(ReferDataset(root, "tiny").ann_mask(5), theirs > 0)


def test_old_bare_rle_files_fail_in_refer_but_our_writer_fixes_them(tmp_path):
    a = _box(10, 12, 2, 8, 3, 9)
    root = _tiny_dataset(tmp_path / "old", _rle(a))
    refs, instances = _raw(root, "tiny")
    with pytest.raises(KeyError):  # the failure the official getMask hits on a bare RLE dict
        refer_get_mask(instances["annotations"][0], instances["images"][0])
    old = ReferDataset(root, "tiny")  # ... which our reader still reads (caches written before the fix)
    write_refer_dataset(tmp_path / "new", "tiny", split_by="unc", images=list(old.images.values()),
                        annotations=list(old.anns.values()), categories=list(old.categories.values()),
                        refs=old.refs, image_dir=str(root / "images"))
    refs, instances = _raw(tmp_path / "new", "tiny")
    seg = instances["annotations"][0]["segmentation"]
    assert isinstance(seg, list) and len(seg) == 1 and isinstance(seg[0]["counts"], str)
    assert np.array_equal(refer_get_mask(instances["annotations"][0], instances["images"][0]) > 0, a)
    assert np.array_equal(ReferDataset(tmp_path / "new", "tiny").ann_mask(5), a)


def _edit(root: Path, fn) -> None:
    path = root / "tiny" / "instances.json"
    instances = json.loads(path.read_text())
    fn(instances)
    path.write_text(json.dumps(instances))


def test_geometry_errors_name_the_annotation_and_file(tmp_path):
    small = _rle(_box(6, 6, 1, 3, 1, 3))  # RLE of 6x6 on a 10x12 image
    root = _tiny_dataset(tmp_path / "size", small)
    with pytest.raises(GeometryError, match=r"annotation 5 \(image 1, a.png\) in .*instances.json: RLE size 6x6 "
                                            r"differs from its image's 10x12"):
        ReferDataset(root, "tiny")
    root = _tiny_dataset(tmp_path / "odd", [[1, 1, 7, 1, 7, 7, 1]])
    with pytest.raises(GeometryError, match="annotation 5 .*odd number of coordinates"):
        ReferDataset(root, "tiny")
    root = _tiny_dataset(tmp_path / "short", [[1, 1, 7, 1]])
    with pytest.raises(GeometryError, match="annotation 5 .*no polygon has 3 or more points"):
        ReferDataset(root, "tiny")
    # a fragment of fewer than 3 points next to a real polygon is skipped, as REFER's frPoly draws nothing there
    root = _tiny_dataset(tmp_path / "frag", [[1, 1, 7, 1, 7, 7, 1, 7], [2, 2, 3, 3]])
    assert ReferDataset(root, "tiny").ann_mask(5).sum() > 0

    root = _tiny_dataset(tmp_path / "other_image", [[1, 1, 7, 1, 7, 7, 1, 7]])
    _edit(root, lambda inst: inst["images"].append({"id": 2, "file_name": "b.png", "height": 10, "width": 12})
          or inst["annotations"][0].update(image_id=2))
    with pytest.raises(GeometryError, match=r"ref 3 in .*refs\(unc\).p is on image 1 but its annotation 5 is on "
                                            r"image 2"):
        ReferDataset(root, "tiny")
    root = _tiny_dataset(tmp_path / "no_image", [[1, 1, 7, 1, 7, 7, 1, 7]])
    _edit(root, lambda inst: inst["annotations"].append({**inst["annotations"][0], "id": 6, "image_id": 9}))
    with pytest.raises(GeometryError, match="annotation 6 in .*instances.json is on image 9, which is not in"):
        ReferDataset(root, "tiny")


def test_missing_image_file_found_before_training(tmp_path):
    root = _tiny_dataset(tmp_path / "img", [[1, 1, 7, 1, 7, 7, 1, 7]])
    (root / "images" / "a.png").unlink()
    ds = ReferDataset(root, "tiny", image_dir="images")
    assert ds.missing_image_files() == [root / "images" / "a.png"]
    with pytest.raises(ReferDataError, match=r"image file .*a.png of tiny not found"):
        ds.check_image_files()


def test_writer_refuses_a_mask_of_the_wrong_size(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "height": 10, "width": 12}]
    anns = [{"id": 5, "image_id": 1, "category_id": 1, "segmentation": _rle(_box(6, 6, 1, 3, 1, 3))}]
    refs = [{"ref_id": 3, "ann_id": 5, "image_id": 1, "split": "train", "sent_ids": [0],
             "sentences": [make_sentence(0, "x")]}]
    with pytest.raises(GeometryError, match="annotation 5 .*RLE size 6x6"):
        write_refer_dataset(tmp_path, "bad", split_by="pseudo", images=images, annotations=anns,
                            categories=[], refs=refs)
    assert not (tmp_path / "bad").exists()


def test_data_module_finds_a_missing_image_before_training(tiny_ris_data):
    from ris_models.datamodule import RISDataModule

    kwargs = dict(input_size=32, image_mean=(0.5,) * 3, image_std=(0.5,) * 3)
    image = tiny_ris_data["data_root"] / "images" / "tiny" / "0003.png"  # a train image (ids 0..9 are train)
    image.unlink()
    dm = RISDataModule(tiny_ris_data["data_root"], tiny_ris_data["dataset"], mode="human", **kwargs)
    with pytest.raises(ReferDataError, match=r"image file .*0003.png of tinyref not found"):
        dm.train_dataset()
    pseudo = RISDataModule(tiny_ris_data["data_root"], tiny_ris_data["dataset"], mode="pseudo",
                           pseudo_root=tiny_ris_data["pseudo_root"], pseudo_name=tiny_ris_data["pseudo_name"], **kwargs)
    with pytest.raises(ReferDataError, match=r"image file .*0003.png of tinyref_pseudo not found"):
        pseudo.train_dataset()
    assert len(dm.eval_dataset("val")) > 0  # other splits do not need that image
