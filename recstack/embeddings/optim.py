"""Sparse optimizer rules: update only the rows a batch touched.

Each rule takes the current rows, their optimizer state and their gradient (already summed over
duplicate ids), and returns nothing: it writes the new rows and state in place. Every
`EmbeddingCollection` implementation reuses these, so tiered or sharded tables train exactly like
plain ones. Formulas match torch.optim.SGD and torch.optim.Adagrad on the touched rows, and FBGEMM's
row-wise Adagrad (one accumulator per row: the mean of the squared gradient over the row).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from recstack.embeddings.base import SparseOptimizerConfig


def new_state(config: SparseOptimizerConfig, num_rows: int, dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Optimizer state for a table: [rows, k] with k = 0 (sgd), 1 (row-wise) or dim (adagrad)."""
    return torch.zeros(num_rows, config.state_floats_per_row(dim), dtype=torch.float32, device=device)


def sum_duplicate_rows(ids: torch.Tensor, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique row ids and the sum of the gradients of each (a row looked up twice gets both)."""
    rows, inverse = torch.unique(ids, return_inverse=True)
    summed = torch.zeros(rows.numel(), grads.shape[1], dtype=grads.dtype, device=grads.device)
    summed.index_add_(0, inverse, grads)
    return rows, summed


@torch.no_grad()
def update_rows(
    config: SparseOptimizerConfig,
    weight: torch.Tensor,
    state: torch.Tensor,
    rows: torch.Tensor,
    grad: torch.Tensor,
    lr: float,
    row_squares: Callable[[torch.Tensor], torch.Tensor] | None = None,
    row_width: int | None = None,
) -> None:
    """One optimizer step on weight[rows] (rows unique) with gradient `grad` [len(rows), D].

    `row_squares`, `row_width`: for rows split by columns over ranks (column-wise shards), row-wise
    Adagrad's mean square is over the whole row: `row_squares` sums each row's squared gradient over
    the shards (an all-reduce), and the mean divides by `row_width`, the whole row's width."""
    w = weight.index_select(0, rows)
    if grad.dtype != w.dtype:
        grad = grad.to(w.dtype)
    if config.weight_decay:
        grad = grad.add(w, alpha=config.weight_decay)
    if config.kind == "sgd":
        w.add_(grad, alpha=-lr)
    elif config.kind == "rowwise_adagrad":
        acc = state.index_select(0, rows)
        if row_squares is None:
            square = grad.pow(2).mean(dim=1, keepdim=True)
        else:
            square = row_squares(grad.pow(2).sum(dim=1, keepdim=True)) / row_width
        acc.add_(square.to(acc.dtype))
        state.index_copy_(0, rows, acc)
        w.addcdiv_(grad, acc.sqrt().add_(config.eps).to(w.dtype), value=-lr)
    elif config.kind == "adagrad":
        acc = state.index_select(0, rows)
        acc.addcmul_(grad, grad)
        state.index_copy_(0, rows, acc)
        w.addcdiv_(grad, acc.sqrt().add_(config.eps).to(w.dtype), value=-lr)
    else:
        raise ValueError(f"unknown sparse optimizer {config.kind!r}")
    weight.index_copy_(0, rows, w)
