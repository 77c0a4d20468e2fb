"""Offline model zoo: packaged weights -> transformers folders (materialize), and the loaders every stage uses.

    from emplifai.lm import load_causal_lm, load_encoder, encoder_dir, setup_torch
"""

from emplifai.lm.load import (
    ModelNotFound,
    encoder_dir,
    load_causal_lm,
    load_encoder,
    load_tokenizer,
    model_dir,
    resolve_device,
    setup_torch,
)

__all__ = ["ModelNotFound", "encoder_dir", "load_causal_lm", "load_encoder", "load_tokenizer", "model_dir",
           "resolve_device", "setup_torch"]
