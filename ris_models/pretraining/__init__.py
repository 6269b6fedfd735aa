"""Stand-ins for the pretrained encoders LAVT starts from (ImageNet Swin-B, BERT-base), trained on SynthRef.

- `train_swin` / `evaluate_swin` (``swin.py``): the preset's Swin classifies shape / colour / size of the objects
  of generated foundation scenes;
- `train_bert` / `evaluate_bert` (``bert.py``): the preset's BERT learns masked-language modelling on referring
  expressions written by SynthRef's grammar for foundation scenes;
- ``shipped.py``: the files shipped in ``ris_models/assets/pretrained`` that ``model.pretrained=true`` loads (the
  BERT only with ``model.bert_standin=true``; ``lavt_tiny`` starts from random init by default).

Foundation scenes are drawn from seed streams no SynthRef split uses (`pseudo_ris.foundation.data`), so neither
stand-in ever sees an evaluation image or sentence. Command line: ``python tools/train_foundation.py model=swin|bert``.
"""

from __future__ import annotations

from ris_models.pretraining.config import BertPretrainConfig, SwinPretrainConfig

__all__ = ["BertPretrainConfig", "SwinPretrainConfig"]
