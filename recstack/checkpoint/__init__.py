"""Checkpoints: the file format (atomic writes, checked reads) and the model's logical state.

Below train and serve: training writes checkpoints, and scoring, evaluation and serving read them.
"""

from recstack.checkpoint.format import (
    BEST,
    FORMAT,
    PARTS,
    RESUMING,
    SCORING,
    VERSION,
    checkpoint_name,
    latest,
    list_checkpoints,
    load,
    load_state,
    prune,
    rebuild_model,
    require_finite,
    resolve,
    save,
    vocab_from_tensors,
    vocab_to_tensors,
)
from recstack.checkpoint.model_state import load_model

__all__ = ["BEST", "FORMAT", "PARTS", "RESUMING", "SCORING", "VERSION", "checkpoint_name", "latest",
           "list_checkpoints", "load", "load_model", "load_state", "prune", "rebuild_model", "require_finite", "resolve", "save",
           "vocab_from_tensors", "vocab_to_tensors"]
