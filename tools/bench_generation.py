"""Benchmark: pseudo-label generation for one COCO-size image with real-size models, ours vs the official algorithm.

    python tools/bench_generation.py                       # CPU, N = 10 and 30 masks
    python tools/bench_generation.py device=cuda precision=bf16 batch=32768   # on a GPU

One 640x480 image; models with their real architectures and random weights (nothing is downloaded): SAM ViT-H with
its automatic mask generator (32 x 32 points, batches of 64), CoCa ViT-L/14 with the paper's 4 views x (1 beam
search of 6 beams + 10 distinctive samples), CLIP RN50 DoC scoring. N masks are drawn as boxes (a random SAM gives
no meaningful masks; what the later stages cost depends only on N).

Both columns do the same work per stage; they differ where the official code differs:
* ours: captions decoded with the key-value-cached stepper, all masks x views x settings of the image in chunks of
  ``batch`` (row, image) pairs (the whole image when memory allows), the contrast term projected once per row;
* reference (official algorithm): batch 1 per view and setting (the N masks of one view under one setting), no
  cache: every step re-runs the text tower and the decoder on the full prefix for each of the N x N (row, image)
  pairs (and the beams); same SAM, encoders and scorer.

Real-size models are slow on a CPU, so stages are timed on a fraction and scaled, and the output says which:
SAM's image encoder on one windowed and one global-attention block (x 28 and x 4, plus patch embedding and neck),
the mask decoder on one batch of 64 points (x 16); CoCa's encoder on one mask's 4 views (x N); decoding steps at
prefix lengths 1 and 27 on one chunk (ours) or one row (reference), a line through them summed over the 28 steps
and scaled by rows; CLIP's text tower on 32 texts (x the 88 N texts of the image). Every time is this process's
CPU time (``clock=cpu``, robust on a shared machine; use ``clock=wall`` on a GPU). Peak memory per stage: the
process's peak resident set (VmHWM, reset before each stage) on CPU, ``max_memory_allocated`` on a GPU.
Options: ``masks=10,30``, ``device=cpu|cuda``, ``precision=fp32|bf16|fp16`` (autocast, GPU), ``batch=1024``
(pairs per decoding chunk), ``threads=1``, ``clock=cpu|wall``.
The closing line: ``speedup real-size generation: <x>x`` (N = the first value of ``masks``).
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any, Callable

from pseudo_ris.kv_options import bench_device, parse_key_values

OPTIONS = {"masks": "10,30", "device": "cpu", "precision": "fp32", "batch": "1024", "threads": "1", "clock": "cpu"}
MAX_LEN = 30
STEPS = MAX_LEN - 2  # decoder steps at prefix lengths 1..28; the 29th token is the forced EOS
VIEWS, SETTINGS, BEAMS, POINTS = 4, 10, 6, 32 * 32


def _parse(argv: list[str]) -> dict[str, str]:
    opts = parse_key_values(argv, OPTIONS, __doc__)
    if opts["precision"] not in ("fp32", "bf16", "fp16") or opts["clock"] not in ("cpu", "wall"):
        print("error: precision=fp32|bf16|fp16, clock=cpu|wall", file=sys.stderr)
        raise SystemExit(2)
    return opts


class Meter:
    """CPU or wall clock, and the peak memory of a stage (VmHWM reset through /proc on CPU; CUDA peak on a GPU)."""

    def __init__(self, device: Any, clock: str) -> None:
        self.device = device
        self.clock = time.process_time if clock == "cpu" else time.perf_counter

    def sync(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize()

    def time(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        self.sync()
        start = self.clock()
        out = fn()
        self.sync()
        return self.clock() - start, out

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
        else:
            with contextlib.suppress(OSError):
                with open("/proc/self/clear_refs", "w") as handle:
                    handle.write("5")

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            import torch

            return torch.cuda.max_memory_allocated() / 2**20
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")


def _line_sum(t_first: float, t_last: float, first: int = 1, last: int = 27) -> float:
    """Sum over prefix lengths 1..28 of a line through (first, t_first) and (last, t_last)."""
    slope = (t_last - t_first) / (last - first)
    return sum(max(min(t_first, t_last), t_first + slope * (t - first)) for t in range(1, STEPS + 1))


def bench_sam(meter: Meter, device: Any, autocast: Callable) -> dict[str, float]:
    import numpy as np
    import torch
    from segment_anything import SamAutomaticMaskGenerator, sam_model_registry

    torch.manual_seed(0)
    sam = sam_model_registry["vit_h"](checkpoint=None).to(device).eval()
    enc = sam.image_encoder
    meter.reset_peak()
    x = torch.randn(1, 3, 1024, 1024, device=device)
    with torch.inference_mode(), autocast():
        t_patch, tokens = meter.time(lambda: enc.patch_embed(x) + enc.pos_embed)
        windowed = [i for i, b in enumerate(enc.blocks) if b.window_size > 0]
        global_ = [i for i, b in enumerate(enc.blocks) if b.window_size == 0]
        t_win, _ = meter.time(lambda: enc.blocks[windowed[0]](tokens))
        t_glob, out = meter.time(lambda: enc.blocks[global_[0]](tokens))
        t_neck, feats = meter.time(lambda: enc.neck(out.permute(0, 3, 1, 2)))
    t_encoder = t_patch + len(windowed) * t_win + len(global_) * t_glob + t_neck
    gen = SamAutomaticMaskGenerator(sam, points_per_side=32, points_per_batch=64, pred_iou_thresh=0.5)
    pred = gen.predictor
    pred.features, pred.is_image_set = feats, True
    pred.original_size, pred.input_size = (480, 640), (768, 1024)
    points = gen.point_grids[0][:64] * np.array([[640, 480]])
    with torch.inference_mode(), autocast():
        t_batch, _ = meter.time(lambda: gen._process_batch(points, (480, 640), [0, 0, 640, 480], (480, 640)))
    peak = meter.peak_mb()
    del sam, gen, pred, feats
    return {"seconds": t_encoder + POINTS / 64 * t_batch, "encoder": t_encoder, "decoder": POINTS / 64 * t_batch,
            "peak_mb": peak}


def bench_coca(meter: Meter, device: Any, autocast: Callable, ns: list[int], batch: int) -> dict[int, dict]:
    import numpy as np
    import torch

    from pseudo_ris.captioning import load_coca, next_token_probs
    from pseudo_ris.captioning.decoding import sample_categorical
    from pseudo_ris.captioning.steppers import CachedCocaStepper, ReferenceCocaStepper, precompute_cross_kv
    from pseudo_ris.crops import make_views

    torch.manual_seed(0)
    bundle = load_coca("coca_ViT-L-14", device=device)
    tok = bundle.tokenizer
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    out: dict[int, dict] = {}
    meter.reset_peak()
    # encoder: one mask's 4 views, scaled by N (the official code encodes the same crops)
    masks1 = np.zeros((1, 480, 640), dtype=bool)
    masks1[0, 100:300, 200:400] = True
    t_crops, views = meter.time(lambda: make_views(image, masks1, bundle.image_size, fill=bundle.mean))
    with torch.inference_mode(), autocast():
        t_enc, (lat, emb) = meter.time(lambda: bundle.encode_images(bundle.preprocess(views[0].to(device))))
    for n in ns:
        res: dict[str, Any] = {"encode": n * (t_enc + t_crops)}
        g = n  # images of one view group
        emb_g = emb[:1].expand(g, -1, -1).contiguous() + 0.01 * torch.randn(g, *emb.shape[1:], device=device)
        lat_g = torch.nn.functional.normalize(torch.randn(g, lat.shape[1], device=device), dim=-1)
        sim, groups = lat_g @ lat_g.t(), torch.zeros(g, dtype=torch.long, device=device)
        rows_total = VIEWS * n * SETTINGS
        pairs_per_row = n if 2 <= n <= 30 else 1
        pairs_total = rows_total * pairs_per_row
        chunk_rows = max(1, min(n * SETTINGS, batch // pairs_per_row))  # a chunk holds rows of one view group
        own = torch.arange(chunk_rows, device=device) % g
        contrast = torch.ones(chunk_rows, dtype=torch.bool, device=device)
        top_k = torch.tensor([(5, 7, 9, 11, 13, 0, 0, 0, 0, 0)[i % SETTINGS] for i in range(chunk_rows)],
                             device=device)
        top_p = torch.tensor([(1, 1, 1, 1, 1, .4, .5, .6, .7, .8)[i % SETTINGS] for i in range(chunk_rows)],
                             device=device, dtype=torch.float32)
        meter.reset_peak()
        with torch.inference_mode(), autocast():
            t_kv, kv = meter.time(lambda: precompute_cross_kv(bundle.model, emb_g))
            step_times = []
            for t in (1, 27):
                stepper = CachedCocaStepper(bundle.model, emb_g, groups, sim, own, contrast, MAX_LEN - 1, cross_kv=kv)
                for cache in stepper.text_cache + stepper.dec_cache:
                    for c in cache:
                        c.zero_()
                stepper.t = t - 1
                tokens = torch.randint(0, tok.vocab_size, (chunk_rows,), device=device)

                def one_step():
                    z, z_dep = stepper.step(tokens)
                    probs = next_token_probs(z, z_dep, stepper.has_contrast, top_k=top_k, top_p=top_p,
                                             eos_id=tok.eot_id, prefix_len=t, min_len=5, max_len=MAX_LEN)
                    return sample_categorical(probs)

                step_times.append(meter.time(one_step)[0])
                del stepper
            # beam search: the 6 beams of one image, no contrast
            beam_times = []
            own_b = torch.zeros(BEAMS, dtype=torch.long, device=device)
            for t in (1, 27):
                stepper = CachedCocaStepper(bundle.model, emb_g[:1], groups[:1], sim[:1, :1], own_b,
                                            torch.zeros(BEAMS, dtype=torch.bool, device=device), MAX_LEN - 1)
                stepper.t = t - 1
                beam_times.append(meter.time(lambda: stepper.step(torch.zeros(BEAMS, dtype=torch.long,
                                                                              device=device)))[0])
                del stepper
        chunks = pairs_total / (chunk_rows * pairs_per_row)
        res["decode_ours"] = (VIEWS * t_kv + chunks * _line_sum(*step_times)
                              + VIEWS * n * _line_sum(*beam_times))
        res["chunk_pairs"] = chunk_rows * pairs_per_row
        res["peak_ours_mb"] = meter.peak_mb()
        # reference: one row (its N pairs) of one (view, setting) batch, full-prefix recomputation
        meter.reset_peak()
        ref_times, ref_beam = [], []
        with torch.inference_mode(), autocast():
            for t in (1, 27):
                ref = ReferenceCocaStepper(bundle.model, emb_g, groups, sim, own[:1], contrast[:1], MAX_LEN - 1)
                ref.prefix = torch.randint(0, tok.vocab_size, (1, t - 1), device=device)

                def ref_step():
                    z, z_dep = ref.step(torch.zeros(1, dtype=torch.long, device=device))
                    probs = next_token_probs(z, z_dep, ref.has_contrast, top_k=top_k[:1], top_p=top_p[:1],
                                             eos_id=tok.eot_id, prefix_len=t, min_len=5, max_len=MAX_LEN)
                    return sample_categorical(probs)

                ref_times.append(meter.time(ref_step)[0])
                ref = ReferenceCocaStepper(bundle.model, emb_g[:1], groups[:1], sim[:1, :1], own_b,
                                           torch.zeros(BEAMS, dtype=torch.bool, device=device), MAX_LEN - 1)
                ref.prefix = torch.randint(0, tok.vocab_size, (BEAMS, t - 1), device=device)
                ref_beam.append(meter.time(lambda: ref.step(torch.zeros(BEAMS, dtype=torch.long, device=device)))[0])
        res["decode_ref"] = rows_total * _line_sum(*ref_times) + VIEWS * n * _line_sum(*ref_beam)
        res["peak_ref_mb"] = meter.peak_mb()
        res["step_ours"], res["step_ref_row"] = step_times, ref_times
        out[n] = res
        del kv
    del bundle
    return out


def bench_doc(meter: Meter, device: Any, autocast: Callable, ns: list[int]) -> dict[int, dict]:
    import torch

    from pseudo_ris.filtering.scorer import ClipScorer

    torch.manual_seed(0)
    scorer = ClipScorer.from_open_clip("RN50", None, device=device)
    meter.reset_peak()
    texts = [f"a photo of a red object number {i} on the left" for i in range(32)]
    views = torch.rand(8, 3, scorer.image_size, scorer.image_size)
    with torch.inference_mode(), autocast():
        t_txt, txt = meter.time(lambda: scorer.text_features(texts))
        t_img, img = meter.time(lambda: scorer.image_features(views))
    peak = meter.peak_mb()
    return {n: {"seconds": 2 * n / 8 * t_img + 88 * n / 32 * t_txt, "peak_mb": peak} for n in ns}


def main() -> None:
    opts = _parse(sys.argv[1:])
    import torch

    try:
        ns = [int(x) for x in opts["masks"].split(",")]
        batch = int(opts["batch"])
    except ValueError:
        print("error: masks=10,30 and batch= take integers", file=sys.stderr)
        raise SystemExit(2)
    device = bench_device(opts)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[opts["precision"]]

    def autocast():
        return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    meter = Meter(device, opts["clock"])
    print(f"torch {torch.__version__}, {device}, {opts['precision']}, threads {torch.get_num_threads()}, "
          f"{opts['clock']} clock; one 640x480 image, random-init SAM ViT-H / CoCa ViT-L/14 / CLIP RN50", flush=True)
    sam = bench_sam(meter, device, autocast)
    print(f"SAM ViT-H: encoder {sam['encoder']:.1f} s (1 windowed + 1 global block timed, scaled to 28 + 4), mask "
          f"decoder {sam['decoder']:.1f} s (1 batch of 64 points timed, x16), peak {sam['peak_mb']:.0f} MB",
          flush=True)
    coca = bench_coca(meter, device, autocast, ns, batch)
    doc = bench_doc(meter, device, autocast, ns)
    speedups = {}
    for n in ns:
        c, d = coca[n], doc[n]
        ours = sam["seconds"] + c["encode"] + c["decode_ours"] + d["seconds"]
        ref = sam["seconds"] + c["encode"] + c["decode_ref"] + d["seconds"]
        speedups[n] = ref / ours
        print(f"\nN = {n} masks: {VIEWS * n * SETTINGS} sampled rows ({VIEWS * n * SETTINGS * n} (row, image) pairs "
              f"per step) + {VIEWS * n} beam searches of {BEAMS} beams")
        print(f"  {'stage':<34} {'ours s':>9} {'reference s':>12} {'ours peak MB':>13} {'ref peak MB':>12}")
        print(f"  {'SAM ViT-H automatic masks':<34} {sam['seconds']:>9.1f} {sam['seconds']:>12.1f} "
              f"{sam['peak_mb']:>13.0f} {sam['peak_mb']:>12.0f}")
        print(f"  {'crops + CoCa ViT-L/14 encoder':<34} {c['encode']:>9.1f} {c['encode']:>12.1f}")
        print(f"  {'caption decoding (11 x 4 per mask)':<34} {c['decode_ours']:>9.1f} {c['decode_ref']:>12.1f} "
              f"{c['peak_ours_mb']:>13.0f} {c['peak_ref_mb']:>12.0f}")
        print(f"  {'CLIP RN50 DoC scoring':<34} {d['seconds']:>9.1f} {d['seconds']:>12.1f} {d['peak_mb']:>13.0f} "
              f"{d['peak_mb']:>12.0f}")
        print(f"  {'total (estimated from timed steps)':<34} {ours:>9.1f} {ref:>12.1f}")
        print(f"  decoding steps timed at prefix 1 / 27: ours {c['step_ours'][0]:.2f} / {c['step_ours'][1]:.2f} s "
              f"per chunk of {c['chunk_pairs']} pairs; reference {c['step_ref_row'][0]:.2f} / "
              f"{c['step_ref_row'][1]:.2f} s per row of {n} pairs")
        print(f"  decoding speedup {c['decode_ref'] / c['decode_ours']:.1f}x; end to end {speedups[n]:.1f}x "
              f"({3600 / ours:.1f} vs {3600 / ref:.2f} images/hour)")
    print()
    for n in ns[1:]:
        print(f"speedup real-size generation N={n}: {speedups[n]:.1f}x")
    print(f"speedup real-size generation: {speedups[ns[0]]:.1f}x")


if __name__ == "__main__":
    main()
