"""The training loop: any model of the zoo, any EmbeddingCollection, one path.

Determinism is what makes `--resume` exact: the batch order depends only on (seed, epoch), the
checkpoint stores the position inside the epoch, the optimizer states and the RNG state, so a run
killed at any point and resumed from its latest checkpoint ends with the same parameters as one
that never stopped.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recstack import checkpoint
from recstack.config import Config, TrainConfig
from recstack.data.batch import Batch
from recstack.data.loader import BatchLoader
from recstack.data.store import Dataset
from recstack.distributed import World
from recstack.embeddings.base import embedding_collections, place
from recstack.embeddings.tiered import TieredEmbeddingCollection
from recstack.errors import CheckpointError, ConfigError
from recstack.progress import progress_bar, say
from recstack.scoring.evaluate import evaluate_rows
from recstack.train.pipeline import TrainStep

# settings that must not change between a run and its --resume (epochs, max_steps, eval and
# checkpoint cadence may: they only extend or observe the run)
RESUME_FIXED_TRAIN = ("batch_size", "optimizer", "sparse_optimizer", "lr", "sparse_lr", "weight_decay",
                      "embedding_weight_decay", "warmup_steps", "decay_start_step", "decay_steps")
RESUME_FIXED_DATA = ("path", "val_fraction", "shuffle", "drop_last", "train_split", "synth_preset", "synth_rows")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA device is available (use cpu or auto)")
    return torch.device(name)


def dense_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    """The MLP optimizer; fused (one kernel for all parameters) where torch has it: on a CPU the
    unfused Adam costs about 4x more per step for a DLRM's half-million parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    kind = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD}[train.optimizer]
    try:
        return kind(params, lr=train.lr, weight_decay=train.weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return kind(params, lr=train.lr, weight_decay=train.weight_decay)


def lr_factor(step: int, train: TrainConfig) -> float:
    """Linear warm-up, then polynomial (power 2) decay, as the DLRM reference's LRPolicyScheduler."""
    if train.warmup_steps and step < train.warmup_steps:
        return (step + 1) / train.warmup_steps
    if train.decay_steps and step >= train.decay_start_step:
        remaining = max(0, train.decay_start_step + train.decay_steps - step)
        return max(1e-7 / max(train.lr, 1e-12), (remaining / train.decay_steps) ** 2)
    return 1.0


def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


@dataclass
class _Window:
    """Loss and rate since the last progress line. Losses stay on the device until the line is
    written: reading each one would make the host wait for every step's kernels (a sync per step)."""

    losses: list[torch.Tensor] = field(default_factory=list)
    samples: int = 0
    seconds: float = 0.0

    @property
    def steps(self) -> int:
        return len(self.losses)

    def add(self, loss: torch.Tensor, samples: int, seconds: float) -> None:
        self.losses.append(loss)
        self.samples += samples
        self.seconds += seconds

    def flush(self) -> dict[str, float]:
        loss = float(torch.stack(self.losses).float().mean()) if self.losses else 0.0
        out = {"loss": loss, "samples_per_s": self.samples / max(self.seconds, 1e-9), "steps": self.steps}
        self.losses, self.samples, self.seconds = [], 0, 0.0
        return out


@dataclass
class TrainState:
    """The trainer's position and history; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    samples: int = 0
    train_seconds: float = 0.0
    seconds_by_kind: dict[str, float] = field(default_factory=dict)
    """FAE: training time (host clock) of hot and of cold batches."""
    steps_by_kind: dict[str, int] = field(default_factory=dict)
    best_auc: float = -math.inf
    best_step: int = -1
    evals_since_best: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _saved_state(saved: dict[str, Any], path: Path) -> TrainState:
    """The TrainState a checkpoint recorded; refused when its position is not one a run can be at."""
    try:
        state = TrainState(**saved)
    except TypeError as exc:
        raise CheckpointError(f"checkpoint {path}: its trainer state is not this recstack's ({exc})") from None
    position = {"step": state.step, "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch}
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in position.values()):
        raise CheckpointError(f"checkpoint {path}: its trainer position {position} is not non-negative "
                              "integers (the file is damaged)")
    return state


class Trainer:
    def __init__(
        self,
        config: Config,
        dataset: Dataset,
        model: nn.Module,
        run_dir: str | Path | None = None,
        checkpoint_dir: str | Path | None = None,
        hotcold=None,
        world: World | None = None,
    ):
        """`hotcold`: a hot/cold partition (recstack.data.hotcold) when the model's tables are on
        FAE's tiers (TieredEmbeddingCollection): training then runs all-hot / all-cold batches.
        The dense layers go to train.device; each collection places its own rows for that."""
        self.config = config
        self.train_cfg = config.train
        self.dataset = dataset
        self.device = resolve_device(config.train.device)
        self.model = place(model, self.device)
        self.optimizer = dense_optimizer(self.model, config.train)
        self.world = world or World()
        self.step = TrainStep(self.model, self.optimizer, self.device, distributed=self.world.distributed)
        self.run_dir = Path(run_dir) if run_dir and self.world.is_main else None
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        if self.checkpoint_dir is not None and self.checkpoint_dir.exists() and not self.checkpoint_dir.is_dir():
            # found now, not when the first checkpoint is written (or resumed from) after the training
            raise ConfigError(f"--checkpoint-dir {self.checkpoint_dir} is a file; give a directory for the checkpoints")
        self.state = TrainState()
        self._best_path: Path | None = None  # where the best model is kept (a file, not a copy in memory)
        self._scratch: tempfile.TemporaryDirectory | None = None
        self._scratch_path: Path | None = None
        self._metrics_log = None
        self._resumed = False

        train_a, train_b = dataset.split(config.data.train_split)
        val_rows = int((train_b - train_a) * config.data.val_fraction)
        self.train_rows = (train_a, train_b - val_rows)
        self.val_rows = (train_b - val_rows, train_b) if val_rows > 0 else None
        self.test_rows = dataset.split(config.data.test_split) if config.data.test_split in dataset.schema.splits else None
        if self.train_rows[1] <= self.train_rows[0]:
            raise ConfigError("the training split is empty (check data.val_fraction and the dataset's splits)")
        if config.train.early_stopping_patience and self.val_rows is None:
            raise ConfigError("train.early_stopping_patience needs a validation split: set data.val_fraction > 0")
        self.loader = BatchLoader(
            dataset,
            self.train_rows,
            config.train.batch_size,
            shuffle=config.data.shuffle,
            seed=config.seed,
            drop_last=config.data.drop_last,
            prefetch=config.data.prefetch,
            rank=self.world.rank,
            world_size=self.world.world_size,
        )
        if len(self.loader) == 0:
            raise ConfigError(
                f"the training split has fewer rows than one batch ({config.train.batch_size}) and data.drop_last is set"
            )
        # FAE: all-hot and all-cold batches from the partition's pools, in the schedule's order
        self.fae_batches = None
        self.steps_per_epoch = len(self.loader)
        self.tiers = [c for c in embedding_collections(self.model) if isinstance(c, TieredEmbeddingCollection)]
        self.batch_kind: str | None = None  # FAE: the tier of the batch in hand
        if hotcold is not None:
            from recstack.train.fae import FAEBatches

            if not self.tiers:
                raise ConfigError("a hot/cold partition was given but no table of the model is on FAE's tiers")
            if self.world.distributed:
                raise ConfigError("FAE (fae.budget) runs on one rank; several ranks shard the tables instead")

            self.fae_batches = FAEBatches(
                dataset, hotcold, rows=self.train_rows, batch_size=config.train.batch_size,
                shuffle=config.data.shuffle, seed=config.seed, drop_last=config.data.drop_last,
                prefetch=config.data.prefetch,
            )
            self.schedule = self.fae_batches.schedule(config.fae.switch_period or None)
            self.steps_per_epoch = len(self.schedule)
        self.total_steps = self.steps_per_epoch * config.train.epochs
        if config.train.max_steps:
            self.total_steps = min(self.total_steps, config.train.max_steps) if config.train.epochs else config.train.max_steps

    # --- checkpoints -------------------------------------------------------------------------

    def _payload(self, with_model: bool = True) -> dict[str, Any]:
        vocab = {name: self.dataset.vocab(name) for name in self.dataset.schema.vocab}
        return {
            "config": self.config.to_dict(),
            "schema": self.dataset.schema.to_json(),
            "vocab": checkpoint.vocab_to_tensors({k: v for k, v in vocab.items() if v is not None}),
            **({"model": self.model.state_dict()} if with_model else {}),
            "dense_optimizer": self.optimizer.state_dict(),
            "trainer": self.state.to_dict(),
            "rng": torch.get_rng_state(),
        }

    def save_checkpoint(self) -> Path | None:
        if self.checkpoint_dir is None:
            return None
        name = checkpoint.checkpoint_name(self.state.step)
        path = self._save(self.checkpoint_dir / (name.removesuffix(".pt") if self.world.distributed else name))
        if self.world.is_main:
            checkpoint.prune(self.checkpoint_dir, self.train_cfg.keep_checkpoints)
        return path

    def _save(self, path: Path) -> Path:
        """One file, or on several ranks a directory of every rank's shards (recstack.checkpoint.sharded)."""
        if not self.world.distributed:
            return checkpoint.save(path, self._payload())
        from recstack.checkpoint.sharded import save_sharded
        from recstack.distributed import gather_objects

        return save_sharded(path, self._payload(with_model=False), self.model, gather_objects(torch.get_rng_state()))

    def _keep_best(self) -> None:
        """Write the model as it is now as the best one: best.pt beside the checkpoints (a whole
        checkpoint, which `--resume` reads back), else a scratch file; never a copy in memory."""
        best = checkpoint.BEST if not self.world.distributed else checkpoint.BEST.removesuffix(".pt")
        if self.checkpoint_dir is not None:
            self._best_path = self._save(self.checkpoint_dir / best)
            return
        if self._scratch is None:
            from recstack.distributed import gather_objects

            self._scratch = tempfile.TemporaryDirectory(prefix="recstack-best-")
            self._scratch_path = Path(gather_objects(self._scratch.name)[0])  # rank 0's, on one machine
        if self.world.distributed:
            self._best_path = self._save(self._scratch_path / best)
        else:
            self._best_path = checkpoint.save(self._scratch_path / best, {"model": self.model.state_dict()})

    def resume(self) -> bool:
        """Load the latest checkpoint of checkpoint_dir; False when there is none yet."""
        if self.checkpoint_dir is None:
            raise ConfigError("--resume needs --checkpoint-dir")
        path = checkpoint.latest(self.checkpoint_dir)
        if path is None:
            return False
        payload = checkpoint.load(path, map_location=self.device, require=checkpoint.RESUMING)
        self._check_resumable(payload, path)
        checkpoint.load_model(self.model, payload)
        checkpoint.load_state(self.optimizer, payload["dense_optimizer"], path, what="optimizer")
        self.state = _saved_state(payload["trainer"], path)
        rngs = payload.get("rng_per_rank")
        if rngs is not None and len(rngs) != self.world.world_size:
            say(f"resumed on {self.world.world_size} rank(s) from a checkpoint of {len(rngs)}: the tables are "
                "resharded; random draws (dropout) continue from rank 0's stream")
        try:
            torch.set_rng_state(payload["rng"] if rngs is None or len(rngs) != self.world.world_size
                                else rngs[self.world.rank])
        except (RuntimeError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {path}: its RNG state is damaged ({exc})") from None
        best = self.checkpoint_dir / (checkpoint.BEST.removesuffix(".pt") if self.world.distributed else checkpoint.BEST)
        if self.state.best_step >= 0 and best.exists():
            self._best_path = best
        self._resumed = True
        say(f"resumed from {path.name}: epoch {self.state.epoch}, step {self.state.step}")
        return True

    def _check_resumable(self, payload: dict[str, Any], path: Path) -> None:
        """Refuse to resume under settings that change the model, its data or the batch order."""
        saved, now = payload["config"], self.config.to_dict()
        # embeddings: is where the tables live (one process, sharded by any plan over any ranks): the
        # logical state loads into any placement, so a run may resume resharded
        keys = [("model", None), ("seed", None), ("fae", None)] + [("train", k) for k in RESUME_FIXED_TRAIN] + [
            ("data", k) for k in RESUME_FIXED_DATA
        ]
        differ = []
        for section, key in keys:
            a, b = saved.get(section), now.get(section)
            if key is not None:
                a, b = (a or {}).get(key), (b or {}).get(key)
            if a != b:
                differ.append(f"{section}.{key}" if key else section)
        if payload["schema"] != self.dataset.schema.to_json():
            differ.append("the dataset (--data)")
        if differ:
            raise CheckpointError(
                f"cannot resume from {path}: it was written with other {', '.join(differ)}; "
                "resume with the same settings, or use a new --checkpoint-dir"
            )

    # --- the loop ----------------------------------------------------------------------------

    def _log(self, record: dict[str, Any]) -> None:
        if self.run_dir is None:
            return
        if self._metrics_log is None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            # a new run starts the log afresh; a resumed one continues it
            self._metrics_log = open(self.run_dir / "metrics.jsonl", "a" if self._resumed else "w")
        self._metrics_log.write(json.dumps(record) + "\n")
        self._metrics_log.flush()

    def _set_lr(self) -> float:
        factor = lr_factor(self.state.step, self.train_cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = self.train_cfg.lr * factor
        return self.train_cfg.sparse_lr * factor

    def train_step(self, batch: Batch) -> torch.Tensor:
        return self.step(batch, self._set_lr())

    def _evaluate_periodic(self) -> bool:
        """Evaluate on validation (or test when there is none); True when training should stop."""
        split, rows = ("val", self.val_rows) if self.val_rows is not None else ("test", self.test_rows)
        if rows is None:
            return False
        metrics = self._evaluate(rows)
        record = {"step": self.state.step, "epoch": self.state.epoch, "split": split, **metrics}
        self.state.history.append(record)
        self._log({"event": "eval", **record})
        improved = split == "val" and metrics["auc"] > self.state.best_auc
        if improved or split != "val" or len(self.state.history) % 10 == 1:
            mark = "  (best)" if improved else ""
            say(f"step {self.state.step:>7}  {split} auc {metrics['auc']:.4f}  logloss {metrics['logloss']:.4f}{mark}")
        if split != "val":
            return False
        if improved:
            self.state.best_auc = metrics["auc"]
            self.state.best_step = self.state.step
            self.state.evals_since_best = 0
            if self.train_cfg.early_stopping_patience:
                self._keep_best()
        else:
            self.state.evals_since_best += 1
        patience = self.train_cfg.early_stopping_patience
        return bool(patience and self.state.evals_since_best >= patience)

    def _epoch_batches(self, epoch: int, start: int):
        """The batches of an epoch from position `start`; with FAE, the embeddings switch to each
        batch's tier first (the switch syncs the hot rows and their optimizer state)."""
        if self.fae_batches is None:
            yield from self.loader.epoch(epoch, start_batch=start)
            return
        if self.fae_batches.hot.transform is None:  # hot ids remapped (and batches pinned) on the loader thread
            # (a batch can carry one collection's hot ids: with several tiered collections each remaps its own)
            self.fae_batches.prepare_for(self.tiers[0] if len(self.tiers) == 1 else None, pin=self.device.type == "cuda")
        for kind, batch in self.fae_batches.epoch(epoch, self.schedule, start=start):
            for tiers in self.tiers:
                tiers.set_mode(kind)
            self.batch_kind = kind
            yield batch

    def _finished(self) -> bool:
        if self.state.stopped_early or self.state.step >= self.total_steps:
            return True
        return not self.train_cfg.max_steps and self.state.epoch >= self.train_cfg.epochs

    def fit(self) -> dict[str, Any]:
        """Train until the epochs or max_steps run out, or early stopping ends it; keep the best
        validation model when early stopping is on; write the final checkpoint."""
        cfg = self.train_cfg
        self.model.train()
        window = _Window()
        with progress_bar("training", total=self.total_steps, status="") as bar:
            bar.update(self.state.step)
            while not self._finished():
                last = time.perf_counter()
                for batch in self._epoch_batches(self.state.epoch, self.state.batch_in_epoch):
                    loss = self.train_step(batch)
                    s = self.state
                    s.step += 1
                    s.batch_in_epoch += 1
                    s.samples += self.step.global_rows
                    now = time.perf_counter()
                    s.train_seconds += now - last
                    if self.fae_batches is not None:
                        kind = self.batch_kind
                        s.seconds_by_kind[kind] = s.seconds_by_kind.get(kind, 0.0) + now - last
                        s.steps_by_kind[kind] = s.steps_by_kind.get(kind, 0) + 1
                    window.add(loss, batch.batch_size, now - last)
                    epoch_done = s.batch_in_epoch >= self.steps_per_epoch
                    if epoch_done:
                        s.epoch += 1
                        s.batch_in_epoch = 0
                    at_end = s.step >= self.total_steps or (not cfg.max_steps and s.epoch >= cfg.epochs)
                    if window.steps >= cfg.log_every or at_end:
                        record = {"event": "train", "step": s.step, "epoch": s.epoch, **window.flush()}
                        self._log(record)
                        bar.update(record["steps"], status=f"loss {record['loss']:.4f}  {record['samples_per_s']:,.0f} samples/s")
                    periodic = cfg.eval_every and s.step % cfg.eval_every == 0
                    # the last model is always judged on validation, so early stopping can keep it
                    if periodic or (epoch_done and not cfg.eval_every) or (at_end and self.val_rows is not None):
                        if self._evaluate_periodic():
                            s.stopped_early = True
                    if cfg.checkpoint_every and s.step % cfg.checkpoint_every == 0:
                        self.save_checkpoint()
                    last = time.perf_counter()
                    if epoch_done or self._finished():
                        break
                else:  # the loader ran dry before len(loader) batches: count the epoch as over
                    self.state.epoch += 1
                    self.state.batch_in_epoch = 0
        # the last step's model under the last step's name (what --resume continues from) ...
        final = self.save_checkpoint()
        if self._best_path is not None and cfg.early_stopping_patience:
            # ... and the model validation chose in memory, and in best.pt, which the report names
            checkpoint.load_model(self.model, checkpoint.load(self._best_path, map_location=self.device, require=("model",)))
            say(f"kept the best model: step {self.state.best_step}, val auc {self.state.best_auc:.4f}")
            if self.checkpoint_dir is not None:
                final = self._best_path
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None
        if self._metrics_log is not None:
            self._metrics_log.close()
            self._metrics_log = None
        return {"checkpoint": str(final) if final else None}

    def _evaluate(self, rows: tuple[int, int]) -> dict[str, Any]:
        return evaluate_rows(self.model, self.dataset, rows, self.train_cfg.eval_batch_size, self.device,
                             rank=self.world.rank, world_size=self.world.world_size)

    def final_metrics(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name, rows in (("val", self.val_rows), ("test", self.test_rows)):
            if rows is not None:
                out[name] = self._evaluate(rows)
        return out
