"""Decoding: the distinctive one-step rule against hand-computed cases, cached == uncached, samplers."""

from __future__ import annotations

import math

import pytest
import torch

from pseudo_ris.captioning import (
    DecodeSetting,
    default_settings,
    distinctive_next_token_probs,
    generate_candidates,
    next_token_probs,
)
from pseudo_ris.captioning.decoding import as_dense, beam_search, sample_rows
from pseudo_ris.captioning.steppers import CachedCocaStepper, ReferenceCocaStepper

torch.set_num_threads(1)


def _softmax(values: list[float]) -> list[float]:
    e = [math.exp(v) for v in values]
    return [x / sum(e) for x in e]


def _probs(z, others=None, sims=None, **kw):
    z = torch.tensor(z, dtype=torch.float32)
    others = torch.zeros(0, z.numel()) if others is None else torch.tensor(others, dtype=torch.float32)
    sims = torch.zeros(0) if sims is None else torch.tensor(sims, dtype=torch.float32)
    kw.setdefault("eos_id", 0)
    kw.setdefault("prefix_len", 10)
    return distinctive_next_token_probs(z, others, sims, **kw)


# ---------------------------------------------------------------- pure rule, hand-computed


def test_top_k_plain():
    p = _probs([1.0, 2.0, 3.0, 0.0, 5.0, 4.0], top_k=2)
    expected = [0, 0, 0, 0] + _softmax([5.0, 4.0])
    assert torch.allclose(p, torch.tensor(expected), atol=1e-6)


def test_candidate_sets_never_hold_minus_inf_tokens():
    """k larger than the finite logits, and top-p 1.0: banned (-inf) tokens stay out of the candidate set."""
    from pseudo_ris.captioning.decoding import candidate_mask

    z = torch.tensor([[1.0, float("-inf"), 2.0, 0.0], [1.0, float("-inf"), 2.0, 0.0]])
    keep = candidate_mask(z, torch.tensor([4, 0]), torch.tensor([1.0, 1.0]))
    assert keep.tolist() == [[True, False, True, True], [True, False, True, True]]


def test_top_k_keeps_ties_at_kth_logit():
    p = _probs([0.0, 3.0, 2.0, 2.0, 1.0], top_k=2)
    assert torch.allclose(p, torch.tensor([0.0] + _softmax([3.0, 2.0, 2.0]) + [0.0]), atol=1e-6)


@pytest.mark.parametrize(
    "top_p, kept",
    [
        (0.75, [3, 4]),  # ascending cum: .05 .20 .50 1.0; drop cum <= .25 -> keep .30 .50
        (0.85, [2, 3, 4]),  # drop cum <= .15 -> only .05 dropped
        (0.10, [4]),  # everything but the best dropped; best always kept
        (1.0, [1, 2, 3, 4]),
    ],
)
def test_top_p_keep_rule(top_p, kept):
    base = [0.0, 0.05, 0.15, 0.30, 0.50]  # token 0 = EOS with probability 0 (logit -inf)
    z = [float("-inf")] + [math.log(x) for x in base[1:]]
    p = _probs(z, top_p=top_p)
    total = sum(base[i] for i in kept)
    expected = [base[i] / total if i in kept else 0.0 for i in range(5)]
    assert torch.allclose(p, torch.tensor(expected), atol=1e-6)


def test_top_p_keeps_ties_at_boundary():
    # ascending cum .1 .2 .5 1.0 with 1 - p = .15: the first of the two 0.1 tokens is dropped by position, but
    # its tie partner is kept, so both are (a deterministic rule where HF would pick one arbitrarily)
    z = [float("-inf")] + [math.log(x) for x in (0.1, 0.1, 0.3, 0.5)]
    p = _probs(z, top_p=0.85)
    assert torch.allclose(p, torch.tensor([0.0, 0.1, 0.1, 0.3, 0.5]), atol=1e-6)


def test_min_length_rule_blocks_eos():
    z = [9.0, 1.0, 2.0, 3.0]  # EOS (id 0) is the best token
    early = _probs(z, top_k=2, prefix_len=4, min_len=5)
    assert early[0] == 0.0
    assert torch.allclose(early, torch.tensor([0.0, 0.0] + _softmax([2.0, 3.0])), atol=1e-6)
    on_time = _probs(z, top_k=2, prefix_len=5, min_len=5)
    assert torch.allclose(on_time, torch.tensor([_softmax([9.0, 3.0])[0], 0.0, 0.0, _softmax([9.0, 3.0])[1]]),
                          atol=1e-6)


def test_forced_eos_at_max_len():
    p = _probs([0.0, 5.0, 1.0], top_k=1, eos_id=0, prefix_len=29, max_len=30, others=[[1.0, 1.0, 1.0]],
               sims=[0.5])
    assert p.tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        _probs([0.0, 5.0, 1.0], top_k=1, prefix_len=30, max_len=30)


def test_contrast_and_eos_replacement():
    # V = 4, EOS = 3. z_dep = mean(0.5 * [1,0,0,0], 1.0 * [0,2,0,0]) = [0.25, 1, 0, 0]
    z = [2.0, 1.0, 0.0, 0.5]
    p = _probs(z, others=[[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]], sims=[0.5, 1.0], top_k=3, eos_id=3)
    plain = _softmax([2.0, 1.0, 0.5])  # S = {0, 1, 3}
    contrast = _softmax([2.0 - 0.25, 1.0 - 1.0, 0.5 - 0.0])
    expected = [contrast[0], contrast[1], 0.0, plain[2]]
    assert torch.allclose(p, torch.tensor(expected), atol=1e-6)
    # replaced, not renormalised: the raw vector does not sum to 1
    assert abs(float(p.sum()) - (contrast[0] + contrast[1] + plain[2])) < 1e-6
    assert abs(float(p.sum()) - 1.0) > 1e-3


def test_no_contrast_for_n_equal_1_and_n_above_30():
    z = [0.3, 2.0, 1.0, -1.0, 0.5]
    plain = _probs(z, top_k=3)
    assert torch.allclose(_probs(z, top_k=3, others=None), plain)
    others_30 = torch.randn(30, 5).tolist()  # N = 31 masks
    assert torch.allclose(_probs(z, top_k=3, others=others_30, sims=[1.0] * 30), plain)
    others_29 = torch.randn(29, 5).tolist()  # N = 30 masks: contrast applies
    assert not torch.allclose(_probs(z, top_k=3, others=others_29, sims=[1.0] * 29), plain)


def test_exactly_one_of_top_k_top_p():
    with pytest.raises(ValueError):
        _probs([0.0, 1.0], top_k=1, top_p=0.5)
    with pytest.raises(ValueError):
        _probs([0.0, 1.0])


def test_batched_rule_matches_pure_rule_per_row():
    g = torch.Generator().manual_seed(0)
    r, v, n_other = 6, 50, 3
    z = torch.randn(r, v, generator=g) * 3
    others = torch.randn(r, n_other, v, generator=g) * 3
    sims = torch.rand(r, n_other, generator=g)
    top_k = torch.tensor([5, 0, 13, 0, 1, 0])
    top_p = torch.tensor([1.0, 0.4, 1.0, 0.8, 1.0, 0.6])
    z_dep = (sims[:, :, None] * others).mean(1)
    has = torch.tensor([True, True, False, True, True, False])
    batched = next_token_probs(z, z_dep, has, top_k=top_k, top_p=top_p, eos_id=7, prefix_len=6)
    for i in range(r):
        kw = {"top_k": int(top_k[i])} if top_k[i] > 0 else {"top_p": float(top_p[i])}
        o = others[i] if has[i] else torch.zeros(0, v)
        s = sims[i] if has[i] else torch.zeros(0)
        single = distinctive_next_token_probs(z[i], o, s, eos_id=7, prefix_len=6, **kw)
        assert torch.allclose(batched[i], single, atol=1e-7)


# ---------------------------------------------------------------- steppers on a tiny CoCa

@pytest.fixture(scope="module")
def tiny(tiny_coca):
    """The checked random-init CoCa of conftest (finite, non-constant logits that depend on image and prefix)."""
    return tiny_coca


def _images(bundle, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, bundle.image_size, bundle.image_size, generator=g)
    return bundle.encode_images(bundle.preprocess(x))


def _steppers(bundle, n_images=4, max_positions=12):
    lat, emb = _images(bundle, n_images + 1)
    groups = torch.tensor([0] * n_images + [1])  # a group of n and a single image (no contrast possible)
    own = torch.tensor([0, 1, 2, 3, 0, 4, 2])
    contrast = torch.tensor([True, True, True, True, False, True, False])
    sim = lat @ lat.t()
    args = (bundle.model, emb, groups, sim, own, contrast, max_positions)
    return CachedCocaStepper(*args), ReferenceCocaStepper(*args)


@pytest.fixture(params=["onednn", "torch"])
def kernels(request):
    """Run a test with the cached stepper's products on oneDNN's kernels (where torch has them) and on plain torch."""
    from pseudo_ris.captioning import cpu_kernels

    cpu_kernels.set_enabled(request.param == "onednn")
    yield request.param
    cpu_kernels.set_enabled(True)


def test_cached_equals_uncached_logits_and_probs(tiny, kernels):
    cached, ref = _steppers(tiny)
    assert cached.has_contrast.tolist() == [True, True, True, True, False, False, False]
    g = torch.Generator().manual_seed(1)
    tokens = torch.full((7,), tiny.tokenizer.sot_id)
    top_k = torch.tensor([3, 0, 5, 0, 2, 4, 0])
    top_p = torch.tensor([1.0, 0.6, 1.0, 0.9, 1.0, 1.0, 0.5])
    for prefix_len in range(1, 9):
        if prefix_len == 4:  # drop / reorder / duplicate rows mid-way, as sampling and beam search do
            rows = torch.tensor([6, 0, 0, 2, 3, 5])
            for s in (cached, ref):
                s.select(rows)
            tokens, top_k, top_p = tokens[rows], top_k[rows], top_p[rows]
        zc, lazy = cached.step(tokens)
        dc = as_dense(lazy)
        zr, dr = ref.step(tokens)
        assert torch.isfinite(zc).all() and float(zc.std()) > 1e-3  # decoder projection initialised
        assert torch.allclose(zc, zr, atol=1e-4, rtol=1e-4)
        assert torch.allclose(dc, dr, atol=1e-4, rtol=1e-4)
        assert float(dc[cached.has_contrast].abs().max()) > 0
        pc = next_token_probs(zc, lazy, cached.has_contrast, top_k=top_k, top_p=top_p, eos_id=2,
                              prefix_len=prefix_len, min_len=3, max_len=20)
        pr = next_token_probs(zr, dr, ref.has_contrast, top_k=top_k, top_p=top_p, eos_id=2,
                              prefix_len=prefix_len, min_len=3, max_len=20)
        assert float((pc - pr).abs().max()) <= 1e-5
        tokens = torch.randint(4, tiny.tokenizer.vocab_size, (tokens.numel(),), generator=g)


@pytest.mark.parametrize("fuse", [False, True])
def test_fused_and_lazy_contrast_projection_equal_reference(tiny, fuse):
    """The contrast term projected lazily (after the candidate sets are known) or in the same pass as z must give
    the reference's z_dep on every row, zero on rows without contrast, whatever the sampler reported."""
    cached, ref = _steppers(tiny)
    tokens = torch.full((7,), tiny.tokenizer.sot_id)
    g = torch.Generator().manual_seed(2)
    for _ in range(4):
        cached.fuse_contrast = fuse
        zc, lazy = cached.step(tokens)
        zr, dr = ref.step(tokens)
        assert (lazy.dense is not None) == fuse
        assert torch.allclose(zc, zr, atol=1e-4, rtol=1e-4)
        keep = torch.ones_like(zc, dtype=torch.bool)
        on_cols = lazy.on_columns(keep, cached.has_contrast)
        assert cached.fuse_contrast  # every column kept: the next step fuses
        assert torch.allclose(on_cols, dr, atol=1e-4, rtol=1e-4)
        assert float(on_cols[~cached.has_contrast].abs().max()) == 0.0
        tokens = torch.randint(4, tiny.tokenizer.vocab_size, (7,), generator=g)
    few = torch.zeros_like(keep)
    few[:, :3] = True
    lazy.on_columns(few, cached.has_contrast)
    assert not cached.fuse_contrast  # few columns: back to the lazy projection


def test_contrast_weights_use_similarity(tiny):
    """z_dep must equal mean_j s_ij z_j computed from separate single-image logits."""
    lat, emb = _images(tiny, 3, seed=3)
    sim = lat @ lat.t()
    groups = torch.zeros(3, dtype=torch.long)
    own = torch.arange(3)
    cached = CachedCocaStepper(tiny.model, emb, groups, sim, own, torch.ones(3, dtype=torch.bool), 4)
    plain = CachedCocaStepper(tiny.model, emb, groups, sim, own, torch.zeros(3, dtype=torch.bool), 4)
    tokens = torch.full((3,), tiny.tokenizer.sot_id)
    z, z_dep = cached.step(tokens)
    z_dep = as_dense(z_dep)
    z_single, _ = plain.step(tokens)  # same prefix for every row, so z_j = plain logits of image j
    expected = (sim[0, 1] * z_single[1] + sim[0, 2] * z_single[2]) / 2
    assert torch.allclose(z_dep[0], expected, atol=1e-5)
    assert torch.allclose(z, z_single, atol=1e-5)


def test_sampler_cached_equals_reference(tiny, kernels):
    settings = [DecodeSetting("topk", 3, True), DecodeSetting("topp", 0.7, True), DecodeSetting("topk", 2)]
    views = torch.rand(3, 2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    a = generate_candidates(tiny, views, settings, generator=torch.Generator().manual_seed(7), max_len=12)
    b = generate_candidates(tiny, views, settings, generator=torch.Generator().manual_seed(7), max_len=12,
                            cached=False)
    assert [[c.tokens for c in m] for m in a] == [[c.tokens for c in m] for m in b]


def test_candidates_shape_and_valid_lengths(tiny):
    tok = tiny.tokenizer
    views = torch.rand(3, 4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    cands = generate_candidates(tiny, views, generator=torch.Generator().manual_seed(0), batch_size=64)
    assert len(cands) == 3
    names = [s.name for s in default_settings()]
    for per_mask in cands:
        assert len(per_mask) == 4 * 11
        assert [c.view for c in per_mask] == [v for v in range(4) for _ in range(11)]
        assert [c.setting for c in per_mask] == names * 4
        assert [c.distinctive for c in per_mask] == [s.distinctive for s in default_settings()] * 4
        for c in per_mask:
            assert c.tokens[0] == tok.sot_id and c.tokens[-1] == tok.eot_id
            assert 5 + 1 <= len(c.tokens) <= 30  # EOS only once the prefix has >= 5 tokens; forced at 30
            assert tok.pad_id not in c.tokens[1:] and tok.sot_id not in c.tokens[1:]
            assert c.text == tok.decode(c.tokens)


def test_same_seed_same_captions(tiny):
    views = torch.rand(2, 2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    settings = default_settings()[1:4]
    run = lambda seed: [[c.text for c in m] for m in generate_candidates(  # noqa: E731
        tiny, views, settings, generator=torch.Generator().manual_seed(seed), max_len=15)]
    first = run(11)
    assert run(11) == first
    assert run(12) != first


def test_distinctive_single_mask_equals_plain(tiny):
    """N = 1: no contrast set, distinctive sampling is plain sampling (same seed -> same tokens)."""
    views = torch.rand(1, 2, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    d = generate_candidates(tiny, views, [DecodeSetting("topk", 5, True)], generator=torch.Generator().manual_seed(3))
    p = generate_candidates(tiny, views, [DecodeSetting("topk", 5, False)], generator=torch.Generator().manual_seed(3))
    assert [c.tokens for c in d[0]] == [c.tokens for c in p[0]]


def test_beam_search_cached_equals_reference_and_greedy(tiny):
    lat, emb = _images(tiny, 3, seed=9)
    tok = tiny.tokenizer
    results = {}
    for name, cls in (("cached", CachedCocaStepper), ("ref", ReferenceCocaStepper)):
        own = torch.arange(3).repeat_interleave(3)
        st = cls(tiny.model, emb, torch.zeros(3, dtype=torch.long), torch.eye(3), own,
                 torch.zeros(9, dtype=torch.bool), 15)
        results[name] = beam_search(st, 3, 3, sot_id=tok.sot_id, eos_id=tok.eot_id, pad_id=tok.pad_id,
                                    min_len=4, max_len=16)
    assert [r.tokens for r in results["cached"]] == [r.tokens for r in results["ref"]]
    for r in results["cached"]:
        assert r.tokens[0] == tok.sot_id and r.tokens[-1] == tok.eot_id and 5 <= len(r.tokens) <= 16
    # 1 beam: the live hypothesis always extends by the best non-EOS token (an EOS candidate only finishes a
    # hypothesis), checked against the uncached stepper
    st = CachedCocaStepper(tiny.model, emb, torch.zeros(3, dtype=torch.long), torch.eye(3), torch.arange(3),
                           torch.zeros(3, dtype=torch.bool), 15)
    greedy = beam_search(st, 3, 1, sot_id=tok.sot_id, eos_id=tok.eot_id, pad_id=tok.pad_id, min_len=4, max_len=16)
    for i, res in enumerate(greedy):
        ref = ReferenceCocaStepper(tiny.model, emb[i:i + 1], torch.zeros(1, dtype=torch.long), torch.eye(1),
                                   torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.bool), 15)
        seq = res.tokens
        for t in range(1, len(seq) - 1):
            z, _ = ref.step(torch.tensor([seq[t - 1]]))
            z[:, [tok.pad_id, tok.sot_id, tok.eot_id]] = float("-inf")
            assert int(z.argmax()) == seq[t]


def test_sample_rows_forced_eos_and_min_len(tiny):
    lat, emb = _images(tiny, 2, seed=6)
    tok = tiny.tokenizer
    st = CachedCocaStepper(tiny.model, emb, torch.zeros(2, dtype=torch.long), lat @ lat.t(), torch.tensor([0, 1]),
                           torch.ones(2, dtype=torch.bool), 7)
    seqs = sample_rows(st, sot_id=tok.sot_id, eos_id=tok.eot_id, pad_id=tok.pad_id, top_k=torch.tensor([0, 0]),
                       top_p=torch.tensor([1.0, 1.0]), min_len=8, max_len=8, generator=torch.Generator().manual_seed(0))
    for s in seqs:  # min_len == max_len: EOS only when forced, so every caption has exactly max_len tokens
        assert len(s) == 8 and s[-1] == tok.eot_id and tok.eot_id not in s[:-1]


def test_lazy_contrast_columns_match_full_projection():
    from pseudo_ris.captioning.decoding import LazyContrast

    g = torch.Generator().manual_seed(0)
    lazy = LazyContrast(torch.randn(4, 8, generator=g), torch.randn(8, 100, generator=g))
    keep = torch.zeros(4, 100, dtype=torch.bool)
    keep[0, [3, 50]] = True
    keep[2, [7]] = True
    rows = torch.tensor([True, False, True, True])
    out = lazy.on_columns(keep, rows)
    full = lazy.full()
    for r, c in [(0, 3), (0, 50), (2, 7), (3, 3), (3, 50), (3, 7), (2, 50)]:
        assert torch.allclose(out[r, c], full[r, c], atol=1e-5)
    assert float(out[1].abs().max()) == 0.0  # rows without contrast stay zero
    keep[0] = True  # many columns: falls back to the full projection
    assert torch.allclose(lazy.on_columns(keep, rows)[rows], full[rows], atol=1e-5)


def test_more_than_30_masks_disables_contrast(tiny):
    """N = 31 masks: the official rule falls back to plain sampling (same seed -> same tokens as plain)."""
    views = torch.rand(31, 1, 3, 64, 64, generator=torch.Generator().manual_seed(12))
    run = lambda d: [m[0].tokens for m in generate_candidates(  # noqa: E731
        tiny, views, [DecodeSetting("topp", 0.8, d)], generator=torch.Generator().manual_seed(5), max_len=10)]
    assert run(True) == run(False)
    views30 = views[:30]
    run30 = lambda d: [m[0].tokens for m in generate_candidates(  # noqa: E731
        tiny, views30, [DecodeSetting("topp", 0.8, d)], generator=torch.Generator().manual_seed(5), max_len=10)]
    assert run30(True) != run30(False)


def test_sample_categorical_matches_normalised_vector():
    from pseudo_ris.captioning.decoding import sample_categorical

    raw = torch.tensor([[0.0, 0.2, 0.0, 0.6, 0.4]])  # sums to 1.2: drawn as raw / 1.2, token 0 and 2 never
    g = torch.Generator().manual_seed(0)
    draws = sample_categorical(raw.expand(60000, -1), g)
    freq = torch.bincount(draws, minlength=5).double() / draws.numel()
    assert freq[0] == 0 and freq[2] == 0
    assert torch.allclose(freq, (raw[0] / raw.sum()).double(), atol=0.01)
    again = sample_categorical(raw.expand(60000, -1), torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)
