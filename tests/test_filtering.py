"""DoC / uniqueness / correctness on hand-computed score matrices, keep policies, noun phrases, the CLIP scorer."""

import math

import pytest
import torch

from pseudo_ris.filtering import (ClipScorer, FilterPolicy, RuleNounExtractor, ScorerLoadError,
                                  build_noun_extractor, doc_scores, noun_prompt, rescore, select_candidates)
from pseudo_ris.filtering.doc import doc_scores_rows

torch.set_num_threads(1)

# masks 0..2; a caption's scores against every mask
M = [2.0, 1.0, 4.0]
C = [3.0, 2.0, 1.0]


def test_doc_hand_computed_logit():
    # M*C = [6, 2, 4]
    doc, uniq, corr = doc_scores(M, C, 0)
    assert doc == pytest.approx(6 / 4) and uniq == pytest.approx(3 / 2) and corr == 2.0
    doc, uniq, corr = doc_scores(M, C, 2)
    assert doc == pytest.approx(4 / 6) and uniq == pytest.approx(1 / 3) and corr == 4.0
    doc, uniq, _ = doc_scores(M, C, 1)
    assert doc == pytest.approx(2 / 6) and uniq == pytest.approx(2 / 3)


def test_doc_exp_transform_is_positive_and_monotone():
    # exp: DoC = exp(M_m + C_m - max_{j!=m}(M_j + C_j)); sums = [5, 3, 5]
    doc, uniq, corr = doc_scores(M, C, 0, "exp")
    assert doc == pytest.approx(math.exp(0.0)) and uniq == pytest.approx(math.exp(1.0)) and corr == 2.0
    doc, _, _ = doc_scores(M, C, 1, "exp")
    assert doc == pytest.approx(math.exp(-2.0))
    # negative cosines: the plain ratio flips meaning, the exp score does not
    neg_M, neg_C = [-1.0, -3.0], [-1.0, -3.0]   # mask 0 fits better on both
    assert doc_scores(neg_M, neg_C, 0)[0] < 1   # 1/9: the raw ratio calls the better mask worse
    assert doc_scores(neg_M, neg_C, 0, "exp")[0] > 1
    big = doc_scores([1000.0, 0.0], [1000.0, 0.0], 0, "exp")[0]
    assert math.isfinite(big)  # computed in log space, no overflow
    with pytest.raises(ValueError):
        doc_scores(M, C, 0, "softmax")


def test_single_mask_has_correctness_only():
    assert doc_scores([2.5], [1.0], 0) == (None, None, 2.5)


def _rows(docs, corr=None):
    corr = corr or [0.0] * len(docs)
    return [{"doc": d, "uniqueness": d, "correctness": c} for d, c in zip(docs, corr)]


def test_threshold_and_fallback_policies():
    rows = _rows([0.5, 1.2, 2.0, 1.0])
    assert select_candidates(rows, FilterPolicy(threshold=1.0)) == ([1, 2], "pass")  # strict: 1.0 does not pass
    assert select_candidates(rows, FilterPolicy(threshold=1.5)) == ([2], "pass")
    assert select_candidates(rows, FilterPolicy(threshold=5, fallback="drop")) == ([], "dropped")
    assert select_candidates(rows, FilterPolicy(threshold=5, fallback="topk", topk=2)) == ([1, 2], "fallback_topk")
    pol = FilterPolicy(threshold=5, fallback="random", seed=3)
    picks = {select_candidates(rows, pol, f"img{i}:0")[0][0] for i in range(40)}
    assert picks == {0, 1, 2, 3}  # random over all candidates ...
    assert select_candidates(rows, pol, "img7:0") == select_candidates(rows, pol, "img7:0")  # ... reproducibly
    assert select_candidates(rows, pol, "img7:0")[1] == "fallback_random"
    assert select_candidates([], pol) == ([], "dropped")


def _texts(pairs):
    return [{"text": text, "doc": doc, "uniqueness": doc, "correctness": 0.0} for text, doc in pairs]


def test_head_consensus_keeps_the_noun_most_candidates_use():
    rows = _texts([("a yellow circle", 5.0), ("a yellow square", 50.0), ("a circle", 0.5),
                   ("the yellow circle on the left", 3.0)])
    # DoC alone keeps the wrong noun, even as its best candidate
    assert select_candidates(rows, FilterPolicy(threshold=1.0)) == ([0, 1, 3], "pass")
    # 3 of 4 candidates say circle: the square is out, the threshold still applies among the circles
    assert select_candidates(rows, FilterPolicy(threshold=1.0, head_consensus=True)) == ([0, 3], "pass")
    # fallbacks choose among the consensus candidates only (indices stay those of the full list)
    assert select_candidates(rows, FilterPolicy(threshold=100, fallback="topk", head_consensus=True)) == \
        ([0], "fallback_topk")
    pol = FilterPolicy(threshold=100, fallback="random", head_consensus=True)
    assert {select_candidates(rows, pol, f"img{i}:0")[0][0] for i in range(30)} == {0, 2, 3}
    assert select_candidates(rows, FilterPolicy(threshold=100, fallback="drop", head_consensus=True)) == \
        ([], "dropped")
    # a tie is settled alphabetically, whatever the order of the rows
    tie = _texts([("a square", 5.0), ("a circle", 5.0)])
    assert select_candidates(tie, FilterPolicy(head_consensus=True)) == ([1], "pass")
    assert select_candidates(tie[::-1], FilterPolicy(head_consensus=True)) == ([0], "pass")
    # single-mask images: top-k by correctness among the consensus candidates
    single = [{"text": t, "doc": None, "uniqueness": None, "correctness": c}
              for t, c in [("a star", 9.0), ("a heart", 1.0), ("a red heart", 2.0)]]
    assert select_candidates(single, FilterPolicy(single_mask_topk=1, head_consensus=True)) == ([2], "single_mask")
    with pytest.raises(ValueError, match="head_consensus"):
        FilterPolicy(head_consensus="yes")


def test_head_consensus_reaches_the_policy_from_the_config():
    from pseudo_ris.generation.runner import policy_from_cfg

    assert policy_from_cfg({"threshold": 10, "head_consensus": True}).head_consensus is True
    assert policy_from_cfg({"threshold": 10}).head_consensus is False  # the paper's filter by default


def test_single_mask_policies():
    rows = _rows([None, None, None], corr=[1.0, 3.0, 2.0])
    assert select_candidates(rows, FilterPolicy(single_mask="topk", single_mask_topk=2)) == ([1, 2], "single_mask")
    assert select_candidates(rows, FilterPolicy(single_mask="all")) == ([0, 1, 2], "single_mask")
    assert select_candidates(rows, FilterPolicy(single_mask="drop")) == ([], "dropped")
    with pytest.raises(ValueError):
        FilterPolicy(fallback="maybe")


def test_rescore_uses_stored_vectors():
    row = {"mask_index": 0, "M_all": M, "C_all": C, "doc": None}
    assert rescore(row, "logit")["doc"] == pytest.approx(1.5)
    assert rescore(row, "exp")["doc"] == pytest.approx(1.0)


@pytest.mark.parametrize("caption, phrase, head", [
    ("a small red circle on the left", "a small red circle", "circle"),
    ("the big blue square to the right of the star", "the big blue square", "square"),
    ("a red one next to the ring", "a red one", "one"),
    ("a man riding a horse on the beach", "a man", "man"),
    ("two dogs playing in the grass", "two dogs", "dogs"),
    ("a building with a clock", "a building", "building"),
    ("there is a photo of a green heart", "a green heart", "heart"),
    ("a circle left of the square", "a circle", "circle"),
    ("the left circle", "the left circle", "circle"),
    ("A Big Pink Star.", "a big pink star", "star"),
])
def test_rule_noun_phrases(caption, phrase, head):
    np_ = RuleNounExtractor()(caption)
    assert (np_.text, np_.head) == (phrase, head)
    assert RuleNounExtractor(keep_modifiers=False)(caption).text == head


def test_noun_prompt_and_auto_extractor():
    assert noun_prompt("small red circle") == "a photo of a small red circle"
    assert noun_prompt("a small red circle") == "a photo of a small red circle"
    assert noun_prompt("the circle") == "a photo of the circle"
    assert noun_prompt("two dogs") == "a photo of two dogs"
    assert noun_prompt("circle") == "a photo of a circle"
    assert build_noun_extractor("rule")("a red circle on the left").head == "circle"
    assert build_noun_extractor("auto")("a red circle on the left").head == "circle"  # spaCy or rule
    with pytest.raises(ValueError):
        build_noun_extractor("nltk")


def _tiny_scorer():
    from pseudo_ris.captioning.coca import load_coca
    from pseudo_ris.captioning.tokenizer import WordTokenizer

    torch.manual_seed(0)
    tok = WordTokenizer(["a", "photo", "of", "red", "blue", "circle", "star", "on", "the", "left"])
    return ClipScorer.from_coca_bundle(load_coca("coca_tiny", tokenizer=tok))


def test_clip_scorer_from_coca_bundle():
    scorer = _tiny_scorer()
    views = torch.rand(5, 3, 40, 40)  # any size: the scorer resizes
    img = scorer.image_features(views)
    txt = scorer.text_features(["a photo of a red circle", "a blue star on the left", "a photo of the star"])
    assert img.shape[0] == 5 and txt.shape[0] == 3 and img.shape[1] == txt.shape[1]
    assert torch.allclose(img.norm(dim=-1), torch.ones(5), atol=1e-5)
    logits = scorer.logits(img, txt)
    assert logits.shape == (5, 3) and torch.isfinite(logits).all() and logits.std() > 0
    assert torch.allclose(logits, scorer.logit_scale * img @ txt.T)
    # the same view gives the same features regardless of batch company
    assert torch.allclose(scorer.image_features(views[2:3]), img[2:3], atol=1e-5)


def test_open_clip_scorer_missing_checkpoint(tmp_path):
    with pytest.raises(ScorerLoadError, match="nope.pt"):
        ClipScorer.from_open_clip("RN50", tmp_path / "nope.pt")


def test_open_clip_scorer_mismatched_checkpoint(tmp_path):
    # a state dict of another architecture (the tiny CoCa) must not load into RN50: clear error naming the file
    torch.save(_tiny_scorer().model.state_dict(), tmp_path / "coca_tiny_weights.pt")
    with pytest.raises(ScorerLoadError, match="coca_tiny_weights.pt"):
        ClipScorer.from_open_clip("RN50", tmp_path / "coca_tiny_weights.pt")


@pytest.mark.skipif(__import__("importlib").util.find_spec("spacy") is None, reason="spaCy not installed")
def test_spacy_extractor_when_available():
    from pseudo_ris.filtering import SpacyNounExtractor

    try:
        ext = SpacyNounExtractor()
    except OSError:
        pytest.skip("spaCy model en_core_web_sm not installed")
    assert ext("a small red circle on the left").head == "circle"


def test_doc_scores_rows_equal_the_per_row_scores_bit_for_bit():
    import random
    rng = random.Random(3)
    for transform in ("logit", "exp"):
        for n in (1, 2, 5):
            M = [[rng.choice([0.0, -0.0, 2.5, -1.25, rng.uniform(-40, 40), 1e300]) for _ in range(n)] for _ in range(60)]
            C = [[rng.choice([0.0, -0.0, 3.0, rng.uniform(-40, 40), 1e-300]) for _ in range(n)] for _ in range(60)]
            M[0] = [7] * n  # ints, a tie with itself
            C[0] = [7.0] * n
            masks = [rng.randrange(n) for _ in range(60)]
            got = doc_scores_rows(M, C, masks, transform)
            want = [doc_scores(m, c, i, transform) for m, c, i in zip(M, C, masks)]
            assert repr(got) == repr(want), transform  # repr: nan == nan, -0.0 vs 0.0, inf signs
    # not one finite matrix: left to the per-row path
    assert doc_scores_rows([[1.0, math.inf]], [[1.0, 2.0]], [0]) is None
    assert doc_scores_rows([[1.0, 2.0], [1.0]], [[1.0, 2.0], [1.0]], [0, 0]) is None
    assert doc_scores_rows([[1.0, 2.0]], [[1.0, 2.0]], [2]) is None
    assert doc_scores_rows([[1.0, None]], [[1.0, 2.0]], [0]) is None
