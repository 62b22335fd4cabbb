"""Sequence layers shared by DIN and DIEN: DIN's local activation unit, masked pooling, and a GRU
whose update gate an attention score can scale (DIEN's AUGRU).

Every layer takes behaviour sequences padded at the end: values [B, L, D] and a bool mask [B, L]
(True at real positions), as `EmbeddingCollection.sequences` returns them.
"""

from __future__ import annotations

import torch
from torch import nn

POOLINGS = ("sum", "mean")


def masked_pool(values: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Sum or mean over the real positions: [B, L, D] -> [B, D] (an empty sequence pools to 0)."""
    if mode not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, not {mode!r}")
    summed = (values * mask.unsqueeze(-1).to(values.dtype)).sum(1)
    if mode == "mean":
        summed = summed / mask.sum(1, keepdim=True).clamp(min=1).to(values.dtype)
    return summed


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the real positions of each row of [B, L]; padded positions (and rows with no real
    position) get 0. The lowest finite value rather than -inf keeps an empty row free of NaN, forward
    and backward."""
    lowest = torch.finfo(scores.dtype).min
    return torch.softmax(scores.masked_fill(~mask, lowest), dim=1) * mask.to(scores.dtype)


class ActivationUnit(nn.Module):
    """DIN's local activation unit (Zhou et al. 2018, Fig. 2): an MLP over [h, t, h - t, h * t] for
    every history position h against the target t, one score per position.

    Hidden layers use PReLU, the paper's activation unit. (Dice, the paper's other choice, normalizes
    by batch statistics, which would mix the padded positions into every sample's scores.)
    """

    family = "attention"

    def __init__(self, dim: int, hidden: list[int]):
        super().__init__()
        layers: list[nn.Module] = []
        width = 4 * dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.PReLU(h)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)
        self.dim = dim

    def forward(self, history: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """history [B, L, D], target [B, D] -> raw scores [B, L]."""
        t = target.unsqueeze(1).expand_as(history)
        features = torch.cat([history, t, history - t, history * t], dim=-1)
        # PReLU's parameters run along dim 1: score the positions as rows of one [B * L, 4D] matrix
        return self.mlp(features.flatten(0, 1)).view(history.shape[:2])


class GRUCell(nn.Module):
    """One GRU step with the gates of the DIEN paper (Zhou et al. 2019, eqs. 1-4):

        u = sigmoid(W_u x + U_u h + b_u)      r = sigmoid(W_r x + U_r h + b_r)
        c = tanh(W_c x + r * (U_c h + b'_c))  h' = (1 - u) * h + u * c

    With an attention score a per sample, the update gate becomes a * u (AUGRU, eqs. 8-9): a weak
    attention leaves the state nearly unchanged."""

    def __init__(self, input_dim: int, hidden_dim: int):
        super().__init__()
        self.input = nn.Linear(input_dim, 3 * hidden_dim)
        self.hidden = nn.Linear(hidden_dim, 3 * hidden_dim)
        self.hidden_dim = hidden_dim

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The input half of every gate, for all steps at once: [..., input] -> [..., 3 * hidden]."""
        return self.input(x)

    def step(self, projected: torch.Tensor, h: torch.Tensor, attention: torch.Tensor | None = None) -> torch.Tensor:
        """projected [B, 3H] (from `project`), h [B, H], attention [B] or None -> the next state [B, H]."""
        xu, xr, xc = projected.chunk(3, dim=-1)
        hu, hr, hc = self.hidden(h).chunk(3, dim=-1)
        update = torch.sigmoid(xu + hu)
        reset = torch.sigmoid(xr + hr)
        candidate = torch.tanh(xc + reset * hc)
        if attention is not None:
            update = attention.unsqueeze(-1) * update
        return h + update * (candidate - h)


class GRU(nn.Module):
    """A GRU (or, given attention scores, an AUGRU) over padded sequences, batch-parallel: one step
    per position, all samples at once. Padded steps leave a sample's state unchanged, so the last
    state is the state at each sample's last real position."""

    family = "attention"
    """Recurrent layers count with attention: the sequence family of the zoo's characterization."""

    def __init__(self, input_dim: int, hidden_dim: int):
        super().__init__()
        self.cell = GRUCell(input_dim, hidden_dim)
        self.hidden_dim = hidden_dim

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, attention: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, L, D], mask [B, L], attention [B, L] or None -> (states [B, L, H], last state [B, H]).
        States at padded positions repeat the last real one."""
        batch, length, _ = x.shape
        # unbind once: indexing [:, t] per step would make backward fill a whole-sequence gradient per step
        projected = self.cell.project(x).unbind(1)
        scores = [None] * length if attention is None else attention.unbind(1)
        real = mask.unsqueeze(-1).unbind(1)
        h = x.new_zeros(batch, self.hidden_dim)
        states = []
        for t in range(length):
            h = torch.where(real[t], self.cell.step(projected[t], h, scores[t]), h)
            states.append(h)
        if not states:
            return x.new_zeros(batch, 0, self.hidden_dim), h
        return torch.stack(states, dim=1), h
