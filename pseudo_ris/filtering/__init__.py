"""Distinctiveness-based text filtering: noun phrases, a CLIP-style scorer, DoC and keep policies."""

from pseudo_ris.filtering.doc import FilterPolicy, doc_scores, rescore, select_candidates
from pseudo_ris.filtering.nouns import (NounPhrase, RuleNounExtractor, SpacyNounExtractor, build_noun_extractor,
                                        noun_prompt)
from pseudo_ris.filtering.scorer import ClipScorer, ScorerLoadError

__all__ = ["FilterPolicy", "doc_scores", "rescore", "select_candidates", "NounPhrase", "RuleNounExtractor",
           "SpacyNounExtractor", "build_noun_extractor", "noun_prompt", "ClipScorer", "ScorerLoadError"]
