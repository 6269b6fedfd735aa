"""Caption decoding: the distinctive one-step rule (pure) and samplers over a logit stepper.

Distinctive caption sampling, arXiv 2407.07412 Sec. 3. For mask i at a step with prefix y_<t:
  1. z_i = decoder logits of (image_i, y_<t); EOS is impossible while the prefix (start token included) is
     shorter than ``min_len`` tokens;
  2. candidate set S_i = top-k of z_i, or top-p: sort softmax(z_i) ascending, drop tokens whose cumulative
     probability is <= 1 - p, always keep the best token (HF ``TopK/TopPLogitsWarper`` semantics as in the
     official code; exact ties at the boundary are all kept, for top-k as in HF, for top-p where HF would keep
     an arbitrary subset of the tied tokens);
  3. p_eos = softmax(z_i restricted to S_i)[EOS];
  4. if the contrast set is non-empty and small (1 <= N-1 <= 29): z_dep = mean_{j != i} s_ij z_j with s_ij the
     dot product of L2-normalised CoCa image latents, p = softmax((z_i - z_dep) restricted to S_i);
     otherwise p = softmax(z_i restricted to S_i);
  5. p[EOS] := p_eos (replaced, **not renormalised**);
  6. when the next token would be the ``max_len``-th (prefix_len + 1 == max_len) EOS is forced.

Decision: ``next_token_probs`` / ``distinctive_next_token_probs`` return the raw vector of step 5 (it may sum to
more or less than 1) and the samplers draw from exactly that vector, normalised: p / sum(p), which is what
``torch.multinomial`` (the official implementation) does. ``sample_categorical`` draws from p / sum(p) by inverse
CDF because ``torch.multinomial`` is ~20x slower on CPU for a 49k vocabulary.

Generation stops for a row when it emits EOS or the pad token (the official loop treats both as finished);
``generate_candidates`` bans the pad and start tokens from sampling (``banned_ids``), so with open_clip's BPE the
token "!" (id 0 = pad) cannot end a caption early -- a deliberate deviation from the official quirk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np
import torch

from .cpu_kernels import matmul

__all__ = [
    "MAX_CONTRAST",
    "LazyContrast",
    "as_dense",
    "LogitStepper",
    "next_token_probs",
    "distinctive_next_token_probs",
    "sample_rows",
    "sample_categorical",
    "beam_search",
    "BeamResult",
]

MAX_CONTRAST = 29  # N - 1 > 29 (N > 30 masks): plain sampling, as in the official code


class LogitStepper(Protocol):
    has_contrast: torch.Tensor  # [R] bool

    @property
    def n_rows(self) -> int: ...

    def step(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def select(self, rows: torch.Tensor) -> None: ...


def _as_row_tensor(value, n: int, dtype, device) -> torch.Tensor | None:
    if value is None:
        return None
    t = torch.as_tensor(value, dtype=dtype, device=device)
    return t.expand(n).clone() if t.ndim == 0 else t


@dataclass
class LazyContrast:
    """z_dep = hidden @ weight, evaluated only where the rule needs it.

    By linearity of CoCa's bias-free vocabulary projection, mean_j s_ij z_j = (mean_j s_ij h_j) W;
    and only the candidate columns S_i of z_dep matter, so with small candidate sets (top-k, trained models'
    top-p) the second projection shrinks to a few columns."""

    hidden: torch.Tensor  # [R, D]
    weight: torch.Tensor  # [D, V]
    dense: torch.Tensor | None = None  # hidden @ weight when the stepper already projected it (fused with z)
    on_use: Callable[[bool], None] | None = None  # told whether an evaluation needed most columns

    def full(self) -> torch.Tensor:
        return matmul(self.hidden, self.weight) if self.dense is None else self.dense

    def on_columns(self, keep: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """[R,V], exact on the columns kept by any selected row (``keep`` [R,V], ``rows`` [R] bool); elsewhere 0,
        or the exact value when the projection was already done (``dense``)."""
        idx = torch.nonzero(rows).flatten()
        if idx.numel() == 0:
            return torch.zeros(keep.shape, dtype=self.hidden.dtype, device=self.hidden.device)
        cols = torch.nonzero(keep[idx].any(dim=0)).flatten()
        most = cols.numel() * 4 >= keep.shape[1]
        if self.on_use is not None:
            self.on_use(most)
        if self.dense is not None:
            return self.dense
        out = torch.zeros(keep.shape, dtype=self.hidden.dtype, device=self.hidden.device)
        if most:
            out[idx] = matmul(self.hidden[idx], self.weight)
        else:
            out[idx[:, None], cols[None, :]] = matmul(self.hidden[idx], self.weight[:, cols])
        return out


def as_dense(z_dep: "torch.Tensor | LazyContrast") -> torch.Tensor:
    return z_dep.full() if isinstance(z_dep, LazyContrast) else z_dep


def _sorted_values(x: torch.Tensor) -> torch.Tensor:
    """Row-wise ascending sort, values only (numpy's is ~20x faster than torch.sort on CPU for 49k columns)."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.detach().numpy(), axis=-1))
    return torch.sort(x, dim=-1).values


def candidate_mask(z: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None) -> torch.Tensor:
    """Bool [R,V]: the candidate set S of each row. A row uses top-k where ``top_k > 0``, else top-p."""
    r, v = z.shape
    # -inf logits (banned tokens, EOS below min_len) are never candidates: the top-k threshold is raised to the
    # smallest finite value (k may exceed the finite logits), so one comparison keeps only finite tokens; top-p
    # needs no such guard, a -inf token has cumulative mass 0 <= 1 - p and is always dropped
    lowest = torch.finfo(z.dtype).min
    keep = torch.zeros(z.shape, dtype=torch.bool, device=z.device)
    use_k = (top_k > 0) if top_k is not None else torch.zeros(r, dtype=torch.bool, device=z.device)
    if use_k.any():
        k = top_k[use_k].clamp(max=v).long()
        zk = z[use_k]
        kth = torch.topk(zk, int(k.max()), dim=-1).values.gather(1, (k - 1)[:, None])
        keep[use_k] = zk >= kth.clamp(min=lowest)
    use_p = ~use_k
    if use_p.any():
        if top_p is None:
            raise ValueError("rows without top_k need top_p")
        zp = z[use_p]
        p = top_p[use_p].to(z.dtype)
        sorted_logits = _sorted_values(zp)  # ascending
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # cum is non-decreasing, so the dropped tokens (cum <= 1 - p) are a prefix of the ascending order; the
        # best token is always kept. Keeping every token whose logit reaches the first kept one's is the same set
        # up to exact ties at the boundary, which are all kept (as top-k keeps ties at the k-th logit).
        n_drop = (cum <= (1 - p)[:, None]).sum(dim=1).clamp(max=v - 1)
        threshold = sorted_logits.gather(1, n_drop[:, None])
        keep[use_p] = zp >= threshold
    return keep


def next_token_probs(
    z: torch.Tensor,
    z_dep: torch.Tensor | LazyContrast | None,
    has_contrast: torch.Tensor | None,
    *,
    top_k=None,
    top_p=None,
    eos_id: int,
    prefix_len: int,
    min_len: int = 5,
    max_len: int = 30,
) -> torch.Tensor:
    """Batched one-step rule (module docstring). ``z``, ``z_dep``: [R,V] (or lazy); ``top_k``/``top_p``: scalar or [R]
    (per row: top_k > 0 selects top-k, otherwise top_p is used). Returns the raw probability vectors [R,V]."""
    if prefix_len < 1:
        raise ValueError(f"prefix_len counts the start token and must be >= 1, got {prefix_len}")
    if prefix_len + 1 > max_len:
        raise ValueError(f"prefix_len {prefix_len} leaves no room below max_len {max_len}")
    r, v = z.shape
    if prefix_len + 1 == max_len:
        out = torch.zeros(r, v, dtype=torch.float32, device=z.device)
        out[:, eos_id] = 1.0
        return out
    z = z.float().clone()
    if prefix_len < min_len:
        z[:, eos_id] = float("-inf")
    top_k = _as_row_tensor(top_k, r, torch.long, z.device)
    top_p = _as_row_tensor(top_p, r, torch.float32, z.device)
    keep = candidate_mask(z, top_k, top_p)
    masked = z.masked_fill_(~keep, float("-inf"))  # z is this function's own copy
    plain = masked.softmax(dim=-1)
    if z_dep is None or has_contrast is None or not bool(has_contrast.any()):
        return plain
    if isinstance(z_dep, LazyContrast):
        z_dep = z_dep.on_columns(keep, has_contrast)
    z_dep = z_dep.float()
    if not bool(has_contrast.all()):
        z_dep = torch.where(has_contrast[:, None], z_dep, torch.zeros((), dtype=z_dep.dtype, device=z.device))
    probs = (masked - z_dep).softmax(dim=-1)  # -inf stays -inf: the same candidate set
    probs[:, eos_id] = plain[:, eos_id]  # p[EOS] replaced by the plain stopping probability
    return probs


def distinctive_next_token_probs(
    target_logits: torch.Tensor,
    other_logits: torch.Tensor,
    similarity: torch.Tensor,
    *,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int,
    prefix_len: int,
    min_len: int = 5,
    max_len: int = 30,
) -> torch.Tensor:
    """The paper's next-token distribution for one row (arXiv 2407.07412 Sec. 3).

    ``target_logits`` [V] = z_i, ``other_logits`` [N-1,V] = z_j of the other masks' crops under the same prefix,
    ``similarity`` [N-1] = s_ij. ``prefix_len`` counts the tokens already in the sequence, start token
    included. Exactly one of ``top_k`` / ``top_p``. Returns the raw vector [V] (p[EOS] replaced, not
    renormalised); sample with ``torch.multinomial`` or ``sample_categorical``, which normalise.
    """
    if (top_k is None) == (top_p is None):
        raise ValueError("give exactly one of top_k / top_p")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    z = target_logits.reshape(1, -1)
    others = other_logits.reshape(-1, z.shape[1])
    sims = similarity.reshape(-1).to(others.dtype)
    if sims.numel() != others.shape[0]:
        raise ValueError(f"{others.shape[0]} other logits but {sims.numel()} similarities")
    n_other = others.shape[0]
    has_contrast = torch.tensor([1 <= n_other <= MAX_CONTRAST], device=z.device)
    z_dep = (sims[:, None] * others).mean(dim=0, keepdim=True) if n_other else None
    return next_token_probs(z, z_dep, has_contrast, top_k=0 if top_k is None else top_k,
                            top_p=1.0 if top_p is None else top_p, eos_id=eos_id, prefix_len=prefix_len,
                            min_len=min_len, max_len=max_len)[0]


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row from probs / probs.sum() (rows need not sum to 1), by inverse CDF in float64.

    Same distribution as ``torch.multinomial(probs, 1)`` but ~20x faster on CPU for a 49k vocabulary. With
    ``right=True`` the search lands on the first token whose cumulative mass exceeds the draw, so tokens with
    probability 0 are never returned; u < 1 in float64 keeps the draw below the total."""
    cdf = probs.double().cumsum(dim=-1)
    u = torch.rand(probs.shape[0], 1, dtype=torch.float64, device=probs.device, generator=generator)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
    return idx.flatten().clamp(max=probs.shape[1] - 1)


@torch.no_grad()
def sample_rows(
    stepper: LogitStepper,
    *,
    sot_id: int,
    eos_id: int,
    pad_id: int,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_len: int = 5,
    max_len: int = 30,
    generator: torch.Generator | None = None,
    compact_fraction: float = 0.25,
    banned_ids: Sequence[int] = (),
) -> list[list[int]]:
    """Sample one caption per stepper row (top-k where ``top_k[r] > 0`` else top-p; distinctive where the stepper
    has contrast for the row). Returns token lists that start with ``sot_id`` and end with EOS or pad.

    Finished rows are dropped from the stepper (caches compacted) once ``compact_fraction`` of the live rows
    are finished; until then they ride along and their outputs are ignored. ``banned_ids`` (e.g. pad and start
    tokens, which no caption should contain) get logit -inf before the rule is applied."""
    n = stepper.n_rows
    device = top_k.device
    # tokens of every row, -1 after its end: written once per step for all rows (no Python loop over rows)
    buf = torch.full((n, max_len), -1, dtype=torch.long, device=device)
    buf[:, 0] = sot_id
    live = torch.arange(n, device=device)  # original row of each stepper row
    done = torch.zeros(n, dtype=torch.bool, device=device)  # indexed by stepper row
    tokens = torch.full((n,), sot_id, dtype=torch.long, device=device)
    for prefix_len in range(1, max_len):
        if prefix_len + 1 == max_len:
            buf[live[~done], prefix_len] = eos_id
            break
        z, z_dep = stepper.step(tokens)
        if banned_ids:
            z = z.clone()
            z[:, list(banned_ids)] = float("-inf")
        probs = next_token_probs(z, z_dep, stepper.has_contrast, top_k=top_k[live], top_p=top_p[live],
                                 eos_id=eos_id, prefix_len=prefix_len, min_len=min_len, max_len=max_len)
        nxt = sample_categorical(probs, generator)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        buf[live[~done], prefix_len] = nxt[~done]
        done = done | (nxt == eos_id) | (nxt == pad_id)
        if bool(done.all()):
            break
        if float(done.float().mean()) >= compact_fraction:
            keep = torch.nonzero(~done).flatten()
            stepper.select(keep)
            live, done, nxt = live[keep], done[keep], nxt[keep]
        tokens = nxt
    return [row[row >= 0].tolist() for row in buf.cpu()]


@dataclass
class BeamResult:
    tokens: list[int]
    score: float  # sum of token log-probabilities / number of generated tokens (EOS included)


@torch.no_grad()
def beam_search(
    stepper: LogitStepper,
    n_items: int,
    num_beams: int,
    *,
    sot_id: int,
    eos_id: int,
    pad_id: int | None = None,
    min_len: int = 5,
    max_len: int = 30,
) -> list[BeamResult]:
    """Plain beam search (log-softmax scores, length-normalised final ranking, HF-style stopping heuristic).

    The stepper must hold ``n_items * num_beams`` rows, row ``r`` belonging to item ``r // num_beams`` (no
    contrast). The pad and start tokens are never proposed. With ``num_beams=1`` this is greedy decoding.

    Note on the official setting (6 beams in 3 groups): open_clip's group beam search passes no diversity
    penalty and ranks by summed raw logits, so its 3 groups run the same 2-beam search; we run one plain
    beam search with log-probabilities instead (documented deviation)."""
    b = num_beams
    scores = torch.full((n_items, b), float("-inf"))
    scores[:, 0] = 0.0
    seqs: list[list[list[int]]] = [[[sot_id] for _ in range(b)] for _ in range(n_items)]
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(n_items)]
    active = list(range(n_items))  # items whose beams are in the stepper, in stepper order
    tokens = torch.full((n_items * b,), sot_id, dtype=torch.long)
    for prefix_len in range(1, max_len):
        if prefix_len + 1 == max_len:  # forced EOS closes every live beam
            for item in active:
                for j in range(b):
                    if torch.isfinite(scores[item, j]):
                        finished[item].append((float(scores[item, j]) / prefix_len, seqs[item][j] + [eos_id]))
            break
        z, _ = stepper.step(tokens)
        logits = z.float()
        if prefix_len < min_len:
            logits[:, eos_id] = float("-inf")
        if pad_id is not None and pad_id != eos_id:
            logits[:, pad_id] = float("-inf")
        if sot_id != eos_id:
            logits[:, sot_id] = float("-inf")
        logp = logits.log_softmax(dim=-1).cpu()
        vocab = logp.shape[1]
        cand = (scores[active].unsqueeze(-1) + logp.view(len(active), b, vocab)).view(len(active), b * vocab)
        top_scores, top_idx = cand.topk(2 * b, dim=1)
        parents, new_tokens, next_active = [], [], []
        for a, item in enumerate(active):
            new_seqs, new_scores = [], []
            for rank, (sc, ix) in enumerate(zip(top_scores[a].tolist(), top_idx[a].tolist())):
                beam, tok = divmod(ix, vocab)
                if sc == float("-inf"):
                    break
                if tok == eos_id:
                    if rank < b:
                        finished[item].append((sc / prefix_len, seqs[item][beam] + [eos_id]))
                    continue
                new_seqs.append(seqs[item][beam] + [tok])
                new_scores.append(sc)
                parents.append(a * b + beam)
                new_tokens.append(tok)
                if len(new_seqs) == b:
                    break
            finished[item] = sorted(finished[item], key=lambda x: -x[0])[:b]
            best_live = max(new_scores) if new_scores else float("-inf")
            is_done = not new_seqs or (
                len(finished[item]) >= b and finished[item][-1][0] >= best_live / (prefix_len + 1))
            if is_done:
                parents = parents[: len(parents) - len(new_seqs)]
                new_tokens = new_tokens[: len(new_tokens) - len(new_seqs)]
                continue
            while len(new_seqs) < b:  # pad the beam with dead copies so every item keeps b rows
                new_seqs.append(new_seqs[0])
                new_scores.append(float("-inf"))
                parents.append(a * b)
                new_tokens.append(new_tokens[-1])
            seqs[item] = new_seqs
            scores[item] = torch.tensor(new_scores)
            next_active.append(item)
        if not next_active:
            break
        stepper.select(torch.tensor(parents, dtype=torch.long))
        active = next_active
        tokens = torch.tensor(new_tokens, dtype=torch.long)
    results = []
    for item in range(n_items):
        if finished[item]:
            score, toks = max(finished[item], key=lambda x: x[0])
        else:  # cannot happen with max_len >= 2; keep a well-formed fallback
            score, toks = float("-inf"), [sot_id, eos_id]
        results.append(BeamResult(tokens=toks, score=score))
    return results
