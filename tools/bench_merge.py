"""Benchmark: the streaming merge + DoC filter (``stage=filter``) on a synthetic store of any size.

    python tools/bench_merge.py images=100000            # the closing line: merge 100000 images: peak RSS <n> MB
    python tools/bench_merge.py images=10000,100000      # several sizes in one run (linear time?)
    python tools/bench_merge.py images=2000 baseline=true  # also the in-memory merge, side by side

For each size a store is written (``pseudo_ris.generation.synthetic``: the generator's row format, 44 candidates
per mask, 10 masks per image, 640x480 masks, 4 shards), then merged and filtered in a fresh child process (the
filter stage's code path: shard check, streaming index, DoC filter, REFER dataset, merged store) whose peak
resident memory (``ru_maxrss``) and CPU time (steady on a shared machine; wall time is printed too) are reported.
``baseline=true`` runs the in-memory path too (whole
store loaded, filtered and written at once) at each size for the memory ratio. Options: ``dir=`` (scratch folder,
default a temporary one under /tmp; the store is deleted after each size), ``shards=4``, ``masks=10``,
``candidates=44``, ``keep=false`` (keep the stores).
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pseudo_ris.kv_options import parse_key_values

ROOT = Path(__file__).resolve().parents[1]

_WORKER = r"""
import json, resource, sys, time
from pathlib import Path
mode, store = sys.argv[1], Path(sys.argv[2])
from pseudo_ris.filtering.doc import FilterPolicy
from pseudo_ris.generation import writer
rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
policy = FilterPolicy(threshold=1.0, score_transform="logit")
start, wall = time.process_time(), time.perf_counter()
if mode == "stream":
    res = writer.filter_store(store, policy, dataset_root=store / "out", dataset_name="pseudo", image_dir=store,
                              num_shards=int(sys.argv[3]))
    summary = res.summary
else:  # in memory: the whole store at once
    from pseudo_ris.data.refer import write_refer_dataset
    from pseudo_ris.generation.store import load_all
    images, cands = load_all(store)
    res = writer.filter_candidates(images, cands, policy)
    imgs, anns, cats, refs = writer.build_refer_records(res)
    write_refer_dataset(store / "out_mem", "pseudo", split_by="pseudo", images=imgs, annotations=anns,
                        categories=cats, refs=refs, image_dir=str(store))
    summary = {**res.summary, "refs": len(refs)}
seconds = time.process_time() - start
print(json.dumps({"seconds": seconds, "wall": time.perf_counter() - wall, "rss_imports_mb": rss_imports,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "candidates": summary["candidates"], "kept": summary["kept"], "refs": summary["refs"]}))
"""


def _parse(argv: list[str]) -> dict[str, str]:
    opts = parse_key_values(argv, {"images": "100000", "dir": "", "shards": "4", "masks": "10", "candidates": "44",
                                   "baseline": "false", "keep": "false"}, __doc__)
    return opts


def _worker(mode: str, store: Path, shards: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", _WORKER, mode, str(store), str(shards)], capture_output=True,
                          text=True, cwd=ROOT, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        raise SystemExit(f"{mode} merge failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    opts = _parse(sys.argv[1:])
    try:
        sizes = [int(x) for x in opts["images"].split(",")]
        shards, masks, cands = int(opts["shards"]), int(opts["masks"]), int(opts["candidates"])
    except ValueError:
        print("error: images=, shards=, masks=, candidates= take integers (images=10000,100000)", file=sys.stderr)
        raise SystemExit(2)
    from pseudo_ris.generation.synthetic import write_synthetic_store

    scratch = Path(opts["dir"] or tempfile.mkdtemp(prefix="bench_merge_"))
    print(f"synthetic store: {masks} masks per image, {cands} candidates per mask, 640x480 masks, {shards} shards; "
          f"scratch {scratch}", flush=True)
    results = []
    for n in sizes:
        store = scratch / f"store_{n}"
        if store.exists():
            shutil.rmtree(store)
        t0 = time.perf_counter()
        info = write_synthetic_store(store, n, masks_per_image=masks, candidates_per_mask=cands, num_shards=shards)
        build_s = time.perf_counter() - t0
        store_mb = _size_mb(store)
        print(f"  {n} images: store of {info['candidates']} candidate rows, {store_mb:.0f} MB, built in "
              f"{build_s:.1f} s", flush=True)
        stream = _worker("stream", store, shards)
        out_mb = _size_mb(store) - store_mb
        line = (f"  {n} images: streaming merge {stream['seconds']:.1f} CPU s ({stream['wall']:.1f} s wall) "
                f"({info['candidates'] / stream['seconds']:.0f} rows/s), peak RSS {stream['peak_rss_mb']:.0f} MB "
                f"(after imports {stream['rss_imports_mb']:.0f} MB), {stream['kept']} kept, {stream['refs']} refs, "
                f"{out_mb:.0f} MB written")
        mem = None
        if opts["baseline"] == "true":
            mem = _worker("memory", store, shards)
            line += (f"; in-memory merge {mem['seconds']:.1f} CPU s, peak RSS {mem['peak_rss_mb']:.0f} MB "
                     f"({mem['peak_rss_mb'] / stream['peak_rss_mb']:.1f}x the streaming peak)")
        print(line, flush=True)
        results.append((n, stream, mem))
        if opts["keep"] != "true":
            shutil.rmtree(store)
    if len(results) > 1:
        (n0, s0, _), (n1, s1, _) = results[0], results[-1]
        print(f"time ratio {n1}/{n0} images: {s1['seconds'] / s0['seconds']:.2f} (linear: {n1 / n0:.2f}); "
              f"peak RSS ratio {s1['peak_rss_mb'] / s0['peak_rss_mb']:.2f}")
    if not opts["dir"] and opts["keep"] != "true":
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"ru_maxrss of this driver: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    n, stream, _ = results[-1]
    print(f"merge {n} images: peak RSS {stream['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
