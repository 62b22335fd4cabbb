"""The named presets of `--model.preset` (architecture and data defaults), as plain mappings of config
keys. A preset sets `model.*` keys and the synthetic preset trained on when no `--data` is given. The
DeepRecSys presets (rmc1-3, ncf, wnd, mtwnd, din, dien) have the published production sizes of
ANCHORS.md section 1.1; `--model.scale` shrinks their tables.

Plain data, below recstack.config (whose `resolve` applies a preset before the YAML file and the
overrides) and recstack.models.zoo (which builds the models they name)."""

from __future__ import annotations

from typing import Any


def _preset(model: dict[str, Any], synth: str) -> dict[str, Any]:
    return {"model": model, "data": {"synth_preset": synth}}


PRESETS: dict[str, dict[str, Any]] = {
    # DLRM reference, bench/dlrm_s_criteo_kaggle.sh
    "criteo-kaggle": _preset({"name": "dlrm", "embedding_dim": 16, "bottom_mlp": [512, 256, 64, 16], "top_mlp": [512, 256, 1]},
                             "criteo-kaggle"),
    # DLRM reference, bench/dlrm_s_criteo_terabyte.sh
    "criteo-terabyte": _preset({"name": "dlrm", "embedding_dim": 64, "bottom_mlp": [512, 256, 64], "top_mlp": [512, 512, 256, 1]},
                               "criteo-terabyte"),
    # DeepRecSys models/configs/*.json (the interaction is "cat" in all three)
    "rmc1": _preset({"name": "dlrm", "embedding_dim": 32, "bottom_mlp": [64, 32], "top_mlp": [256, 64, 1], "interaction": "cat"},
                    "rmc1"),
    "rmc2": _preset({"name": "dlrm", "embedding_dim": 64, "bottom_mlp": [128, 64], "top_mlp": [128, 64, 1], "interaction": "cat"},
                    "rmc2"),
    "rmc3": _preset({"name": "dlrm", "embedding_dim": 32, "bottom_mlp": [1024, 256, 32], "top_mlp": [512, 256, 1],
                     "interaction": "cat"}, "rmc3"),
    # NeuMF with DeepRecSys's sizes: 64-wide GMF and MLP embeddings, MLP tower 128-256-256-128-64
    "ncf": _preset({"name": "ncf", "embedding_dim": 64, "mf_dim": 64, "top_mlp": [256, 256, 128, 64]}, "ncf"),
    "wnd": _preset({"name": "wnd", "embedding_dim": 32, "top_mlp": [1024, 512, 256, 1]}, "wnd"),
    "mtwnd": _preset({"name": "mtwnd", "embedding_dim": 32, "top_mlp": [1024, 512], "task_mlp": [256, 128, 1]}, "mtwnd"),
    "din": _preset({"name": "din", "embedding_dim": 32, "attention_mlp": [80, 40], "top_mlp": [200, 80, 1]}, "din"),
    "dien": _preset({"name": "dien", "embedding_dim": 32, "gru_hidden": 64, "attention_mlp": [80, 40],
                     "top_mlp": [200, 80, 1], "max_sequence_length": 40}, "dien"),
    # MLPerf DLRM-v2's network (DCN-v2 interaction: 3 cross layers of rank 512, 128-wide embeddings) on
    # the Criteo Kaggle tables, 17.3 GB: on its own multi-hot Terabyte tables (capped at 10M rows) it
    # would need 26.9 GB, more than a 24 GiB machine (train those with --data.synth_preset
    # criteo-multihot --model.scale 0.5)
    "dcn-v2": _preset({"name": "dcn-v2", "embedding_dim": 128, "bottom_mlp": [512, 256, 128],
                       "top_mlp": [1024, 1024, 512, 256, 1], "cross_layers": 3, "cross_rank": 512}, "criteo-kaggle"),
    # DeepFM (Guo et al. 2017) on the Criteo tables: a 400-400-400 deep part
    "deepfm": _preset({"name": "deepfm", "embedding_dim": 16, "top_mlp": [400, 400, 400, 1]}, "criteo-kaggle"),
    # For tests: seconds on a laptop.
    "tiny": _preset({"name": "dlrm", "embedding_dim": 8, "bottom_mlp": [16, 8], "top_mlp": [16, 1]}, "tiny"),
}
