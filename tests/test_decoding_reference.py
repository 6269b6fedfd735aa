"""Decoding checked against references that share no code with ``pseudo_ris.captioning``.

1. Beam search on a fake decoder with a fixed table of next-token probabilities, scores computed by hand (the
   length-normalised choice differs from the raw-sum choice, so dropping the normalisation fails).
2. Distinctive sampling's next-token distribution written again from the method's description, slow and uncached:
   for every row and step, CoCa's own forward on the full prefix for the row's image and for every other image of
   its group (same prefix), z_dep = mean_j s_ij z_j with s_ij the dot product of L2-normalised image latents,
   top-k / top-p candidate sets, p[EOS] replaced by the plain stopping probability, the min-length and
   max-length rules. Computed in float64 numpy; only CoCa's forward pass (open_clip) is shared.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pseudo_ris.captioning import DecodeSetting, beam_search, generate_candidates, next_token_probs

torch.set_num_threads(1)

MAX_CONTRAST = 29  # contrast only for 2 <= N <= 30 masks, i.e. 1..29 others


# ============================================================================ beam search, by hand

PAD, SOT, EOS, A, B, C = 0, 1, 2, 3, 4, 5
# next-token probabilities after each prefix (token ids after SOT); every other prefix: EOS 0.5, C 0.5
TABLE = {
    (): {A: 0.6, B: 0.4},
    (A,): {EOS: 0.55, C: 0.45},
    (B,): {B: 0.9, EOS: 0.1},
    (B, B): {B: 0.9, EOS: 0.1},
    (A, C): {EOS: 0.9, C: 0.1},
    (B, B, B): {EOS: 0.9, B: 0.1},
    (A, C, C): {EOS: 0.6, C: 0.4},
}
DEFAULT = {EOS: 0.5, C: 0.5}
VOCAB = 6


class TableStepper:
    """The stepper protocol over a probability table: each row keeps its own prefix; logits = log p."""

    def __init__(self, n_rows: int):
        self.prefixes: list[tuple[int, ...]] = [() for _ in range(n_rows)]
        self.has_contrast = torch.zeros(n_rows, dtype=torch.bool)
        self.started = False

    @property
    def n_rows(self) -> int:
        return len(self.prefixes)

    def step(self, tokens: torch.Tensor):
        toks = tokens.tolist()
        if self.started:
            self.prefixes = [p + (t,) for p, t in zip(self.prefixes, toks)]
        else:
            assert toks == [SOT] * len(toks)
            self.started = True
        z = torch.full((self.n_rows, VOCAB), float("-inf"))
        for r, prefix in enumerate(self.prefixes):
            for tok, p in TABLE.get(prefix, DEFAULT).items():
                z[r, tok] = math.log(p)
        return z, None

    def select(self, rows: torch.Tensor) -> None:
        self.prefixes = [self.prefixes[i] for i in rows.tolist()]
        self.has_contrast = self.has_contrast[rows]


def _beam(num_beams: int, n_items: int = 1):
    return beam_search(TableStepper(n_items * num_beams), n_items, num_beams, sot_id=SOT, eos_id=EOS, pad_id=PAD,
                       min_len=1, max_len=8)


def test_beam_search_hand_computed_length_normalised_choice():
    """Two beams. Finished hypotheses (score = sum of log p / generated tokens, EOS included):
        A EOS        : (ln .6 + ln .55) / 2          = -0.5544   (raw sum -1.109, the best raw sum)
        A C EOS      : (ln .6 + ln .45 + ln .9) / 3  = -0.4716   (raw -1.415)
        B B B EOS    : (ln .4 + 3 ln .9) / 4         = -0.3081   (raw -1.232)
    Step by step: after 2 tokens the beams are {B B: -1.022, A C: -1.310} (A EOS finished); after 3,
    {B B B: -1.127, A C C: -3.613} (A C EOS finished; B B EOS ranks 3rd of 4 and is not a finished beam);
    at step 4 B B B EOS finishes and the best live beam bound -3.430 / 5 cannot beat the 2 kept finished ones,
    so the search stops. Length-normalised winner: B B B EOS. Without normalisation it would be A EOS."""
    res = _beam(2)[0]
    assert res.tokens == [SOT, B, B, B, EOS]
    expected = (math.log(0.4) + 3 * math.log(0.9)) / 4
    assert res.score == pytest.approx(expected, abs=1e-5)


def test_greedy_hand_computed():
    """One beam: A (0.6), then C (EOS 0.55 only finishes a hypothesis), then EOS (0.9):
    A EOS = -0.5544 is finished at step 2 but A C EOS = (ln .6 + ln .45 + ln .9) / 3 = -0.4716 is better."""
    res = _beam(1)[0]
    assert res.tokens == [SOT, A, C, EOS]
    assert res.score == pytest.approx((math.log(0.6) + math.log(0.45) + math.log(0.9)) / 3, abs=1e-5)


def test_beam_search_items_are_independent():
    """Three items in one stepper get the same hand-computed answer (rows r // num_beams belong to item r)."""
    for res in _beam(2, n_items=3):
        assert res.tokens == [SOT, B, B, B, EOS]


# ============================================================================ reference distinctive sampling


def _softmax_on(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    out = np.zeros_like(values)
    idx = np.nonzero(keep)[0]
    v = values[idx]
    e = np.exp(v - v.max())
    out[idx] = e / e.sum()
    return out


def reference_rule(z_own: np.ndarray, contrast: list[tuple[float, np.ndarray]], *, top_k: int | None,
                   top_p: float | None, eos: int, prefix_len: int, min_len: int, max_len: int,
                   banned: tuple[int, ...] = ()) -> np.ndarray:
    """The next-token vector of one row, straight from the method's description (float64)."""
    v = z_own.shape[0]
    if prefix_len + 1 == max_len:  # the next token would be the max_len-th: EOS is forced
        out = np.zeros(v)
        out[eos] = 1.0
        return out
    z = z_own.astype(np.float64).copy()
    z[list(banned)] = -np.inf
    if prefix_len < min_len:  # too short to stop (start token counted)
        z[eos] = -np.inf
    finite = np.isfinite(z)
    if top_k is not None:
        kth = np.sort(z)[::-1][top_k - 1]
        keep = finite & (z >= kth)
    else:
        probs = _softmax_on(z, finite)
        keep = np.zeros(v, dtype=bool)
        cum = 0.0
        for tok in sorted(range(v), key=lambda t: probs[t]):  # ascending probability
            cum += probs[tok]
            if cum > 1.0 - top_p:
                keep[tok] = True
        keep[int(np.argmax(z))] = True
    plain = _softmax_on(z, keep)
    if not 1 <= len(contrast) <= MAX_CONTRAST:
        return plain
    z_dep = sum(s * zj.astype(np.float64) for s, zj in contrast) / len(contrast)
    p = _softmax_on(z - z_dep, keep)
    p[eos] = plain[eos]
    return p


class ReferenceCoca:
    """Uncached logits from CoCa's own forward: the whole prefix and the image are recomputed at every call."""

    def __init__(self, model, pixels: torch.Tensor):
        self.model = model
        self.pixels = pixels
        self._seen: dict[tuple[int, tuple[int, ...]], np.ndarray] = {}  # identical queries only (test speed)
        with torch.no_grad():
            self.latents = model(pixels)["image_features"].double()  # L2-normalised

    def logits(self, image: int, prefix: list[int]) -> np.ndarray:
        key = (image, tuple(prefix))
        if key not in self._seen:
            with torch.no_grad():
                out = self.model(self.pixels[image:image + 1], torch.tensor([prefix]), output_labels=False)
            self._seen[key] = out["logits"][0, -1].double().numpy()
        return self._seen[key]

    def similarity(self, i: int, j: int) -> float:
        return float(self.latents[i] @ self.latents[j])

    def distribution(self, own: int, group: list[int], distinctive: bool, prefix: list[int], **rule) -> np.ndarray:
        others = [j for j in group if j != own] if distinctive else []
        contrast = [(self.similarity(own, j), self.logits(j, prefix)) for j in others]
        return reference_rule(self.logits(own, prefix), contrast, prefix_len=len(prefix), **rule)


def _pixels(bundle, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, bundle.image_size, bundle.image_size, generator=g)
    mean = torch.tensor(bundle.mean).view(1, 3, 1, 1)
    std = torch.tensor(bundle.std).view(1, 3, 1, 1)
    return (x - mean) / std


def test_cached_distinctive_distribution_matches_independent_reference(tiny_coca):
    """Per row and step, the production path (cached stepper + the batched rule) against the reference."""
    from pseudo_ris.captioning.steppers import CachedCocaStepper

    bundle, tok = tiny_coca, tiny_coca.tokenizer
    pixels = _pixels(bundle, 5, seed=21)
    ref = ReferenceCoca(bundle.model, pixels)
    groups = [0, 0, 0, 0, 1]  # four crops contrast with each other; the fifth is alone (plain sampling)
    # rows: (own image, distinctive, top_k, top_p)
    rows = [(0, True, 3, None), (1, True, None, 0.7), (2, True, 5, None), (3, True, None, 0.9),
            (0, False, 2, None), (4, True, 4, None), (2, False, None, 0.5)]
    min_len, max_len, eos = 4, 9, tok.eot_id
    with torch.no_grad():
        latents, image_embs = bundle.model._encode_image(pixels)
    stepper = CachedCocaStepper(bundle.model, image_embs, torch.tensor(groups), latents @ latents.t(),
                                torch.tensor([r[0] for r in rows]), torch.tensor([r[1] for r in rows]), max_len - 1)
    rng = np.random.default_rng(0)
    prefixes = [[tok.sot_id] for _ in rows]
    tokens = torch.full((len(rows),), tok.sot_id)
    checked_contrast = 0
    for prefix_len in range(1, max_len):
        if prefix_len == 4:  # drop, reorder and duplicate rows mid-way, as the samplers do
            keep = [6, 0, 0, 2, 3, 5]
            stepper.select(torch.tensor(keep))
            rows, prefixes, tokens = [rows[i] for i in keep], [list(prefixes[i]) for i in keep], tokens[keep]
        z, z_dep = stepper.step(tokens)
        assert torch.isfinite(z).all() and float(z.std(dim=-1).min()) > 1e-2  # informative logits
        top_k = torch.tensor([r[2] or 0 for r in rows])
        top_p = torch.tensor([r[3] or 1.0 for r in rows])
        got = next_token_probs(z, z_dep, stepper.has_contrast, top_k=top_k, top_p=top_p, eos_id=eos,
                               prefix_len=prefix_len, min_len=min_len, max_len=max_len).double().numpy()
        nxt = []
        for r, (own, distinctive, k, p) in enumerate(rows):
            group = [j for j, g in enumerate(groups) if g == groups[own]]
            expected = ref.distribution(own, group, distinctive, prefixes[r], top_k=k, top_p=p, eos=eos,
                                        min_len=min_len, max_len=max_len)
            assert np.abs(got[r] - expected).max() <= 1e-5, (prefix_len, r)
            checked_contrast += int(distinctive and len(group) > 1 and prefix_len + 1 < max_len)
            walk = expected.copy()  # continue along a sampled path (never EOS/pad/start, so rows keep going)
            walk[[eos, tok.pad_id, tok.sot_id]] = 0
            if walk.sum() == 0:
                walk = np.ones_like(walk)
                walk[[eos, tok.pad_id, tok.sot_id]] = 0
            nxt.append(int(rng.choice(len(walk), p=walk / walk.sum())))
        prefixes = [pre + [t] for pre, t in zip(prefixes, nxt)]
        tokens = torch.tensor(nxt)
    assert checked_contrast >= 20  # the distinctive rule itself was compared, not only plain sampling


def test_reference_rule_contrast_changes_the_distribution(tiny_coca):
    """Guards the reference: with contrast the distribution differs from plain sampling on the same set."""
    ref = ReferenceCoca(tiny_coca.model, _pixels(tiny_coca, 3, seed=5))
    tok = tiny_coca.tokenizer
    prefix = [tok.sot_id, tok.vocab_size - 1]
    rule = dict(top_k=6, top_p=None, eos=tok.eot_id, min_len=1, max_len=30)
    plain = ref.distribution(0, [0, 1, 2], False, prefix, **rule)
    dist = ref.distribution(0, [0, 1, 2], True, prefix, **rule)
    assert (plain > 0).sum() == 6 and np.array_equal(plain > 0, dist > 0)
    assert np.abs(plain - dist).max() > 1e-3


def test_generated_captions_are_possible_under_the_reference(tiny_coca):
    """End to end through ``generate_candidates``: every sampled token has positive probability under the
    reference rule for its own crop, its view's other crops as contrast, and the banned pad/start tokens."""
    bundle, tok = tiny_coca, tiny_coca.tokenizer
    n_masks, n_views, min_len, max_len = 3, 2, 3, 8
    views = torch.rand(n_masks, n_views, 3, bundle.image_size, bundle.image_size,
                       generator=torch.Generator().manual_seed(17))
    settings = [DecodeSetting("topk", 2, True), DecodeSetting("topp", 0.5, True)]
    cands = generate_candidates(bundle, views, settings, generator=torch.Generator().manual_seed(3),
                                min_len=min_len, max_len=max_len)
    mean = torch.tensor(bundle.mean).view(1, 3, 1, 1)
    std = torch.tensor(bundle.std).view(1, 3, 1, 1)
    banned = tuple(sorted({tok.pad_id, tok.sot_id} - {tok.eot_id}))
    for v in range(n_views):
        ref = ReferenceCoca(bundle.model, (views[:, v] - mean) / std)  # image m = mask m of view v
        for m in range(n_masks):
            for c in [c for c in cands[m] if c.view == v]:
                s = next(s for s in settings if s.name == c.setting and s.distinctive == c.distinctive)
                rule = dict(top_k=int(s.value) if s.kind == "topk" else None,
                            top_p=float(s.value) if s.kind == "topp" else None,
                            eos=tok.eot_id, min_len=min_len, max_len=max_len, banned=banned)
                assert c.tokens[0] == tok.sot_id and c.tokens[-1] == tok.eot_id
                for t in range(1, len(c.tokens)):
                    p = ref.distribution(m, list(range(n_masks)), s.distinctive, c.tokens[:t], **rule)
                    assert p[c.tokens[t]] > 0, (m, v, c.setting, t)
