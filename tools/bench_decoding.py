"""Benchmark: cached, batched distinctive sampling vs the uncached (official-style) reference path.

Same randomly initialised CoCa (float32, this device), one view of one image with N masks, the 10 distinctive
sampling settings of the paper (top-k 5..13, top-p 0.4..0.8), captions forced to the full length 30
(min_len = max_len = 30, so every row runs all 28 decoder steps; the 29th token is the forced EOS).

* cached: the real API, ``generate_candidates`` (image encoding, chunks, caches, projection identity), timed end
  to end.
* uncached: the same API with the uncached stepper (``cached=False``) takes ~36 s per step at N=10 on
  coca_ViT-B-32, so it is *estimated*: the image encoding is timed once (the same work as in the cached run), and
  one decoding step -- the stepper's logits, the distinctive rule and the draw, as ``sample_rows`` runs them -- is
  timed at ``--steps`` prefix lengths spread over 1..28 on a subset of the rows (its cost is a sum of independent
  per-pair forwards, hence linear in the number of rows: scaled by rows/subset), a line a + b*t is fitted through
  the per-step times and summed over t = 1..28, and the encoding is added.
* equality: for the same subset and the same (random) prefixes, the cached stepper is teacher-forced to each
  measured prefix length and the next-token probability vectors of both paths are compared: max|dp| (max abs
  difference of the probability vectors, rows whose candidate sets agree), max|dz| (max abs difference of the
  logits z and of the contrast term z_dep) and flips (rows where a token within float32 noise of the top-k/top-p
  boundary landed on different sides -- with a near-uniform random-init 49k vocabulary top-p keeps thousands of
  tokens, so this happens; it is a property of any discontinuous rule, not of the cache).

``--kernels torch`` runs the cached path's products on torch's own ops instead of oneDNN's CPU kernels
(``pseudo_ris.captioning.cpu_kernels``), to separate the kernel gain from the algorithmic one; the uncached
reference always runs open_clip's modules as they are.

Times are this process's CPU seconds by default (``--clock cpu``, with ``--threads 1``): on a machine shared with
other jobs, wall time swings by 2x within minutes, CPU time does not.

Usage: python tools/bench_decoding.py [--models coca_ViT-B-32 coca_tiny] [--n 2 5 10 20] [--steps 3] [--quick]
The last line is ``speedup N=10: <x>x`` for the first model.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

from pseudo_ris.captioning import (DecodeSetting, WordTokenizer, encode_views, generate_candidates, load_coca,
                                   next_token_probs)
from pseudo_ris.captioning import cpu_kernels
from pseudo_ris.captioning.decoding import as_dense, sample_categorical
from pseudo_ris.captioning.steppers import CachedCocaStepper, ReferenceCocaStepper

SETTINGS = ([DecodeSetting("topk", k, True) for k in (5, 7, 9, 11, 13)]
            + [DecodeSetting("topp", p, True) for p in (0.4, 0.5, 0.6, 0.7, 0.8)])
MAX_LEN = 30
CLOCK: Callable[[], float] = time.process_time  # set in main(); CPU time is robust to other users' load
N_STEPS = MAX_LEN - 2  # decoder steps at prefix lengths 1..28; the last token is the forced EOS


def _bundle(name: str):
    if name.startswith("coca_ViT"):
        return load_coca(name)
    words = [f"w{i}" for i in range(252)]  # 256-token word vocabulary, the SynthRef scale
    return load_coca(name, tokenizer=WordTokenizer(words, context_length=32))


def _time_cached(bundle, n: int, batch_size: int, seed: int) -> tuple[float, float]:
    """(seconds of the cached ``generate_candidates``, seconds of its image encoding alone)."""
    views = torch.rand(n, 1, 3, bundle.image_size, bundle.image_size, generator=torch.Generator().manual_seed(seed))
    start = CLOCK()
    cands = generate_candidates(bundle, views, SETTINGS, generator=torch.Generator().manual_seed(seed),
                                batch_size=batch_size, min_len=MAX_LEN, max_len=MAX_LEN)
    elapsed = CLOCK() - start
    assert all(len(c.tokens) == MAX_LEN for m in cands for c in m)
    start = CLOCK()
    encode_views(bundle, views.transpose(0, 1).reshape(n, *views.shape[2:]))
    return elapsed, CLOCK() - start


def _subset(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows = max(n, len(SETTINGS))
    own = torch.tensor([j % n for j in range(rows)])
    top_k = torch.tensor([int(SETTINGS[j % 10].value) if SETTINGS[j % 10].kind == "topk" else 0 for j in range(rows)])
    top_p = torch.tensor([float(SETTINGS[j % 10].value) if SETTINGS[j % 10].kind == "topp" else 1.0
                          for j in range(rows)])
    return own, top_k, top_p


def _uncached_and_equality(bundle, n: int, prefix_lengths: list[int], seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, bundle.image_size, bundle.image_size, generator=g)
    lat, emb = bundle.encode_images(bundle.preprocess(x))
    sim = lat @ lat.t()
    groups = torch.zeros(n, dtype=torch.long)
    own, top_k, top_p = _subset(n)
    contrast = torch.ones(own.numel(), dtype=torch.bool)
    tok = bundle.tokenizer
    special = {tok.sot_id, tok.eot_id, tok.pad_id}
    allowed = torch.tensor([i for i in range(tok.vocab_size) if i not in special])
    prefix = allowed[torch.randint(len(allowed), (own.numel(), MAX_LEN), generator=g)]
    prefix[:, 0] = tok.sot_id
    times, max_diff, max_dz, flips, checked = [], 0.0, 0.0, 0, 0
    for t in prefix_lengths:
        ref = ReferenceCocaStepper(bundle.model, emb, groups, sim, own, contrast, MAX_LEN - 1)
        ref.prefix = prefix[:, : t - 1].clone()
        kw = dict(top_k=top_k, top_p=top_p, eos_id=tok.eot_id, prefix_len=t, min_len=5, max_len=MAX_LEN)
        start = CLOCK()
        zr, dr = ref.step(prefix[:, t - 1])  # one step of sample_rows over the uncached stepper
        pr = next_token_probs(zr, dr, ref.has_contrast, **kw)
        sample_categorical(pr, g)
        times.append(CLOCK() - start)
        cached = CachedCocaStepper(bundle.model, emb, groups, sim, own, contrast, MAX_LEN - 1)
        for i in range(t):
            zc, lazy = cached.step(prefix[:, i])
        dc = as_dense(lazy)
        assert torch.isfinite(zc).all() and float(zc.std()) > 0, "logits constant or not finite"
        pc = next_token_probs(zc, lazy, cached.has_contrast, **kw)  # lazy contrast, as in sampling
        # a token whose logit sits within float32 noise of the top-k / top-p boundary can fall on either side:
        # such rows are counted, and the probability check runs on rows with the same candidate set
        same = ((pc > 0) == (pr > 0)).all(dim=1)
        flips += int((~same).sum())
        checked += same.numel()
        if same.any():
            max_diff = max(max_diff, float((pc - pr)[same].abs().max()))
        max_dz = max(max_dz, float((zc - zr).abs().max()), float((dc - dr).abs().max()))
    return times, own.numel(), (max_diff, max_dz, flips, checked)


def _extrapolate(prefix_lengths: list[int], times: list[float]) -> float:
    ts = torch.tensor(prefix_lengths, dtype=torch.float64)
    ys = torch.tensor(times, dtype=torch.float64)
    if len(ts) >= 2:
        a_mat = torch.stack([torch.ones_like(ts), ts], dim=1)
        coef = torch.linalg.lstsq(a_mat, ys[:, None]).solution.flatten()
        a, b = float(coef[0]), float(coef[1])
    else:
        a, b = float(ys[0]), 0.0
    steps = torch.arange(1, N_STEPS + 1, dtype=torch.float64)
    return float((a + b * steps).clamp(min=float(ys.min())).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["coca_ViT-B-32", "coca_tiny"])
    parser.add_argument("--n", nargs="+", type=int, default=[2, 5, 10, 20])
    parser.add_argument("--steps", type=int, default=3, help="prefix lengths at which the uncached step is timed")
    parser.add_argument("--batch-size", type=int, default=256, help="cached path: decoder sequences in flight")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (0 = torch default; 1 is steadier on a shared machine)")
    parser.add_argument("--quick", action="store_true", help="N in {2, 10}, 2 uncached prefix lengths")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="cpu: this process's CPU time (default; steady on a shared machine, meaningful with "
                             "--threads 1); wall: elapsed time")
    parser.add_argument("--kernels", choices=["onednn", "torch"], default="onednn",
                        help="cached path's CPU products: oneDNN's kernels where torch has them (default), or "
                             "torch's own ops")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu_kernels.set_enabled(args.kernels == "onednn")
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    ns = [2, 10] if args.quick else args.n
    steps = 2 if args.quick else max(1, args.steps)
    prefix_lengths = sorted({round(1 + i * (N_STEPS - 1) / max(1, steps - 1)) for i in range(steps)})
    torch.manual_seed(args.seed)
    header = (f"{'model':<14} {'N':>3} {'rows':>4} {'pairs/step':>10} {'cached s':>9} {'encode s':>8} "
              f"{'cached s/step':>13} "
              f"{'uncached s/step (t=' + ','.join(map(str, prefix_lengths)) + ')':>34} {'uncached s (est)':>16} "
              f"{'speedup':>8} {'max|dp|':>9} {'max|dz|':>9} {'flips':>8}")
    lines, first_speedup = [], {}
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.clock} clock, float32, "
          f"length {MAX_LEN}, 10 distinctive settings, one view, cached products on "
          f"{'oneDNN' if cpu_kernels.enabled() else 'torch ops'}", flush=True)
    for name in args.models:
        bundle = _bundle(name)
        _time_cached(bundle, 2, args.batch_size, args.seed)  # untimed warm-up: first-call allocations and kernels
        for n in ns:
            rows = n * len(SETTINGS)
            pairs = rows * n if 2 <= n <= 30 else rows
            cached, encode = _time_cached(bundle, n, args.batch_size, args.seed)
            times, sub_rows, (diff, dz, flips, checked) = _uncached_and_equality(bundle, n, prefix_lengths,
                                                                                 args.seed)
            scale = rows / sub_rows
            per_step = [t * scale for t in times]
            uncached = encode + _extrapolate(prefix_lengths, per_step)
            speedup = uncached / cached
            if name == args.models[0]:
                first_speedup[n] = speedup
            line = (f"{name:<14} {n:>3} {rows:>4} {pairs:>10} {cached:>9.1f} {encode:>8.1f} "
                    f"{(cached - encode) / N_STEPS:>13.3f} "
                    f"{' / '.join(f'{s:.2f}' for s in per_step):>34} {uncached:>16.0f} {speedup:>7.1f}x "
                    f"{diff:>9.1e} {dz:>9.1e} {flips:>3}/{checked:<4}")
            lines.append(line)
            print(line, flush=True)
    print()
    print(header)
    print("\n".join(lines))
    if 10 in first_speedup:
        print(f"speedup N=10: {first_speedup[10]:.1f}x")


if __name__ == "__main__":
    main()
