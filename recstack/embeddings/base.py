"""The `EmbeddingCollection` interface every model is written against.

A model hands the collection a batch of jagged sparse features and gets pooled embeddings back;
where the rows live (plain memory, hot/cold tiers, shards, factorized, memoized, quantized) is the
implementation's business, chosen by a plan (recstack.embeddings.plan) and never by an `if` inside
a model.

Training follows TorchRec's fused design: the collection owns its sparse optimizer. After
`loss.backward()`, `apply_gradients(lr)` updates only the rows the last forward touched, with the
optimizer state stored beside the rows (so a tier or shard that moves rows moves their state too).

State is logical and per table, whatever the layout: `table_state(name)` gives a table's `weight`
[rows, dim] and its optimizer state [rows, k]; `read_rows`/`write_rows` reach some of its rows. A
collection's `state_dict` holds exactly that (`tables.<name>.weight`, `tables.<name>.optimizer_state`),
so a checkpoint written by one implementation loads into any other.

Placement belongs to the collection: `place(device)` says where the model computes, and the
collection decides where its rows live and returns its output there. `.to()`, `.cuda()` and
`.cpu()` on an enclosing model convert dtypes here but never move rows.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from recstack.data.batch import JaggedFeatures

INITS = ("uniform", "zeros")
"""How a table's rows start: uniform is U(-sqrt(1/n), sqrt(1/n)) as the DLRM reference initializes
its bags; zeros for tables that must start neutral (a wide model's linear weights)."""


@dataclass
class TableConfig:
    name: str
    num_embeddings: int
    embedding_dim: int
    feature_names: list[str] = field(default_factory=list)
    """Features looked up and pooled in this table (default: the feature named like the table)."""
    pooling: str = "sum"
    """How a bag of ids becomes one vector: sum or mean."""
    fold: bool = False
    """Ids >= num_embeddings fold into the table by modulo (a table shrunk by model.scale)."""
    sequence_names: list[str] = field(default_factory=list)
    """Features looked up in this table and returned unpooled, one vector per id (behaviour sequences)."""
    init: str = "uniform"
    """How the rows start (INITS)."""

    def __post_init__(self) -> None:
        if not self.feature_names and not self.sequence_names:
            self.feature_names = [self.name]
        if self.pooling not in ("sum", "mean"):
            raise ValueError(f"table {self.name}: pooling must be sum or mean, not {self.pooling!r}")
        if self.init not in INITS:
            raise ValueError(f"table {self.name}: init must be one of {', '.join(INITS)}, not {self.init!r}")

    @torch.no_grad()
    def initialize(self, weight: torch.Tensor) -> None:
        """Fill this table's rows [num_embeddings, dim] as `init` says."""
        if self.init == "zeros":
            weight.zero_()
        else:
            bound = math.sqrt(1.0 / self.num_embeddings)
            weight.uniform_(-bound, bound)


@dataclass
class SparseOptimizerConfig:
    kind: str = "rowwise_adagrad"
    """sgd, adagrad (one accumulator per element) or rowwise_adagrad (one per row, as FBGEMM)."""
    weight_decay: float = 0.0
    eps: float = 1e-8

    def state_floats_per_row(self, dim: int) -> int:
        return {"sgd": 0, "rowwise_adagrad": 1, "adagrad": dim}[self.kind]


@dataclass
class TableState:
    """One table's logical state: its rows and their optimizer state, row for row."""

    weight: torch.Tensor
    """[rows, dim]"""
    optimizer_state: torch.Tensor
    """[rows, k]: k = 0 (sgd), 1 (row-wise Adagrad) or dim (Adagrad)."""


@dataclass
class SequenceEmbeddings:
    """One behaviour sequence per sample, padded: values [B, L, D], lengths [B] (positions >= length are 0)."""

    values: torch.Tensor
    lengths: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        """bool [B, L]: True at real positions."""
        positions = torch.arange(self.values.shape[1], device=self.values.device)
        return positions.unsqueeze(0) < self.lengths.unsqueeze(1)


STATE_FIELDS = ("weight", "optimizer_state")
"""A table's entries in a state dict: `<prefix>tables.<table>.<field>`."""


class EmbeddingCollection(nn.Module, ABC):
    """Pooled (and sequence) embeddings for a set of features, with a fused sparse optimizer."""

    tables: list[TableConfig]
    optimizer: SparseOptimizerConfig

    # --- what a model calls ------------------------------------------------------------------

    @property
    def feature_names(self) -> list[str]:
        """Output order of `forward`'s feature axis."""
        return [f for t in self.tables for f in t.feature_names]

    @property
    def sequence_names(self) -> list[str]:
        """Features `sequences` returns unpooled."""
        return [f for t in self.tables for f in t.sequence_names]

    @property
    def dim(self) -> int:
        """The width every table of the collection shares."""
        return self.tables[0].embedding_dim

    @abstractmethod
    def forward(self, features: JaggedFeatures) -> torch.Tensor:
        """Pooled embeddings [B, F, D] in `feature_names` order (all tables share D)."""

    def sequences(self, features: JaggedFeatures, max_length: int) -> dict[str, SequenceEmbeddings]:
        """The `sequence_names` features unpooled, each sample's last `max_length` ids (the most recent)."""
        raise NotImplementedError(f"{type(self).__name__} does not serve sequence features")

    # --- what the training step calls --------------------------------------------------------

    @abstractmethod
    def apply_gradients(self, lr: float) -> None:
        """Apply the sparse optimizer to the rows touched since the last call (after backward)."""

    @abstractmethod
    def discard_gradients(self) -> None:
        """Forget the rows touched since the last `apply_gradients` (a step that is not applied)."""

    # --- logical state -----------------------------------------------------------------------

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype:
        """The dtype of the rows."""

    @abstractmethod
    def table_state(self, name: str) -> TableState:
        """Table `name`'s rows and optimizer state (views where the layout allows, else copies)."""

    @abstractmethod
    def load_table_state(self, name: str, state: TableState) -> None:
        """Replace table `name`'s rows and optimizer state (converted to this collection's dtypes)."""

    def read_rows(self, name: str, rows: torch.Tensor) -> TableState:
        """Rows `rows` of table `name` with their optimizer state (copies)."""
        whole = self.table_state(name)
        return TableState(whole.weight[rows], whole.optimizer_state[rows])

    def write_rows(self, name: str, rows: torch.Tensor, state: TableState) -> None:
        """Overwrite rows `rows` of table `name` and their optimizer state."""
        whole = self.table_state(name)
        weight, opt = whole.weight.clone(), whole.optimizer_state.clone()
        weight[rows] = state.weight.to(weight)
        opt[rows] = state.optimizer_state.to(opt)
        self.load_table_state(name, TableState(weight, opt))

    def table(self, name: str) -> TableConfig:
        for t in self.tables:
            if t.name == name:
                return t
        raise KeyError(f"{type(self).__name__} has no table {name!r}")

    @abstractmethod
    def reset_parameters(self) -> None:
        """Every table's rows as its `init` says; optimizer state zero."""

    # --- sizes -------------------------------------------------------------------------------

    def embedding_bytes(self) -> int:
        """Bytes of the rows of every table, in this collection's dtype."""
        size = torch.empty(0, dtype=self.dtype).element_size()
        return sum(t.num_embeddings * t.embedding_dim for t in self.tables) * size

    def optimizer_bytes(self) -> int:
        """Bytes of the sparse optimizer's state (fp32)."""
        return 4 * sum(t.num_embeddings * self.optimizer.state_floats_per_row(t.embedding_dim) for t in self.tables)

    def memory_bytes(self) -> int:
        """What the collection holds in memory: its rows and optimizer state in its own layout, with
        what a tier, a cache or an index adds (every buffer; exact on the "meta" device)."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    # --- placement ---------------------------------------------------------------------------

    @abstractmethod
    def place(self, device: torch.device | str) -> None:
        """The model computes on `device`: put the rows where this collection keeps them for that,
        and return `forward`'s output there."""

    @property
    def ids_device(self) -> torch.device | None:
        """Where this collection wants a batch's ids (None: wherever the loader made them)."""
        return None

    def move_tensors(self, device: torch.device | str) -> None:
        """Move every tensor of this module and of its submodules (adopted collections included) to
        `device`: for `place`, which `.to()` no longer does."""
        for module in self.modules():
            nn.Module._apply(module, lambda t: t.to(device), recurse=False)

    def _apply(self, fn, recurse=True):
        """Dtype conversions apply; device moves do not (rows live where `place` put them)."""

        def in_place(t: torch.Tensor) -> torch.Tensor:
            probe = fn(t.new_empty(0))
            return fn(t) if probe.device == t.device else t.to(dtype=probe.dtype)

        return super()._apply(in_place, recurse)

    # --- the logical state dict --------------------------------------------------------------

    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Any:
        """`<prefix>tables.<table>.weight` and `.optimizer_state` for every table, whatever the layout."""
        if args:  # torch's deprecated positional form (destination, prefix, keep_vars)
            destination, prefix, keep_vars = (list(args) + [destination, prefix, keep_vars][len(args):])[:3]
        if destination is None:
            from collections import OrderedDict

            destination = OrderedDict()
        for t in self.tables:
            state = self.table_state(t.name)
            for name in STATE_FIELDS:
                value = getattr(state, name)
                destination[f"{prefix}tables.{t.name}.{name}"] = value if keep_vars else value.detach()
        return destination

    def adopt(self, inner: EmbeddingCollection) -> EmbeddingCollection:
        """Take `inner` as a part of this collection (a tier, a cache): its state is this one's to
        save and load, so it saves and loads nothing of its own."""
        inner._adopted = True
        return inner

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        if getattr(self, "_adopted", False):
            return
        legacy_to_logical(self, state_dict, prefix)
        known = {f"{prefix}tables.{t.name}.{name}" for t in self.tables for name in STATE_FIELDS}
        for t in self.tables:
            keys = [f"{prefix}tables.{t.name}.{name}" for name in STATE_FIELDS]
            absent = [k for k in keys if k not in state_dict]
            if absent:
                missing_keys.extend(absent)
                continue
            weight, opt = (state_dict[k] for k in keys)
            expected = (t.num_embeddings, t.embedding_dim)
            if tuple(weight.shape) != expected:
                error_msgs.append(f"size mismatch for {keys[0]}: copying a param with shape {tuple(weight.shape)}, "
                                  f"the table has shape {expected}")
                continue
            width = self.optimizer.state_floats_per_row(t.embedding_dim)
            if tuple(opt.shape) != (t.num_embeddings, width):
                error_msgs.append(f"size mismatch for {keys[1]}: copying a tensor with shape {tuple(opt.shape)}, "
                                  f"the optimizer state has shape {(t.num_embeddings, width)}")
                continue
            self.load_table_state(t.name, TableState(weight, opt))
        if strict:
            for key in state_dict:
                if key.startswith(prefix) and key not in known and _is_own(key[len(prefix):], self):
                    unexpected_keys.append(key)
        self.discard_gradients()


def _is_own(rest: str, module: nn.Module) -> bool:
    """Whether a key below a collection's prefix is the collection's own (not a child module's:
    torch asks the children separately)."""
    return rest.split(".", 1)[0] not in module._modules


def legacy_to_logical(collection: EmbeddingCollection, state_dict: dict, prefix: str) -> None:
    """Checkpoints before the logical state (format version 1) stored a collection as one fused
    `weight` [all rows, D] and `optimizer_state`, tables in order: split them into the table keys."""
    for name in STATE_FIELDS:
        fused = state_dict.get(prefix + name)
        if not isinstance(fused, torch.Tensor) or fused.dim() != 2:
            continue
        rows = [t.num_embeddings for t in collection.tables]
        if fused.shape[0] != sum(rows):
            continue  # the strict check reports the shapes
        del state_dict[prefix + name]
        for t, part in zip(collection.tables, torch.split(fused, rows)):
            state_dict[f"{prefix}tables.{t.name}.{name}"] = part


def embedding_collections(module: nn.Module) -> list[EmbeddingCollection]:
    """The outermost collections of a module (a collection's own tiers are its business)."""
    found = []
    for child in module.children():
        if isinstance(child, EmbeddingCollection):
            found.append(child)
        else:
            found.extend(embedding_collections(child))
    return found


def place(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Put the model's dense layers on `device` and let each of its collections place its rows for
    computing there (DESIGN.md: collections own their placement)."""
    device = torch.device(device)
    for collection in embedding_collections(model):
        collection.place(device)
    return model.to(device)
