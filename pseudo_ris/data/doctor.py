"""Check a user's copy of RefCOCO / RefCOCO+ / RefCOCOg / VGPhraseCut and say exactly what is missing or wrong.

Every check reports instead of stopping at the first problem: layout (which file or folder is missing, where it was
expected), per-split ref counts against the published ones, image files present, geometry of every annotation
(the checks ``ReferDataset`` runs when it opens a dataset) and, optionally, that every referenced annotation
decodes to a non-empty mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import phrasecut
from .errors import ReferDataError
from .refer import DATASETS, ReferDataset

#: refs per split in the REFER releases (RefCOCO / RefCOCO+ by UNC, RefCOCOg by UMD)
PUBLISHED_REFS: dict[tuple[str, str], dict[str, int]] = {
    ("refcoco", "unc"): {"train": 42_404, "val": 3_811, "testA": 1_975, "testB": 1_810},
    ("refcoco+", "unc"): {"train": 42_278, "val": 3_805, "testA": 1_975, "testB": 1_798},
    ("refcocog", "umd"): {"train": 42_226, "val": 2_573, "test": 5_023},
}


@dataclass
class Report:
    """Lines of ``[status] text``; ``problems`` counts the lines that are not ``ok`` / ``info`` (indented lines
    detail the problem above them)."""

    lines: list[tuple[str, str]] = field(default_factory=list)

    def add(self, status: str, text: str) -> None:
        self.lines.append((status, text))

    @property
    def problems(self) -> int:
        return sum(status not in ("ok", "info") and not text.startswith("  ") for status, text in self.lines)

    def format(self) -> str:
        body = "\n".join(f"[{status}] {text}" for status, text in self.lines)
        verdict = ("all checks passed" if not self.problems else
                   f"{self.problems} problem(s) found")
        return f"{body}\n{verdict}"


def _listed(items: list, limit: int) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f" ... (+{len(items) - limit} more)" if len(items) > limit else "")


def _check_path(report: Report, path: Path, what: str, is_dir: bool = False) -> bool:
    ok = path.is_dir() if is_dir else path.is_file()
    report.add("ok" if ok else "missing", f"{what}: {path}" + ("" if ok else " not found"))
    return ok


def _refer_layout(report: Report, data_root: Path, dataset: str, split_by: str | None) -> tuple[bool, str | None]:
    spec = DATASETS.get(dataset)
    ds_dir = data_root / (spec.dirname if spec else dataset)
    if not _check_path(report, ds_dir, "dataset directory", is_dir=True):
        present = sorted(p.name for p in data_root.iterdir() if p.is_dir())
        report.add("info", f"directories under {data_root}: {present or 'none'}")
        return False, split_by
    split_by = split_by or (spec.split_by if spec else None)
    if split_by is None:
        found = sorted(p.name for p in ds_dir.glob("refs(*).p"))
        split_by = found[0][len("refs("):-len(").p")] if len(found) == 1 else None
    refs_ok = split_by is not None and _check_path(report, ds_dir / f"refs({split_by}).p", "refs file")
    if split_by is None:
        report.add("missing", f"refs file: cannot tell which refs(<split_by>).p to use in {ds_dir}; pass split_by")
    elif not refs_ok:
        report.add("info", f"refs files present: {sorted(p.name for p in ds_dir.glob('refs(*).p')) or 'none'}")
    inst_ok = _check_path(report, ds_dir / "instances.json", "instances file")
    if spec is not None:
        _check_path(report, data_root / spec.image_dir, "image directory", is_dir=True)
    return refs_ok and inst_ok, split_by


def _phrasecut_layout(report: Report, data_root: Path) -> list[str]:
    try:
        root = phrasecut.find_root(data_root)
    except ReferDataError as exc:
        report.add("missing", str(exc))
        return []
    report.add("ok", f"VGPhraseCut directory: {root}")
    if not any((root / f).is_file() for f in phrasecut.IMAGE_INFO_FILES):
        report.add("missing", f"image list: {root / phrasecut.IMAGE_INFO_FILES[0]} not found")
        return []
    report.add("ok", "image list: " + next(str(root / f) for f in phrasecut.IMAGE_INFO_FILES if (root / f).is_file()))
    _check_path(report, root / "images", "image directory", is_dir=True)
    present = [s for s in phrasecut.FILE_SPLITS if (root / f"refer_{s}.json").is_file()]
    absent = [s for s in phrasecut.FILE_SPLITS if s not in present]
    if absent:
        report.add("info" if present else "missing",
                   f"refer files not present for split(s) {absent} (expected {root}/refer_<split>.json)")
    return present


def _counts(report: Report, ds: ReferDataset, expected: dict[str, int] | None, label: str) -> None:
    found: dict[str, int] = {}
    for ref in ds.refs:
        found[ref["split"]] = found.get(ref["split"], 0) + 1
    if expected is None:
        report.add("info", f"refs per split: {found} (no published counts for {label})")
        return
    for split, count in expected.items():
        if split not in found:
            report.add("wrong", f"split {split}: no refs (published {label}: {count:,})")
        elif found[split] != count:
            report.add("wrong", f"split {split}: {found[split]:,} refs, published {label}: {count:,}")
        else:
            report.add("ok", f"split {split}: {count:,} refs as published")
    for split in sorted(set(found) - set(expected)):
        report.add("info", f"split {split}: {found[split]:,} refs (not a published split of {label})")


def _content(report: Report, ds: ReferDataset, decode: bool, limit: int) -> None:
    geometry = ds.geometry_problems()
    if geometry:
        report.add("wrong", f"{len(geometry)} annotation/ref geometry problem(s):")
        for line in geometry[:limit]:
            report.add("wrong", "  " + line)
        if len(geometry) > limit:
            report.add("wrong", f"  ... (+{len(geometry) - limit} more)")
    else:
        report.add("ok", "geometry: every annotation fits its image and its ref")
    missing = ds.missing_image_files()
    n_images = len({int(r["image_id"]) for r in ds.refs})
    if missing:
        report.add("missing", f"{len(missing):,} of {n_images:,} images not found in {ds.image_dir}: "
                              f"{_listed([p.name for p in missing], limit)}")
    else:
        report.add("ok", f"images: all {n_images:,} referenced images present in {ds.image_dir}")
    if not decode:
        return
    bad: list[str] = []
    for ann_id in sorted({int(r["ann_id"]) for r in ds.refs}):
        if ann_id not in ds.anns:
            continue
        try:
            ds.ann_mask(ann_id)
        except ReferDataError as exc:
            bad.append(f"{ann_id} ({exc})" if len(bad) < limit else str(ann_id))
    n_anns = len({int(r['ann_id']) for r in ds.refs})
    if bad:
        report.add("wrong", f"{len(bad):,} of {n_anns:,} referenced annotations do not decode to a mask: "
                            f"{_listed(bad, limit)}")
    else:
        report.add("ok", f"masks: all {n_anns:,} referenced annotations decode to non-empty masks")


def diagnose(data_root: str | Path, dataset: str, split_by: str | None = None, decode: bool = True,
             limit: int = 10) -> Report:
    """Run every check on ``<data_root>`` for ``dataset``; never raises on the user's data."""
    report = Report()
    data_root = Path(data_root).expanduser()
    if not _check_path(report, data_root, "data_root", is_dir=True):
        return report
    if dataset == phrasecut.NAME:
        splits = _phrasecut_layout(report, data_root)
        if not splits:
            return report
        wanted = [*splits, phrasecut.UNSEEN] if phrasecut.UNSEEN_OF in splits else splits
        load = lambda: phrasecut.load_phrasecut(data_root, wanted, check_geometry=False)  # noqa: E731
        expected = {s: phrasecut.PUBLISHED_TASKS[s] for s in splits}
        label = "VGPhraseCut v0"
    else:
        ok, split_by = _refer_layout(report, data_root, dataset, split_by)
        if not ok:
            return report
        load = lambda: ReferDataset(data_root, dataset, split_by=split_by, check_geometry=False)  # noqa: E731
        expected = PUBLISHED_REFS.get((dataset, split_by or ""))
        label = f"{dataset} ({split_by})"
    try:
        ds = load()
    except ReferDataError as exc:
        report.add("wrong", f"cannot read the dataset: {exc}")
        return report
    report.add("info", f"read {len(ds.refs):,} refs, {len(ds.anns):,} annotations, {len(ds.images):,} images")
    if dataset == phrasecut.NAME and phrasecut.UNSEEN in ds.splits:
        report.add("info", f"unseen (test tasks outside COCO's 80 categories): "
                           f"{len(ds.refs_in_split(phrasecut.UNSEEN)):,} refs")
    _counts(report, ds, expected, label)
    _content(report, ds, decode, limit)
    return report
