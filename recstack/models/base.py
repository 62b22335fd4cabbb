"""What every model of the zoo shares: its contract with the trainer and the server, and what its
builder is given (the model's config, the data's layout, and where embeddings come from).

A model file defines a `RecModel` subclass and a `build(context) -> RecModel` function. It asks
`context.embeddings(...)` for its tables and never constructs a placement itself, so FAE tiers,
shards or quantized tables replace them without the model knowing (DESIGN.md, principle 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from recstack.config import ModelConfig
from recstack.data.batch import Batch
from recstack.data.store import SparseFeature
from recstack.embeddings import EmbeddingCollection, SparseOptimizerConfig, TableConfig
from recstack.embeddings.base import embedding_collections
from recstack.embeddings.plan import Placement, build_collection
from recstack.errors import ConfigError


@dataclass
class DataLayout:
    """What a model sees of a dataset: feature names and table sizes, never the rows."""

    dense: list[str]
    tasks: list[str]
    sparse: list[SparseFeature]
    """Sparse features with the table rows the model gets (already scaled by model.scale)."""
    folded: set[str] = field(default_factory=set)
    """Tables shrunk below their ids' range (ids fold into them by modulo)."""

    @property
    def pooled(self) -> list[str]:
        return [f.name for f in self.sparse if not f.sequence]

    @property
    def sequences(self) -> list[str]:
        return [f.name for f in self.sparse if f.sequence]

    def feature(self, name: str) -> SparseFeature:
        for f in self.sparse:
            if f.name == name:
                return f
        raise KeyError(name)

    def target_of(self, sequence: str) -> str | None:
        """The pooled feature indexing the same table as a behaviour sequence (its candidate item)."""
        table = self.feature(sequence).table_name
        return next((f.name for f in self.sparse if not f.sequence and f.table_name == table), None)


@dataclass
class ModelContext:
    """Everything a model builder needs: its config, the data layout and the embedding placement."""

    config: ModelConfig
    layout: DataLayout
    optimizer: SparseOptimizerConfig = field(default_factory=SparseOptimizerConfig)
    device: torch.device | str = "cpu"
    """Where the model computes ("meta" to describe a model without its memory)."""
    placement: Placement | None = None
    """The plan for the model's collections (default: dense tables on `device` with `optimizer`)."""

    def __post_init__(self) -> None:
        if self.placement is None:
            self.placement = Placement(device=self.device, optimizer=self.optimizer)

    def tables(self, dim: int, features: list[str] | None = None, sequences: bool = True) -> list[TableConfig]:
        """One table per distinct table name among `features` (default: all pooled ones, plus the
        sequences when `sequences`), each serving every listed feature that indexes it."""
        layout = self.layout
        wanted = features if features is not None else layout.pooled + (layout.sequences if sequences else [])
        grouped: dict[str, tuple[int, list[str], list[str]]] = {}  # table -> (rows, pooled, sequences)
        for name in wanted:
            f = layout.feature(name)
            rows, pooled, sequence = grouped.setdefault(f.table_name, (0, [], []))
            (sequence if f.sequence else pooled).append(name)
            grouped[f.table_name] = (max(rows, f.num_embeddings), pooled, sequence)
        return [
            TableConfig(table, rows, dim, feature_names=pooled, sequence_names=sequence, fold=table in layout.folded)
            for table, (rows, pooled, sequence) in grouped.items()
        ]

    def embeddings(self, tables: list[TableConfig], role: str = "main") -> EmbeddingCollection:
        """The collection the plan gives `role` (a model with several collections names each: the
        config's embeddings.collections can place them apart)."""
        return build_collection(tables, self.placement, role)

    def require(self, *, dense: bool = False, pooled: int = 0, sequences: bool = False, single_task: bool = False,
                model: str = "", hint: str = "") -> None:
        """One-line errors for data this model cannot read (`hint`: what to use instead of a single-task model)."""
        what = model or self.config.name
        if single_task and len(self.layout.tasks) > 1:
            more = f" ({hint})" if hint else ""
            raise ConfigError(f"{self.config.name} predicts one label; the dataset has {len(self.layout.tasks)} tasks{more}")
        if dense and not self.layout.dense:
            raise ConfigError(f"{what} needs dense features; the dataset has none")
        if len(self.layout.pooled) < pooled:
            raise ConfigError(f"{what} needs at least {pooled} sparse feature(s); the dataset has {len(self.layout.pooled)}")
        if sequences and not self.layout.sequences:
            raise ConfigError(f"{what} needs a behaviour-sequence feature (schema `sequence: true`); the dataset has none")


class RecModel(nn.Module):
    """A model of the zoo: a Batch in, one logit per sample (and task) out.

    Subclasses implement `forward`; one with extra training terms (DIEN's auxiliary loss)
    overrides `training_loss`. The trainer and the server use nothing else.
    """

    embeddings: EmbeddingCollection
    """The main tables (the ones FAE tiers or shards replace)."""

    def __init__(self, task_names: list[str] | None = None, task_weights: list[float] | None = None):
        super().__init__()
        self.task_names = list(task_names or ["label"])
        weights = list(task_weights or [1.0] * len(self.task_names))
        if len(weights) != len(self.task_names):
            raise ConfigError(f"model.task_weights has {len(weights)} entries for {len(self.task_names)} tasks")
        self.register_buffer("task_weights", torch.tensor(weights, dtype=torch.float32), persistent=False)

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    def output(self, logits: torch.Tensor) -> torch.Tensor:
        """[B, T] logits to the trainer's shape: [B] for one task."""
        return logits.squeeze(-1) if logits.shape[-1] == 1 else logits

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy, a weighted sum over tasks."""
        labels = labels.to(logits.dtype)
        if logits.dim() == 1:
            return F.binary_cross_entropy_with_logits(logits, labels)
        per_task = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(0)
        return (per_task * self.task_weights.to(per_task.dtype)).sum()

    def training_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to minimize, logits)."""
        logits = self(batch)
        return self.task_loss(logits, batch.labels), logits

    def embedding_collections(self) -> list[EmbeddingCollection]:
        return embedding_collections(self)

    def embedding_lookups_per_sample(self) -> int:
        """Pooled bags read per sample, plus at most `max_sequence_length` ids per behaviour sequence."""
        cap = getattr(self, "max_sequence_length", 0)
        return sum(len(c.feature_names) + cap * len(c.sequence_names) for c in self.embedding_collections())

    def apply_gradients(self, lr: float) -> None:
        """The sparse optimizer step of every table the last forward touched."""
        for collection in self.embedding_collections():
            collection.apply_gradients(lr)

    def discard_gradients(self) -> None:
        for collection in self.embedding_collections():
            collection.discard_gradients()

    def measured_flops_per_sample(self, batch: Batch) -> float:
        """Forward FLOPs per sample counted by torch's FLOP counter on a real batch (matmuls,
        attention and recurrent steps included; embedding gathers are bytes, not FLOPs)."""
        return sum(self.flops_by_family(batch).values())

    @torch.no_grad()
    def flops_by_family(self, batch: Batch) -> dict[str, float]:
        """Forward FLOPs per sample split by operator family ("other" for undeclared layers)."""
        was_training = self.training
        self.eval()
        try:
            with FlopCounterMode(display=False) as counter:
                self(batch)
        finally:
            self.train(was_training)
        per_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
        root = type(self).__name__
        out = dict.fromkeys(FAMILIES, 0.0)
        for name, family in family_modules(self).items():
            out[family] += per_module.get(f"{root}.{name}", 0)
        out["other"] = counter.get_total_flops() - sum(out.values())
        n = max(batch.batch_size, 1)
        return {k: v / n for k, v in out.items()}


FAMILIES = ("embedding", "mlp", "interaction", "attention")
"""Operator families of the characterization (Gupta et al. HPCA 2020): a layer declares its own with a
class attribute `family`; every EmbeddingCollection is "embedding"."""


def family_of(module: nn.Module) -> str | None:
    return "embedding" if isinstance(module, EmbeddingCollection) else getattr(type(module), "family", None)


def family_modules(model: nn.Module) -> dict[str, str]:
    """Qualified name -> family of the outermost modules that declare one (an attention unit's inner
    MLP counts as attention)."""
    found: dict[str, str] = {}

    def visit(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            qualified = f"{prefix}.{name}" if prefix else name
            family = family_of(child)
            if family is not None:
                found[qualified] = family
            else:
                visit(child, qualified)

    visit(model, "")
    return found


__all__ = ["DataLayout", "ModelContext", "RecModel", "embedding_collections", "family_modules", "FAMILIES"]
