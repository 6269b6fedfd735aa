"""Pretrain the tiny LAVT's BERT with masked-language modelling on SynthRef-style referring expressions.

LAVT starts from BERT-base; the stand-in learns the language of referring expressions the same way BERT learnt
English. Its corpus is written by SynthRef's own expression grammar (`pseudo_ris.synthref.expressions`, all three
styles) for random targets of foundation scenes (``bert_train`` stream), never for a SynthRef image, so no
evaluation sentence is seen. The network is exactly the preset's text encoder (its config and WordPiece vocabulary,
taken from the RIS model itself) inside a standard BERT-MLM (`transformers.BertForMaskedLM`); the output is a
Hugging Face BERT-MLM directory (``config.json``, ``model.safetensors``, ``vocab.txt``), the layout of
bert-base-uncased, so it loads as ``model.bert_path=<dir>`` too.

Masking is BERT's: 15 % of the word pieces (at least one per text), of which 80 % become ``[MASK]``, 10 % a random
piece and 10 % stay; tokenisation is the preset's (LAVT's 20 pieces, cut after [CLS] / [SEP] are added).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pseudo_ris.foundation.config import config_dict, config_hash, make_config
from pseudo_ris.foundation.data import scene_at, scene_rng
from pseudo_ris.foundation.loop import adamw_without_norm_decay, cosine_lr, run_loop, write_recipe
from pseudo_ris.synthref.expressions import STYLES, generate_expressions
from pseudo_ris.synthref.vocab import COLOUR_SYNONYMS, SHAPE_SYNONYMS, SIZE_SYNONYMS
from ris_models.pretraining.config import BertPretrainConfig

SCENES_PER_STEP = 64  # scene indices reserved per step (a step uses the first few), so steps never share scenes


def weights_dir_name(preset: str) -> str:
    return f"{preset}_bert"


def expressions(stream: str, seed: int, step: int, count: int, scene_cfg: dict | None = None) -> list[str]:
    """``count`` expressions for step ``step`` of ``stream``: for each scene in turn, every target (random order)
    in every style, with SynthRef's 2-3 paraphrases each, until ``count`` are collected (rendering a scene costs
    more than a training step, so each scene gives many texts). A pure function of its arguments."""
    rng = scene_rng(f"{stream}_sampling" if stream != "bert_train" else "bert_sampling", seed, step)
    texts: list[str] = []
    for j in range(SCENES_PER_STEP):
        scene = scene_at(stream, seed, step * SCENES_PER_STEP + j, scene_cfg or None)
        objects = [o.as_oracle_object() for o in scene.objects]
        size = scene.image.shape[1]
        for target in rng.permutation(len(objects)):
            for style in STYLES:
                found = generate_expressions(objects, int(target), style, rng, size)
                texts.extend(found)
                if len(texts) >= count:
                    return texts[:count]
    return texts


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, special_ids: list[int], mask_id: int,
                vocab_size: int, prob: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking (see module docstring): returns the corrupted ids and the labels (-100 where not masked).
    Random replacements are drawn above the special ids (they come first in the vocabulary)."""
    candidate = attention_mask.bool() & ~torch.isin(input_ids, torch.tensor(special_ids))
    chosen = (torch.rand(input_ids.shape, generator=generator) < prob) & candidate
    for row in torch.nonzero(candidate.any(1) & ~chosen.any(1)).flatten().tolist():  # at least one per text
        cols = torch.nonzero(candidate[row]).flatten()
        chosen[row, cols[torch.randint(len(cols), (1,), generator=generator)]] = True
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    roll = torch.rand(input_ids.shape, generator=generator)
    corrupted = input_ids.clone()
    corrupted[chosen & (roll < 0.8)] = mask_id
    randomised = chosen & (roll >= 0.8) & (roll < 0.9)
    corrupted[randomised] = torch.randint(max(special_ids + [mask_id]) + 1, vocab_size, (int(randomised.sum()),), generator=generator)
    return corrupted, labels


def build_mlm(preset: str) -> tuple[Any, Any]:
    """A fresh BertForMaskedLM with the preset's text-encoder config, and the preset's tokenizer."""
    from transformers import BertForMaskedLM

    from ris_models.registry import build_model

    model = build_model(preset, pretrained=False, load_pretrained=False)
    if model.model_type != "lavt":
        raise ValueError(f"preset {preset!r} is not a LAVT model")
    return BertForMaskedLM(model.text_encoder.config), model.tokenizer


def _specials(tokenizer: Any) -> tuple[list[int], int]:
    tok = tokenizer._tok
    ids = sorted({i for i in (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.unk_token_id) if i is not None})
    return ids, tok.mask_token_id


def save_mlm(mlm: Any, tokenizer: Any, out: Path) -> Path:
    """Write the BERT-MLM directory atomically (a temporary sibling renamed into place)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    mlm.save_pretrained(str(tmp), safe_serialization=True)
    shutil.copyfile(tokenizer.vocab_file, tmp / "vocab.txt")
    tmp.chmod(0o755)  # mkdtemp makes it private; the directory is shipped and shared like any other file
    for file in tmp.iterdir():
        file.chmod(0o644)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def train_bert(cfg: BertPretrainConfig | dict | None = None, out_dir: str | Path = "outputs/foundation/bert",
               progress: bool = True, **overrides: Any) -> Path:
    """Train (or resume) the BERT stand-in; returns its directory (``<out>/<preset>_bert``)."""
    cfg = make_config(BertPretrainConfig, cfg, **overrides)
    out_dir = Path(out_dir)
    torch.manual_seed(cfg.seed)
    mlm, tokenizer = build_mlm(cfg.preset)
    specials, mask_id = _specials(tokenizer)
    vocab = mlm.config.vocab_size
    optimizer, params = adamw_without_norm_decay(mlm, cfg.lr, cfg.weight_decay)

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        batch = tokenizer(expressions("bert_train", cfg.seed, step, cfg.batch_size, cfg.scene))
        gen = torch.Generator().manual_seed(int(scene_rng("bert_sampling", cfg.seed, step).integers(2**62)))
        ids, labels = mask_tokens(batch["input_ids"], batch["attention_mask"], specials, mask_id, vocab,
                                  cfg.mask_prob, gen)
        out = mlm(input_ids=ids, attention_mask=batch["attention_mask"], labels=labels)
        picked = labels != -100
        acc = (out.logits.argmax(-1)[picked] == labels[picked]).float().mean()
        return {"loss": out.loss, "acc": acc.detach()}

    summary = run_loop(name="bert", out_dir=out_dir, model=mlm, optimizer=optimizer, steps=cfg.steps,
                       recipe_hash=config_hash(cfg), step_fn=step_fn, checkpoint_every=cfg.checkpoint_every,
                       grad_clip=cfg.grad_clip, params=params, progress=progress, stop_after=cfg.stop_after,
                       lr_at=lambda s: cosine_lr(s, cfg.steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_frac))
    path = save_mlm(mlm, tokenizer, out_dir / weights_dir_name(cfg.preset))
    write_recipe(out_dir, "bert", config_dict(cfg), config_hash(cfg), summary, path.name)
    return path


def _word_classes(tokenizer: Any) -> dict[str, set[int]]:
    """Token ids of attribute words (shape, colour, size synonyms) that are single word pieces."""
    vocab = tokenizer._tok.get_vocab()
    classes = {"shape": SHAPE_SYNONYMS, "colour": COLOUR_SYNONYMS, "size": SIZE_SYNONYMS}
    return {k: {vocab[w] for words in table.values() for w in words if w in vocab} for k, table in classes.items()}


@torch.no_grad()
def evaluate_bert(weights_dir: str | Path, *, preset: str = "lavt_tiny", num_texts: int = 2000, seed: int = 0,
                  batch_size: int = 200) -> dict[str, Any]:
    """MLM accuracy on expressions of held-out scenes (``bert_eval`` stream, fixed masks), overall and on
    attribute words, next to the best context-free guess (always the most frequent masked piece)."""
    from transformers import BertForMaskedLM

    _, tokenizer = build_mlm(preset)
    mlm = BertForMaskedLM.from_pretrained(str(weights_dir), local_files_only=True).eval()
    specials, mask_id = _specials(tokenizer)
    classes = _word_classes(tokenizer)
    gen = torch.Generator().manual_seed(seed)
    hits, targets, preds = [], [], []
    for step in range(0, num_texts, batch_size):
        batch = tokenizer(expressions("bert_eval", seed, step // batch_size, min(batch_size, num_texts - step)))
        ids, labels = mask_tokens(batch["input_ids"], batch["attention_mask"], specials, mask_id,
                                  mlm.config.vocab_size, 0.15, gen)
        logits = mlm(input_ids=ids, attention_mask=batch["attention_mask"]).logits
        picked = labels != -100
        targets.append(labels[picked])
        preds.append(logits.argmax(-1)[picked])
    target, pred = torch.cat(targets), torch.cat(preds)
    hits = pred == target
    out: dict[str, Any] = {"weights": Path(weights_dir).name, "preset": preset, "num_texts": num_texts,
                           "masked_pieces": int(len(target)), "mlm_acc": round(float(hits.float().mean()), 4),
                           "most_frequent_piece_rate": round(float(np.bincount(target.numpy()).max() / len(target)), 4)}
    for name, ids in classes.items():
        sel = torch.isin(target, torch.tensor(sorted(ids)))
        out[f"{name}_word_acc"] = round(float(hits[sel].float().mean()), 4) if sel.any() else None
        out[f"{name}_word_n"] = int(sel.sum())
    return out
