"""Streaming merge and filter of the candidate store: bounded memory, same result as the in-memory path, shard
checks (missing / unfinished / duplicated / foreign), stale temporary files, the streamed REFER writer."""

from __future__ import annotations

import json
import math
import pickle
import tracemalloc
from pathlib import Path

import pytest

from pseudo_ris.data.refer import ReferDataset, write_refer_dataset
from pseudo_ris.data.refer_stream import ReferStreamWriter
from pseudo_ris.filtering.doc import FilterPolicy
from pseudo_ris.generation import writer
from pseudo_ris.generation.store import CandidateStore, StoreError, StoreIndex, load_all
from pseudo_ris.generation.synthetic import write_synthetic_store

POLICY = FilterPolicy(threshold=1.0, score_transform="logit")


def _filter(store: Path, **kw) -> writer.FilterResult:
    return writer.filter_store(store, POLICY, dataset_root=store / "out", dataset_name="pseudo", image_dir=store, **kw)


def _peak(store: Path, **kw) -> int:
    tracemalloc.start()
    try:
        _filter(store, **kw)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_merge_memory_does_not_grow_with_the_store(tmp_path):
    small, large = tmp_path / "small", tmp_path / "large"
    write_synthetic_store(small, 60, masks_per_image=4, candidates_per_mask=10, num_shards=2, height=48, width=64)
    write_synthetic_store(large, 480, masks_per_image=4, candidates_per_mask=10, num_shards=2, height=48, width=64)
    _filter(small, num_shards=2)  # warm imports / caches
    peak_small, peak_large = _peak(small, num_shards=2), _peak(large, num_shards=2)
    # the in-memory merge of the large store holds 19,200 rows (~1.5 kB each as dicts): tens of MB
    images, cands = load_all(large)
    assert len(cands) == 480 * 40
    # 8x the images: the streaming peak grows only by the per-image index and the bounded median sketches
    # (< 3 MB); holding the extra 16,800 rows would add > 20 MB
    assert peak_large - peak_small < 3 * 2**20, (peak_small, peak_large)


def test_streaming_result_equals_in_memory_filter(tmp_path):
    store = tmp_path / "s"
    write_synthetic_store(store, 30, masks_per_image=3, candidates_per_mask=6, num_shards=3, height=40, width=50)
    res = _filter(store, num_shards=3, sample_images=5)
    images, cands = load_all(store)
    mem = writer.filter_candidates(images, cands, POLICY)
    for key in ("images", "masks", "candidates", "kept", "masks_kept", "mask_decisions", "median_doc"):
        assert res.summary[key] == mem.summary[key], key
    assert res.summary["geomean_doc"] == pytest.approx(mem.summary["geomean_doc"], rel=1e-12)
    # the geometric mean of the positive DoC values, computed here from the marked candidates
    docs = [r["doc"] for r in mem.candidates if r["doc"] is not None and math.isfinite(r["doc"]) and r["doc"] > 0]
    assert docs and mem.summary["geomean_doc"] == pytest.approx(math.exp(sum(map(math.log, docs)) / len(docs)))
    assert "mean_doc" not in mem.summary
    assert res.summary["by_setting_view"] == mem.summary["by_setting_view"]
    imgs, anns, cats, refs = writer.build_refer_records(mem)
    write_refer_dataset(tmp_path / "mem", "pseudo", split_by="pseudo", images=imgs, annotations=anns,
                        categories=cats, refs=refs, image_dir=str(store.resolve()))
    streamed, in_memory = store / "out" / "pseudo", tmp_path / "mem" / "pseudo"
    assert (streamed / "instances.json").read_bytes() == (in_memory / "instances.json").read_bytes()
    with open(streamed / "refs(pseudo).p", "rb") as a, open(in_memory / "refs(pseudo).p", "rb") as b:
        assert pickle.load(a) == pickle.load(b) == refs
    assert len(ReferDataset(store / "out", "pseudo", split_by="pseudo").refs) == res.summary["refs"] == len(refs)
    merged_lines = (store / "candidates.jsonl").read_text().splitlines()
    merged = [json.loads(x) for x in merged_lines]
    assert all(json.dumps(row) == line for row, line in zip(merged, merged_lines))  # byte for byte: json.dumps
    assert sorted(merged, key=lambda r: (r["key"], r["cand_index"])) == \
        sorted(mem.candidates, key=lambda r: (r["key"], r["cand_index"]))
    assert len(res.images) == 5 and {r["key"] for r in res.candidates} == {i["key"] for i in res.images}


def test_median_sketch_exact_then_bounded():
    sketch = writer.MedianSketch(exact_limit=5)
    for v in (5.0, 1.0, 3.0, 2.0):
        sketch.add(v)
    assert sketch.median() == 3.0  # upper median of 1 2 3 5
    values = [(-1) ** i * (i * 0.37 + 0.01) for i in range(1001)]  # mixed signs, spread over magnitudes
    for v in values[4:]:
        sketch.add(v)
    sketch.add(5.0), sketch.add(1.0), sketch.add(3.0), sketch.add(2.0)
    allv = sorted(values[4:] + [5.0, 1.0, 3.0, 2.0])
    exact = allv[len(allv) // 2]
    assert sketch.values is None  # switched to the histogram
    assert sketch.median() == pytest.approx(exact, rel=2 ** -11)


def test_missing_unfinished_duplicated_and_foreign_shards_are_refused(tmp_path):
    store = tmp_path / "s"
    write_synthetic_store(store, 8, masks_per_image=2, candidates_per_mask=2, num_shards=4, height=20, width=20)
    (store / "images.shard3of4.jsonl").unlink()
    (store / "candidates.shard3of4.jsonl").unlink()
    with pytest.raises(StoreError, match=r"missing shards \['shard3of4'\].*allow_partial=true"):
        _filter(store, num_shards=4)
    with pytest.raises(StoreError, match=r"unfinished shards shard0of4 \(2/3 images\)"):
        _filter(store, num_shards=4, expected=[3, 2, 2, 2], allow_partial=False)
    assert not (store / "out").exists() or not any((store / "out" / "pseudo").glob("refs*"))
    partial = _filter(store, num_shards=4, allow_partial=True)
    assert partial.summary["images"] == 6 and partial.summary["shards"]["missing"] == ["shard3of4"]
    # an image finished by two shards
    lines = (store / "images.shard0of4.jsonl").read_text().splitlines()
    with open(store / "images.shard1of4.jsonl", "a") as handle:
        handle.write(lines[0] + "\n")
    with pytest.raises(StoreError, match=r"1 images finished by more than one shard \(e.g. image 0 in "
                                         r"\['shard0of4', 'shard1of4'\]\)"):
        _filter(store, num_shards=4, allow_partial=True)
    with open(store / "images.shard1of4.jsonl", "w") as handle:
        handle.write("\n".join(l for l in (store / "images.shard1of4.jsonl").read_text().splitlines()[:-1]))
    (store / "images.shard0of2.jsonl").write_text("")
    with pytest.raises(StoreError, match=r"shard files of another layout \['shard0of2'\]"):
        _filter(store, num_shards=4, allow_partial=True)


def test_killed_merge_temporaries_are_removed_at_next_start(tmp_path):
    store = tmp_path / "s"
    write_synthetic_store(store, 3, masks_per_image=2, candidates_per_mask=2, height=20, width=20)
    orphans = [store / ".candidates.jsonl.abc123.tmp", store / ".images.jsonl.x.tmp",
               store / "out" / "pseudo" / ".instances.json.q.tmp", store / "out" / "pseudo" / ".refs(pseudo).p.z.tmp",
               store / ".candidates.shard0of1.jsonl.k.tmp"]
    (store / "out" / "pseudo").mkdir(parents=True)
    for path in orphans:
        path.write_text("x" * 1000)
    _filter(store, num_shards=1)
    assert not any(p.exists() for p in orphans[:4])
    assert orphans[4].exists()  # a shard's own temporary belongs to that shard's writer
    CandidateStore(store, 0, 1)  # ... which removes it when it opens the shard
    assert not orphans[4].exists()
    assert not list(store.rglob("*.tmp"))


def test_failed_merge_leaves_no_partial_files(tmp_path, monkeypatch):
    store = tmp_path / "s"
    write_synthetic_store(store, 4, masks_per_image=2, candidates_per_mask=2, height=20, width=20)
    calls = {"n": 0}
    real = writer.image_records

    def boom(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk full")
        return real(*a, **k)

    monkeypatch.setattr(writer, "image_records", boom)
    with pytest.raises(RuntimeError):
        _filter(store, num_shards=1)
    assert not list(store.rglob("*.tmp")) and not (store / "candidates.jsonl").exists()
    assert not list((store / "out" / "pseudo").glob("*.p"))


def test_stream_writer_pickle_loads_as_one_list(tmp_path):
    w = ReferStreamWriter(tmp_path, "d", split_by="pseudo", categories=[{"id": 1, "name": "o"}], refs_per_batch=2)
    refs = []
    for i in range(5):
        ref = {"ref_id": i + 1, "ann_id": i + 1, "image_id": 7, "file_name": "a.png", "split": "train",
               "category_id": 1, "sent_ids": [i + 1], "sentences": [{"sent_id": i + 1, "sent": "x", "raw": "x",
                                                                     "tokens": ["x"]}]}
        refs.append(ref)
        w.add([{"id": 7, "file_name": "a.png", "height": 4, "width": 4}],
              [{"id": i + 1, "image_id": 7, "category_id": 1, "segmentation": [[0, 0, 3, 0, 3, 3]]}], [ref])
    w.close()
    with open(tmp_path / "d" / "refs(pseudo).p", "rb") as handle:
        assert pickle.load(handle) == refs
    inst = json.loads((tmp_path / "d" / "instances.json").read_text())
    assert len(inst["images"]) == 5 and len(inst["annotations"]) == 5
    assert StoreIndex.build(tmp_path).entries == []


def test_synthetic_rows_are_canonical_json(tmp_path):
    write_synthetic_store(tmp_path, 3, masks_per_image=2, candidates_per_mask=3, num_shards=2, height=20, width=30)
    lines = [line for p in sorted(tmp_path.glob("*.jsonl")) for line in p.read_text().splitlines()]
    assert len(lines) == 3 + 3 * 2 * 3
    assert all(json.dumps(json.loads(line)) == line for line in lines)


def test_dumps_updated_reuses_the_stored_text_and_equals_json_dumps():
    from pseudo_ris.generation.store import dumps_updated
    old = {"mask_rle": {"size": [2, 3], "counts": "a\\b"}, "M_all": [1.5, 2.25], "text": "the \"red\" dog",
           "doc": None, "correctness": 1.5, "key": "7"}
    line = json.dumps(old)
    new = {**old, "doc": 2.0, "correctness": 3.5}
    new["kept"], new["reason"] = True, "pass"
    assert dumps_updated(line, old, new) == json.dumps(new)
    assert dumps_updated(line, old, {**old, "kept": False}) == json.dumps({**old, "kept": False})
    assert dumps_updated(line, old, dict(old)) == line
    # the reused head is taken from the stored text: a marker placed there survives ...
    marked = line.replace("[1.5, 2.25]", "[1.50, 2.25]")
    out = dumps_updated(marked, old, new)
    assert "[1.50, 2.25]" in out and json.loads(out) == new and list(json.loads(out)) == list(new)
    # ... but only once the rest of the text is exactly the encoding of the replaced items
    for other in (line.replace('"doc": null', '"doc":null'), line.replace('"key": "7"', '"key": "8"'), None):
        assert dumps_updated(other, old, new) == json.dumps(new)
    assert dumps_updated(line, old, {"kept": True, **old}) == json.dumps({"kept": True, **old})  # other key order


def test_median_sketch_extend_equals_adds():
    values = [(-1) ** i * (i * 0.37 + 0.01) for i in range(3001)] + [0.0, -0.0, 1e-300, -5e300]
    one, many = writer.MedianSketch(exact_limit=1000), writer.MedianSketch(exact_limit=1000)
    for v in values:
        one.add(v)
    for i in range(0, len(values), 700):
        many.extend(values[i:i + 700])
    assert one.bins == many.bins and one.n == many.n == len(values) and one.median() == many.median()
    assert dict(one.bins) == dict(__import__("collections").Counter(writer.MedianSketch._bin(v) for v in values))
