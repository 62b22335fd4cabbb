"""A model's state from a loaded checkpoint of either layout: one file, or a sharded directory whose
tables load into the model's own placement (resharded)."""

from __future__ import annotations

from typing import Any

from recstack.checkpoint.format import _first_line, load_state, require_finite
from recstack.checkpoint.sharded import is_table_key, load_tables
from recstack.errors import CheckpointError


def load_model(model: Any, payload: dict[str, Any]) -> None:
    """The model's state from a loaded checkpoint, one file or sharded (its tables resharded into the
    model's placement), refused with one line when it does not fit or holds NaN."""
    path = payload["path"]
    if "tables_dir" in payload:
        try:
            missing, unexpected = model.load_state_dict(payload["model"], strict=False)
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {path}: its model state does not fit the model ({_first_line(exc)})") from None
        wrong = [k for k in missing if not is_table_key(k)] + list(unexpected)
        if wrong:
            raise CheckpointError(f"checkpoint {path}: its model state does not fit the model (keys {wrong[:5]})")
        load_tables(model, payload["tables_dir"], path)
        require_finite({k: v for k, v in model.state_dict().items() if not is_table_key(k)}, path)
        return
    load_state(model, payload["model"], path)
    require_finite(payload["model"], path)
