"""Offline by default: pretrained tags and hub names resolve from local caches only, unless allow_download=true.

The network is cut (socket connections raise) and the caches point at empty temporary folders, so a loader that
tried to fetch anything would fail with the sentinel error instead of the project's one-line message.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import yaml

from pseudo_ris.captioning import load_coca
from pseudo_ris.data.errors import PseudoRISError
from pseudo_ris.filtering.scorer import ClipScorer
from pseudo_ris.weights import WeightsUnavailableError, hub_file, init_untrained_open_clip, resolve_open_clip_tag

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
COCA_TAG = "mscoco_finetuned_laion2b_s13b_b90k"


class NetworkUsed(AssertionError):
    pass


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No network, empty open_clip and Hugging Face caches; returns the list of attempted connections."""
    import huggingface_hub.constants as hf_constants

    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] if args else kwargs)
        raise NetworkUsed("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # open_clip's URL cache is ~/.cache/clip
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    try:
        import transformers.utils.hub as tf_hub

        if hasattr(tf_hub, "TRANSFORMERS_CACHE"):
            monkeypatch.setattr(tf_hub, "TRANSFORMERS_CACHE", str(tmp_path / "hf"))
    except ImportError:  # pragma: no cover
        pass
    return attempts


def _one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text
    return text


# ---------------------------------------------------------------- refused without a local copy, never fetched


def test_coca_tag_not_cached_is_one_line_error_without_network(offline):
    with pytest.raises(WeightsUnavailableError) as info:
        load_coca("coca_ViT-B-32", COCA_TAG)
    msg = _one_line(info.value)
    assert f"coca_ViT-B-32/{COCA_TAG}" in msg and "allow_download=true" in msg and "local" in msg
    assert isinstance(info.value, PseudoRISError)
    assert offline == []


def test_scorer_tag_not_cached_refused(offline):
    with pytest.raises(WeightsUnavailableError, match=r"RN50/openai.*generator\.scorer\.pretrained=.*allow_download"):
        ClipScorer.from_open_clip("RN50", "openai")
    assert offline == []


def test_cris_tag_not_cached_refused(offline):
    from ris_models.registry import build_model

    with pytest.raises(WeightsUnavailableError, match=r"model\.pretrained=.*allow_download=true"):
        build_model("cris_tiny", pretrained="openai")
    assert offline == []


def test_bert_hub_name_not_cached_refused(offline):
    from ris_models.registry import build_model

    with pytest.raises(WeightsUnavailableError, match=r"bert-base-uncased.*model\.bert_path=<local directory>"):
        build_model("lavt_tiny", bert_path="bert-base-uncased", vocab_file=None)
    with pytest.raises(WeightsUnavailableError, match=r"model\.bert_path"):  # the encoder alone, config only
        from ris_models.lavt.text_encoder import build_bert

        build_bert("bert-base-uncased", None, load_weights=False)
    assert offline == []


def test_hf_hub_model_names_refused(offline):
    with pytest.raises(WeightsUnavailableError, match="hf-hub"):
        ClipScorer.from_open_clip("hf-hub:laion/CoCa-ViT-B-32-laion2B-s13B-b90k", None)
    assert offline == []


def test_allow_download_is_what_reaches_the_network(offline):
    """With the opt-in the loader does try to fetch (and a failed fetch is still one clear line)."""
    with pytest.raises(WeightsUnavailableError, match="cannot fetch"):
        resolve_open_clip_tag("RN50", "openai", allow_download=True)
    with pytest.raises(WeightsUnavailableError, match="cannot fetch"):
        hub_file("bert-base-uncased", "vocab.txt", allow_download=True, option="model.bert_path")
    assert offline  # the attempts were made, and only because they were allowed


# ---------------------------------------------------------------- found in the local caches without the network


def _hf_snapshot(cache: Path, repo_id: str) -> Path:
    """An empty snapshot folder in the Hugging Face cache layout: models--org--name/{refs/main, snapshots/<commit>}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    return snap


def test_url_tag_found_in_open_clip_cache(offline, tmp_path):
    cached = tmp_path / "home" / ".cache" / "clip" / "RN50.pt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    path, cfg = resolve_open_clip_tag("RN50", "openai")
    assert path == cached and cfg["quick_gelu"] is True
    assert offline == []


def test_hf_tag_found_in_hugging_face_cache(offline, tmp_path):
    snap = _hf_snapshot(tmp_path / "hf", "laion/mscoco_finetuned_CoCa-ViT-B-32-laion2B-s13B-b90k")
    (snap / "open_clip_pytorch_model.bin").write_bytes(b"weights")
    path, _ = resolve_open_clip_tag("coca_ViT-B-32", COCA_TAG)
    assert path == snap / "open_clip_pytorch_model.bin"
    assert offline == []


def test_bert_hub_name_found_in_hugging_face_cache(offline, tmp_path):
    from transformers import BertConfig

    from ris_models.registry import build_model
    from ris_models.text import build_wordpiece_vocab

    snap = _hf_snapshot(tmp_path / "hf", "someone/tiny-bert")
    vocab = build_wordpiece_vocab(["red", "square"])
    (snap / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64, max_position_embeddings=32).save_pretrained(snap)
    model = build_model("lavt_tiny", bert_path="someone/tiny-bert", vocab_file=None, bert_config=None,
                        load_pretrained=False)
    assert model.text_encoder.config.hidden_size == 32 and model.tokenizer.vocab_size == len(vocab)
    assert offline == []


def test_generate_checks_tags_before_any_work(offline, tmp_path):
    from pseudo_ris.generation import runner

    (tmp_path / "images").mkdir()  # exists but holds nothing: the tag check must come before any image work
    cfg = {"stage": "all", "source": "folder", "image_dir": str(tmp_path / "images"),
           "generator": {"captioner": {"name": "coca_ViT-L-14", "pretrained": "mscoco_finetuned_laion2b_s13b_b90k"},
                         "scorer": {"kind": "captioner"}}}
    with pytest.raises(WeightsUnavailableError, match=r"generator\.captioner\.pretrained="):
        runner.run(cfg)
    cfg["generator"] = {"captioner": {"name": "coca_tiny", "pretrained": None},
                        "scorer": {"kind": "open_clip", "name": "RN50", "pretrained": "openai"}}
    with pytest.raises(WeightsUnavailableError, match=r"generator\.scorer\.pretrained="):
        runner.run(cfg)
    assert offline == []


def test_train_checks_weight_sources_up_front(offline):
    from ris_models.registry import check_weight_sources

    with pytest.raises(WeightsUnavailableError, match=r"RN50/openai.*model\.pretrained="):
        check_weight_sources("cris_r50", pretrained="openai")
    with pytest.raises(WeightsUnavailableError, match=r"bert-base-uncased.*model\.bert_path="):
        check_weight_sources("lavt_swin_b")  # the preset's default BERT is a hub name
    check_weight_sources("lavt_tiny")  # random-init BERT and the shipped vocabulary: nothing to fetch
    check_weight_sources("cris_tiny")
    check_weight_sources("cris_r50", allow_download=True, pretrained="openai")  # opted in: the builder fetches
    assert offline == []


def test_configs_default_to_offline():
    for name in ("generate", "train", "evaluate"):
        cfg = yaml.safe_load((ROOT / "conf" / f"{name}.yaml").read_text())
        assert cfg["allow_download"] is False, name


def test_readme_states_the_offline_rule():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Real data and real weights"):]
    section = section[:section.index("\n## ", 5)]
    assert "allow_download=true" in section
    assert "Nothing is downloaded at run time;" not in section


# ---------------------------------------------------------------- the one open_clip initialisation fix


def _decoder_logits(model, vocab: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = torch.rand(2, 3, size, size, generator=g)
    text = torch.randint(1, min(vocab, 200), (2, 5), generator=g)
    with torch.no_grad():
        return model(images, text, output_labels=False)["logits"]


def _assert_decoder_usable(model, vocab: int) -> None:
    proj = model.text_decoder.text_projection.detach()
    assert torch.isfinite(proj).all() and 1e-3 < float(proj.std()) < 1.0
    logits = _decoder_logits(model, vocab)
    assert torch.isfinite(logits).all() and float(logits.std()) > 1e-3 and float(logits.abs().max()) < 1e3


def test_scorer_random_init_coca_has_initialised_decoder():
    torch.manual_seed(0)
    scorer = ClipScorer.from_open_clip("coca_tiny", None)
    _assert_decoder_usable(scorer.model, scorer.model.text_decoder.text_projection.shape[1])


def test_init_untrained_open_clip_replaces_empty_projection():
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("coca_tiny", pretrained=None)
    with torch.no_grad():
        model.text_decoder.text_projection.zero_()  # what torch.empty gave on one run
    assert float(_decoder_logits(model, 200).std()) == 0.0
    init_untrained_open_clip(model)
    _assert_decoder_usable(model, 200)


@pytest.mark.slow
def test_scorer_random_init_coca_vit_b32():
    torch.manual_seed(0)
    scorer = ClipScorer.from_open_clip("coca_ViT-B-32", None)
    _assert_decoder_usable(scorer.model, 49408)
    feats = scorer.text_features(["a photo of a dog", "a red car"])
    assert feats.shape[0] == 2 and torch.isfinite(feats).all()
