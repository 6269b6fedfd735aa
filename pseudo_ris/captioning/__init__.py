"""Captioning: CoCa loading, tokenizers, and fast (key-value cached) decoding incl. distinctive sampling.

Public API::

    from pseudo_ris.captioning import load_coca, generate_candidates, default_settings, DecodeSetting
    bundle = load_coca("coca_ViT-L-14", "mscoco_finetuned_laion2b_s13b_b90k")   # or a project config/checkpoint
    cands = generate_candidates(bundle, views)   # views: float [N_masks, V_views, 3, S, S] in [0,1]
"""

from .candidates import Candidate, DecodeSetting, default_settings, encode_views, generate_candidates
from .coca import CocaBundle, CocaLoadError, init_text_decoder, load_coca, save_coca_checkpoint
from .decoding import beam_search, distinctive_next_token_probs, next_token_probs, sample_rows
from .tokenizer import CaptionTokenizer, OpenClipTokenizer, TokenizerError, WordTokenizer

__all__ = [
    "CaptionTokenizer", "OpenClipTokenizer", "WordTokenizer", "TokenizerError",
    "CocaBundle", "CocaLoadError", "load_coca", "save_coca_checkpoint", "init_text_decoder",
    "distinctive_next_token_probs", "next_token_probs", "sample_rows", "beam_search",
    "Candidate", "DecodeSetting", "default_settings", "generate_candidates", "encode_views",
]
