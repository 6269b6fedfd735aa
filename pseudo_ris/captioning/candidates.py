"""Caption candidates for all masks of one image: beam search + (distinctive) top-k / top-p samples per view.

per view, 1 beam-search caption and 10 distinctive samples (top-k in {5,7,9,11,13}, top-p in
{0.4,...,0.8}), length 5-30. Distinctive sampling (arXiv 2407.07412 Sec. 3) decodes all masks of the image
together one view at a time: the contrast set of mask i's row is the other masks' crops of the *same* view,
weighted by the dot product of the L2-normalised CoCa image latents of the two crops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from .coca import CocaBundle
from .decoding import beam_search, sample_rows
from .steppers import MAX_CONTRAST_GROUP, CachedCocaStepper, ReferenceCocaStepper, precompute_cross_kv

__all__ = ["DecodeSetting", "Candidate", "default_settings", "generate_candidates", "encode_views"]


@dataclass(frozen=True)
class DecodeSetting:
    """One decoding configuration. ``value``: beams for "beam", k for "topk", p for "topp"."""

    kind: Literal["beam", "topk", "topp"]
    value: float
    distinctive: bool = False

    def __post_init__(self):
        if self.kind not in ("beam", "topk", "topp"):
            raise ValueError(f"unknown decoding kind {self.kind!r}")
        if self.kind in ("beam", "topk") and (int(self.value) != self.value or self.value < 1):
            raise ValueError(f"{self.kind} needs a positive integer value, got {self.value}")
        if self.kind == "topp" and not 0 < self.value <= 1:
            raise ValueError(f"top-p must be in (0, 1], got {self.value}")
        if self.kind == "beam" and self.distinctive:
            raise ValueError("beam search has no distinctive variant")

    @property
    def name(self) -> str:
        if self.kind == "beam":
            return "beam"
        if self.kind == "topk":
            return f"topk{int(self.value)}"
        return f"topp{self.value:g}"


@dataclass
class Candidate:
    text: str
    view: int
    setting: str
    distinctive: bool
    tokens: list[int] = field(default_factory=list)
    score: float | None = None  # beam search: length-normalised log-probability


def default_settings(num_beams: int = 6) -> list[DecodeSetting]:
    """one beam-search caption + 5 distinctive top-k + 5 distinctive top-p samples."""
    return ([DecodeSetting("beam", num_beams)]
            + [DecodeSetting("topk", k, True) for k in (5, 7, 9, 11, 13)]
            + [DecodeSetting("topp", p, True) for p in (0.4, 0.5, 0.6, 0.7, 0.8)])


@torch.no_grad()
def encode_views(bundle: CocaBundle, views: torch.Tensor, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """[M,3,S,S] in [0,1] -> (normalised latents [M,E], image tokens [M,T,D])."""
    lats, toks = [], []
    for start in range(0, views.shape[0], chunk):
        lat, tok = bundle.encode_images(bundle.preprocess(views[start:start + chunk]))
        lats.append(lat)
        toks.append(tok)
    return torch.cat(lats), torch.cat(toks)


def _chunks_by_budget(units: list[tuple[int, list[int], int]], budget: int) -> list[list[tuple[int, list[int]]]]:
    """Greedy packing of (group, rows, pairs_per_row) into chunks of at most ``budget`` pairs (>= 1 row each)."""
    chunks, current, used = [], [], 0
    for group, rows, per_row in units:
        per_chunk = max(1, budget // per_row)
        for start in range(0, len(rows), per_chunk):
            piece = rows[start:start + per_chunk]
            cost = len(piece) * per_row
            if current and used + cost > budget:
                chunks.append(current)
                current, used = [], 0
            current.append((group, piece))
            used += cost
    if current:
        chunks.append(current)
    return chunks


@torch.no_grad()
def generate_candidates(
    bundle: CocaBundle,
    views: torch.Tensor,
    settings: list[DecodeSetting] | None = None,
    *,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    min_len: int = 5,
    max_len: int = 30,
    cached: bool = True,
) -> list[list[Candidate]]:
    """Candidates for every mask of one image.

    ``views``: float [N_masks, V_views, 3, S, S] in [0,1]. ``batch_size`` bounds the decoder sequences in
    flight (rows x contrast images), i.e. memory; results are reproducible for a fixed ``generator`` seed
    and ``batch_size``. Returns, per mask, candidates ordered by view then setting.
    """
    settings = default_settings() if settings is None else list(settings)
    if views.ndim != 5 or views.shape[2] != 3:
        raise ValueError(f"expected views [N_masks, V_views, 3, S, S], got {tuple(views.shape)}")
    n_masks, n_views = views.shape[:2]
    out: list[list[Candidate]] = [[] for _ in range(n_masks)]
    if n_masks == 0 or n_views == 0:
        return out
    tok = bundle.tokenizer
    device = bundle.device
    max_positions = max_len - 1
    stepper_cls = CachedCocaStepper if cached else ReferenceCocaStepper
    # view-major image index: m = v * N + n, group = view
    flat = views.transpose(0, 1).reshape(n_views * n_masks, *views.shape[2:])
    latents, image_tokens = encode_views(bundle, flat)
    groups_all = torch.arange(n_views, device=device).repeat_interleave(n_masks)
    results: dict[tuple[int, int], Candidate] = {}  # (image m, setting index) -> candidate

    def make(m: int, s_idx: int, tokens: list[int], score: float | None = None) -> None:
        s = settings[s_idx]
        results[(m, s_idx)] = Candidate(text=tok.decode(tokens), view=m // n_masks, setting=s.name,
                                        distinctive=s.distinctive, tokens=tokens, score=score)

    for s_idx, s in enumerate(settings):
        if s.kind != "beam":
            continue
        beams = int(s.value)
        per_chunk = max(1, batch_size // beams)
        for start in range(0, flat.shape[0], per_chunk):
            imgs = torch.arange(start, min(start + per_chunk, flat.shape[0]), device=device)
            own = torch.arange(imgs.numel(), device=device).repeat_interleave(beams)
            stepper = stepper_cls(bundle.model, image_tokens[imgs], torch.zeros_like(imgs),
                                  torch.ones(imgs.numel(), imgs.numel(), device=device), own,
                                  torch.zeros_like(own, dtype=torch.bool), max_positions)
            for m, res in zip(imgs.tolist(), beam_search(stepper, imgs.numel(), beams, sot_id=tok.sot_id,
                                                         eos_id=tok.eot_id, pad_id=tok.pad_id, min_len=min_len,
                                                         max_len=max_len)):
                make(m, s_idx, res.tokens, res.score)

    sampling = [i for i, s in enumerate(settings) if s.kind != "beam"]
    if sampling:
        contrast_ok = 2 <= n_masks <= MAX_CONTRAST_GROUP
        units = []
        for v in range(n_views):
            rows = [(v * n_masks + n, i) for n in range(n_masks) for i in sampling]
            for distinctive in (False, True):
                sel = [r for r in rows if settings[r[1]].distinctive == distinctive]
                if sel:
                    units.append((v, sel, n_masks if (distinctive and contrast_ok) else 1))
        group_kv: dict[int, list] = {}  # cross-attention K/V per view group, computed once, reused by its chunks
        for chunk in _chunks_by_budget(units, batch_size):
            group_ids = sorted({g for g, _ in chunk})
            imgs = torch.cat([torch.arange(g * n_masks, (g + 1) * n_masks, device=device) for g in group_ids])
            local = {int(m): i for i, m in enumerate(imgs.tolist())}
            rows = [r for _, piece in chunk for r in piece]
            own = torch.tensor([local[m] for m, _ in rows], device=device)
            contrast = torch.tensor([settings[i].distinctive for _, i in rows], device=device)
            top_k = torch.tensor([int(settings[i].value) if settings[i].kind == "topk" else 0 for _, i in rows],
                                 device=device)
            top_p = torch.tensor([float(settings[i].value) if settings[i].kind == "topp" else 1.0
                                  for _, i in rows], device=device)
            lat = latents[imgs]
            args = (bundle.model, image_tokens[imgs], groups_all[imgs], lat @ lat.t(), own, contrast, max_positions)
            if cached:
                for g in [g for g in group_kv if g not in group_ids]:
                    del group_kv[g]  # chunks come in group order: a group left behind is never needed again
                for g in group_ids:
                    if g not in group_kv:
                        group_kv[g] = precompute_cross_kv(
                            bundle.model, image_tokens[g * n_masks:(g + 1) * n_masks])
                if len(group_ids) == 1:
                    kv = group_kv[group_ids[0]]
                else:
                    kv = [tuple(torch.cat([group_kv[g][layer][i] for g in group_ids]) for i in (0, 1))
                          for layer in range(len(group_kv[group_ids[0]]))]
                stepper = CachedCocaStepper(*args, cross_kv=kv)
            else:
                stepper = ReferenceCocaStepper(*args)
            seqs = sample_rows(stepper, sot_id=tok.sot_id, eos_id=tok.eot_id, pad_id=tok.pad_id, top_k=top_k,
                               top_p=top_p, min_len=min_len, max_len=max_len, generator=generator,
                               banned_ids=sorted({tok.pad_id, tok.sot_id} - {tok.eot_id}))
            for (m, s_idx), seq in zip(rows, seqs):
                make(m, s_idx, seq)

    for v in range(n_views):
        for n in range(n_masks):
            for s_idx in range(len(settings)):
                out[n].append(results[(v * n_masks + n, s_idx)])
    return out
