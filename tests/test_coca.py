"""CoCa loading, checkpoints and tokenizers."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch

from pseudo_ris.captioning import (
    CocaLoadError,
    OpenClipTokenizer,
    TokenizerError,
    WordTokenizer,
    load_coca,
    save_coca_checkpoint,
)
from pseudo_ris.data.errors import PseudoRISError

torch.set_num_threads(1)

WORDS = "a the big small red green blue cube ball cone left right of".split()


@pytest.fixture(scope="module")
def word_tok():
    return WordTokenizer(WORDS, context_length=32)


@pytest.fixture(scope="module")
def tiny(word_tok):
    torch.manual_seed(0)
    return load_coca("coca_tiny", tokenizer=word_tok)


def _logits(bundle, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = bundle.preprocess(torch.rand(2, 3, bundle.image_size, bundle.image_size, generator=g))
    text = bundle.tokenizer.encode(["a big red cube", "the small ball"])[:, :6]
    with torch.no_grad():
        return bundle.model(x, text, output_labels=False)["logits"]


# ---------------------------------------------------------------- tokenizers


def test_word_tokenizer_round_trip_and_specials(word_tok, tmp_path):
    assert (word_tok.pad_id, word_tok.sot_id, word_tok.eot_id) == (0, 1, 2)
    assert word_tok.vocab_size == 4 + len(WORDS)
    ids = word_tok.encode(["A big red cube.", "zebra ball"])
    assert ids.shape == (2, 32) and ids.dtype == torch.long
    assert ids[0, 0] == word_tok.sot_id
    assert word_tok.decode(ids[0]) == "a big red cube <unk>"  # "." is not in the vocabulary
    assert word_tok.decode(ids[1]) == "<unk> ball"
    assert int((ids[1] != 0).sum()) == 4  # sot, unk, ball, eot then pads
    path = word_tok.save(tmp_path / "vocab.json")
    again = WordTokenizer.load(path)
    assert again.vocab == word_tok.vocab and again.context_length == 32
    assert torch.equal(again.encode(["the cone"]), word_tok.encode(["the cone"]))


def test_word_tokenizer_truncates_and_keeps_eot():
    tok = WordTokenizer(["a"], context_length=5)
    ids = tok.encode(["a a a a a a a"])[0].tolist()
    assert ids == [1, 4, 4, 4, 2]


def test_word_tokenizer_bad_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"vocab": ["x", "y"]}))
    with pytest.raises(TokenizerError, match="bad.json"):
        WordTokenizer.load(bad)
    with pytest.raises(TokenizerError, match="missing.json"):
        WordTokenizer.load(tmp_path / "missing.json")


def test_open_clip_tokenizer_ids_from_open_clip():
    tok = OpenClipTokenizer()
    ref = open_clip.get_tokenizer("coca_ViT-B-32")
    assert tok.sot_id == ref.sot_token_id and tok.eot_id == ref.eot_token_id and tok.pad_id == 0
    assert tok.vocab_size == 49408 and tok.context_length == 76
    ids = tok.encode(["a dog on a bench"])
    assert ids.shape == (1, 76) and ids[0, 0] == tok.sot_id
    assert tok.decode(ids[0]) == "a dog on a bench"


# ---------------------------------------------------------------- loading


def test_tiny_random_init_has_initialised_decoder(tiny, word_tok):
    proj = tiny.model.text_decoder.text_projection.detach()
    assert proj.shape == (128, word_tok.vocab_size)
    assert torch.isfinite(proj).all() and float(proj.std()) > 1e-3
    logits = _logits(tiny)
    assert logits.shape == (2, 6, word_tok.vocab_size)
    assert torch.isfinite(logits).all() and float(logits.std()) > 1e-3
    assert tiny.image_size == 64 and not tiny.model.training


def test_preprocess_normalises(tiny):
    x = torch.full((1, 3, 64, 64), 0.5)
    out = tiny.preprocess(x)
    expected = [(0.5 - m) / s for m, s in zip(tiny.mean, tiny.std)]
    assert torch.allclose(out[0, :, 0, 0], torch.tensor(expected), atol=1e-6)
    assert tiny.preprocess(torch.rand(2, 3, 80, 80)).shape == (2, 3, 64, 64)


def test_checkpoint_round_trip(tiny, tmp_path):
    path = save_coca_checkpoint(tiny, tmp_path / "coca.pt")
    loaded = load_coca("coca_tiny", path)
    assert loaded.tokenizer.vocab == tiny.tokenizer.vocab
    assert torch.equal(_logits(loaded), _logits(tiny))
    other = load_coca("coca_tiny", tokenizer=tiny.tokenizer)  # fresh random init differs
    assert not torch.equal(_logits(other), _logits(tiny))


def test_open_clip_state_dict_file_loads(tiny, tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(tiny.model.state_dict(), path)
    loaded = load_coca("coca_tiny", str(path), tokenizer=tiny.tokenizer)
    assert torch.equal(_logits(loaded), _logits(tiny))


def test_mismatched_checkpoint_names_file_and_keys(tiny, word_tok, tmp_path):
    path = tmp_path / "two_layers.pt"
    torch.save(tiny.model.state_dict(), path)
    with pytest.raises(CocaLoadError, match=r"two_layers\.pt.*missing keys.*text\.transformer\.resblocks\.2"):
        load_coca("coca_tiny", str(path), tokenizer=word_tok, text_cfg={"layers": 3})
    bigger = WordTokenizer(WORDS + ["extra"], context_length=32)
    with pytest.raises(PseudoRISError, match=r"shape mismatch.*token_embedding"):
        load_coca("coca_tiny", str(path), tokenizer=bigger)


def test_unknown_name_and_tag():
    with pytest.raises(CocaLoadError, match="unknown CoCa model"):
        load_coca("coca_nonexistent")
    with pytest.raises(CocaLoadError, match="neither a file nor a known tag"):
        load_coca("coca_ViT-B-32", "no_such_tag")


def test_small_vocab_config_requires_tokenizer():
    with pytest.raises(CocaLoadError, match="WordTokenizer"):
        load_coca("coca_tiny")


def test_vit_b32_builds_random_init():
    bundle = load_coca("coca_ViT-B-32")
    assert isinstance(bundle.tokenizer, OpenClipTokenizer)
    assert bundle.image_size == 224
    logits = _logits(bundle)
    assert logits.shape[-1] == 49408
    assert torch.isfinite(logits).all() and float(logits.std()) > 1e-3
