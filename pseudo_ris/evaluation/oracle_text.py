"""Oracle-text upper bound: the same pseudo masks, with the expressions a perfect captioner would write.

A pseudo-label dataset can fall short of human labels for three reasons: its masks (SAM's, not the annotators'),
its text (the captioner's sentences and the filter's choice among them), or its size (how many images were
labelled). On SynthRef the ground truth of every pool image is known, so the text can be swapped for SynthRef's own
referring-expression grammar while the masks, the images and the ref count stay what the generator produced:

* each ref's mask is matched to the ground-truth object of its image with the highest IoU;
* matched (IoU >= ``match_iou``): its sentences become the grammar's expressions for that object (the same grammar
  and style that wrote the human labels, so they single the object out in the scene);
* unmatched: the ref is dropped (no sentence can be right about a mask that is not an object);
* matched but not describable in the style (rare: identical twins the style cannot separate): dropped too.

Training on the result measures what the masks and the data size allow; the gap between it and the real pseudo
labels is what the captioner and the filter cost. The source dataset is only read; the new one is written
atomically by the shared REFER writer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pseudo_ris.data.refer import ReferDataset, make_sentence, write_refer_dataset
from pseudo_ris.evaluation.quality import MATCH_IOU, GroundTruth, QualityError, match_ref


@dataclass
class OracleTextSummary:
    """What the rewrite did (also recorded in the new dataset's ``dataset_info.json``)."""

    source: str
    refs_in: int
    refs_out: int
    dropped_unmatched: int
    dropped_not_describable: int
    sentences: int
    style: str
    seed: int
    match_iou: float


def write_oracle_text_dataset(pseudo_root: str | Path, name: str, truth: GroundTruth, out_root: str | Path,
                              out_name: str | None = None, *, style: str = "refcoco", seed: int = 0,
                              match_iou: float = MATCH_IOU) -> OracleTextSummary:
    """Write ``<out_root>/<out_name>``: the refs of ``<pseudo_root>/<name>`` whose mask matches a GT object, with
    the grammar's expressions of that object as sentences (see module docstring)."""
    from pseudo_ris.synthref.expressions import STYLES, generate_expressions

    if style not in STYLES:
        raise QualityError(f"style={style!r}: unknown expression style; known: {', '.join(STYLES)}")
    if not 0.0 < float(match_iou) <= 1.0:
        raise QualityError(f"match_iou={match_iou}: must be in (0, 1]")
    out_name = out_name or name
    src = ReferDataset(pseudo_root, name)
    if Path(out_root).expanduser().resolve() / out_name == src.dataset_dir.resolve():
        raise QualityError(f"{src.dataset_dir}: the oracle-text dataset would overwrite its source; "
                           "choose another out_root or out_name")
    rng = np.random.default_rng(seed)
    refs: list[dict] = []
    unmatched = not_describable = n_sent = 0
    for ref in sorted(src.refs, key=lambda r: int(r["ref_id"])):
        match, scene = match_ref(src, ref, truth)
        if match.gt_index is None or match.iou < match_iou:
            unmatched += 1
            continue
        texts = generate_expressions(scene.objects, match.gt_index, style, rng, scene.image_size)
        if not texts:
            not_describable += 1
            continue
        sentences = []
        for text in texts:
            n_sent += 1
            sentences.append({**make_sentence(n_sent, text), "oracle_iou": round(match.iou, 4)})
        refs.append({**ref, "sentences": sentences, "sent_ids": [s["sent_id"] for s in sentences]})
    if not refs:
        raise QualityError(f"{src.refs_path}: no ref's mask matches a ground-truth object at IoU >= {match_iou}")
    kept_anns = {int(r["ann_id"]) for r in refs}
    kept_images = {int(r["image_id"]) for r in refs}
    summary = OracleTextSummary(str(src.dataset_dir), len(src.refs), len(refs), unmatched, not_describable,
                                n_sent, style, int(seed), float(match_iou))
    info = {k: v for k, v in src.info.items() if k not in ("name", "split_by", "image_dir")}
    write_refer_dataset(out_root, out_name, split_by=src.split_by,
                        images=[src.images[i] for i in sorted(kept_images)],
                        annotations=[src.anns[a] for a in sorted(kept_anns)],
                        categories=list(src.categories.values()), refs=refs, image_dir=str(src.image_dir.resolve()),
                        extra_info={**info, "oracle_text": asdict(summary)})
    return summary
