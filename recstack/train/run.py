"""`recstack train`: resolve the data (synthesizing it when none is given), build the model,
train, evaluate, print a summary and write the JSON report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from recstack.config import Config
from recstack.data.store import Dataset
from recstack.distributed import World, agree, join, launched
from recstack.errors import ConfigError, RecstackError
from recstack.models.zoo import build_model, describe
from recstack.progress import console, is_quiet, say, set_quiet
from recstack.report import check_output_path, new_report, write_report
from recstack.train.datasets import cache_dir, open_dataset, synthetic_dataset  # noqa: F401 (their home before)
from recstack.train.trainer import Trainer, resolve_device


def fae_partition(config: Config, dataset: Dataset):
    """FAE's hot/cold partition of the dataset for the config's budget (built once and stored with the
    dataset; rebuilt when its parameters differ). The budget is sized on model.embedding_dim rows and
    the sparse optimizer's state; every tiered collection takes its tables' hot rows from it."""
    from recstack.data.hotcold import build_hot_cold, load_hot_cold, parse_bytes, parse_fraction
    from recstack.embeddings import SparseOptimizerConfig
    from recstack.errors import DataError

    dim = config.model.embedding_dim
    state_floats = SparseOptimizerConfig(kind=config.train.sparse_optimizer).state_floats_per_row(dim)
    wanted = {
        "budget_bytes": parse_bytes(config.fae.budget),
        "sample": parse_fraction(config.fae.sample),
        "dim": dim,
        "state_bytes_per_row": 4 * state_floats,
        "seed": config.seed,
    }
    try:
        hotcold = load_hot_cold(dataset.path)
        stale = any(hotcold.summary.get(k) != v for k, v in wanted.items()) or (
            hotcold.summary.get("dataset", {}).get("split") != config.data.train_split
        )
    except DataError:
        hotcold, stale = None, True
    if stale:
        say(f"FAE: profiling {wanted['sample']:.0%} of the inputs for a {config.fae.budget} hot set")
        build_hot_cold(dataset.path, wanted["budget_bytes"], sample=wanted["sample"], dim=dim,
                       state_bytes_per_row=wanted["state_bytes_per_row"], split=config.data.train_split,
                       seed=config.seed, show_progress=not is_quiet())
        hotcold = load_hot_cold(dataset.path)
    return hotcold


def tiered_collections(model) -> list:
    from recstack.embeddings.tiered import TieredEmbeddingCollection

    return [c for c in model.embedding_collections() if isinstance(c, TieredEmbeddingCollection)]


def describe_tiers(model, hotcold) -> None:
    tiers = tiered_collections(model)
    hot_rows = sum(c.num_hot_rows for c in tiers)
    where = ", ".join(sorted({str(c.hot_device) for c in tiers}))
    say(f"FAE: {hot_rows:,} hot rows on {where}, {hotcold.hot_input_fraction:.1%} of the inputs all-hot")
    untiered = {name: why for c in tiers for name, why in c.untiered.items()}
    if untiered:
        reasons = "; ".join(f"{why}: {', '.join(sorted(n for n, w in untiered.items() if w == why))}"
                            for why in sorted(set(untiered.values())))
        say(f"FAE: {len(untiered)} table(s) stay on the full tier only ({reasons})")


def fae_report(model, trainer, hotcold, config: Config) -> dict[str, Any]:
    """The report's `fae` section: the partition, the tiers' counters (summed over collections), the time split."""
    state, tiers = trainer.state, tiered_collections(model)
    counters = {key: sum(c.stats()[key] for c in tiers) for key in ("hot_rows", "hot_bytes", "switches", "syncs",
                                                                    "bytes_synced")}
    return {
        "hot_input_fraction": trainer.fae_batches.hot_input_fraction,
        "budget": hotcold.summary.get("budget"),
        "sample": hotcold.summary.get("sample"),
        "switch_period": config.fae.switch_period or None,
        "mode": tiers[0].mode,
        "hot_device": str(tiers[0].hot_device),
        **counters,
        "untiered_tables": {name: why for c in tiers for name, why in c.untiered.items()},
        "hot_seconds": state.seconds_by_kind.get("hot", 0.0),
        "cold_seconds": state.seconds_by_kind.get("cold", 0.0),
        "hot_steps": state.steps_by_kind.get("hot", 0),
        "cold_steps": state.steps_by_kind.get("cold", 0),
    }


def open_dataset_on_every_rank(config: Config, world: World) -> Dataset:
    """The dataset, on every rank: synthetic data is made once, by rank 0, while the others wait; a
    rank that cannot open it stops the job with one line on every rank."""
    if world.distributed and not config.data.path:
        error = None
        if world.is_main:
            try:
                synthetic_dataset(config)
            except RecstackError as exc:
                error = exc
        agree(error, "make the synthetic dataset")
    error, dataset = None, None
    try:
        dataset = open_dataset(config)
    except RecstackError as exc:
        error = exc
    agree(error, "open the dataset")
    return dataset


def sharding_plan(config: Config, dataset: Dataset, world: World):
    """(the ShardingPlan for the job's ranks, the planner's prediction or None): from embeddings.plan
    (a `recstack plan` report), embeddings.sharding (one type for all), or the planner."""
    import json

    from recstack.embeddings.sharding import ShardingPlan
    from recstack.train.plan_command import model_tables, plan_for

    if config.embeddings.kind == "dense":  # several ranks: the tables are sharded over them
        config.embeddings.kind = "sharded"
    if config.embeddings.kind != "sharded":
        raise ConfigError(f"training on {world.world_size} ranks shards the tables: embeddings kind "
                          f"{config.embeddings.kind} runs on one rank")
    tables = {t.name: t for c in model_tables(config, dataset.schema)["collections"] for t in c}
    prediction = None
    if config.embeddings.plan:
        path = Path(config.embeddings.plan)
        try:
            plan = ShardingPlan.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the sharding plan {path}: {exc}") from None
        if plan.world_size != world.world_size:
            raise ConfigError(f"the sharding plan {path} is for {plan.world_size} ranks; this job has {world.world_size}")
    elif config.embeddings.sharding != "auto":
        plan = ShardingPlan.uniform(list(tables.values()), world.world_size, config.embeddings.sharding)
    else:
        plan, prediction = plan_for(config, dataset, world.world_size)
    plan.check(list(tables.values()))
    if prediction is None:
        from recstack.train.plan_command import predict_for

        prediction = predict_for(config, dataset, plan)
    say(f"sharded over {world.world_size} ranks: " + ", ".join(
        f"{sum(1 for s in plan.tables.values() if s.sharding == kind)} {kind}" for kind in
        sorted({s.sharding for s in plan.tables.values()})) + " table(s)")
    return plan, prediction


def distributed_report(model, trainer, world: World, plan, prediction) -> dict[str, Any]:
    """The report's `distributed` section (every rank calls it: it gathers every rank's figures)."""
    from recstack.distributed import Collectives, gather_objects
    from recstack.embeddings.sharded import ShardedEmbeddingCollection

    comm = Collectives()
    for c in model.embedding_collections():
        if isinstance(c, ShardedEmbeddingCollection):
            for kind, sent in c.comm.bytes.items():
                comm.add(kind, sent, c.comm.seconds.get(kind, 0.0))
    state = trainer.state
    ranks = gather_objects({"bytes": comm.bytes, "seconds": comm.seconds, "train_seconds": state.train_seconds,
                            "steps": state.step})
    steps = max(state.step, 1)
    by_kind: dict[str, int] = {}
    for r in ranks:
        for kind, sent in r["bytes"].items():
            by_kind[kind] = by_kind.get(kind, 0) + sent
    all_to_all = sum(v for k, v in by_kind.items() if k.startswith(("input", "output")))
    return {
        "world_size": world.world_size,
        "plan": plan.to_dict()["tables"],
        "step_seconds_per_rank": [r["train_seconds"] / max(r["steps"], 1) for r in ranks],
        "collective_bytes_per_step": {k: v / steps for k, v in sorted(by_kind.items())},
        "collective_seconds_per_rank": [r["seconds"] for r in ranks],
        "collective_share_per_rank": [sum(r["seconds"].values()) / r["train_seconds"] if r["train_seconds"] else None
                                      for r in ranks],
        "all_to_all_bytes_per_step": all_to_all / steps,
        "predicted_all_to_all_bytes_per_step": None if prediction is None else prediction.all_to_all_bytes_per_step,
    }


def default_run_dir() -> Path:
    return Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")


def train(
    config: Config,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    report_path: str | Path | None = None,
    run_dir: str | Path | None = None,
    baselines: list[str] | None = None,
) -> dict[str, Any]:
    """`baselines`: specs of recstack.train.baselines, trained and scored after the main model."""
    from recstack.train.baselines import parse_baselines, print_baselines, run_baselines

    check_output_path(report_path)  # before the training whose figures it would hold
    world = join(config.train.device) if launched() else World()
    if not world.is_main:
        set_quiet(True)  # rank 0 speaks and writes the report
    torch.manual_seed(config.seed)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    synthesized = not config.data.path
    dataset = open_dataset_on_every_rank(config, world)
    compared = parse_baselines(baselines or [], config, dataset)
    run_dir = Path(run_dir) if run_dir else (Path(report_path).parent if report_path else default_run_dir())
    if config.train.checkpoint_every and checkpoint_dir is None:
        raise ConfigError("train.checkpoint_every needs --checkpoint-dir (where to write the checkpoints)")
    hotcold = fae_partition(config, dataset) if config.fae.budget else None
    plan, prediction = sharding_plan(config, dataset, world) if world.distributed else (None, None)
    model = build_model(config, dataset.schema, world.device if world.distributed else resolve_device(config.train.device),
                        hot_rows=hotcold, sharding=plan)
    if hotcold is not None:
        describe_tiers(model, hotcold)
    trainer = Trainer(config, dataset, model, run_dir=run_dir, checkpoint_dir=checkpoint_dir, hotcold=hotcold,
                      world=world)
    if resume:
        trainer.resume()
    sizes = describe(model)
    say(
        f"{config.model.name} ({config.model.preset}): {sizes['dense_params']:,} dense parameters, "
        f"{sizes['embedding_rows']:,} embedding rows ({sizes['embedding_bytes'] / 2**20:,.1f} MiB), "
        f"{trainer.total_steps:,} steps of {config.train.batch_size}"
    )
    outcome = trainer.fit()
    metrics = trainer.final_metrics()
    state = trainer.state
    report = new_report("train", config.to_dict())
    report.update(
        {
            "data": {
                "path": str(dataset.path),
                "synthetic": synthesized,
                "rows": {"train": trainer.train_rows, "val": trainer.val_rows, "test": trainer.test_rows},
                "info": {k: v for k, v in dataset.schema.info.items() if k in ("generator", "preset", "true_auc", "true_logloss", "source", "mode")},
            },
            "model": sizes,
            "metrics": metrics.get("test") or metrics.get("val") or {},
            "metrics_by_split": metrics,
            "throughput": {
                "samples_per_s": state.samples / state.train_seconds if state.train_seconds else None,
                "samples": state.samples,
                "steps": state.step,
                "train_seconds": state.train_seconds,
            },
            "training": {
                "epochs_completed": state.epoch,
                "best_val_auc": state.best_auc if state.best_step >= 0 else None,
                "best_step": state.best_step if state.best_step >= 0 else None,
                "stopped_early": state.stopped_early,
                "history": state.history,
            },
            "checkpoint": outcome["checkpoint"],
            "run_dir": str(run_dir),
        }
    )
    if hotcold is not None:
        report["fae"] = fae_report(model, trainer, hotcold, config)
    if world.distributed:
        report["distributed"] = distributed_report(model, trainer, world, plan, prediction)
        if not world.is_main:
            return report
    if compared:
        report["baselines"] = run_baselines(compared, config, dataset, trainer)
    report_path = Path(report_path) if report_path else run_dir / "report.json"
    write_report(report_path, report)
    report["report_path"] = str(report_path)
    if not is_quiet():
        print_summary(report)
        if compared:
            print_baselines(report)
    return report


def print_summary(report: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="recstack train", show_header=True, header_style="bold")
    table.add_column("split")
    for col in ("AUC", "log loss", "NE", "accuracy", "rows"):
        table.add_column(col, justify="right")
    for split, m in report["metrics_by_split"].items():
        # a multi-task model: one row per task (the split's top line is its first task)
        rows = [(f"{split} {task}", tm) for task, tm in m["tasks"].items()] if "tasks" in m else [(split, m)]
        for name, tm in rows:
            table.add_row(name, f"{tm['auc']:.4f}", f"{tm['logloss']:.4f}", f"{tm['ne']:.4f}", f"{tm['accuracy']:.4f}",
                          f"{tm['count']:,}")
    true_auc = report["data"]["info"].get("true_auc")
    if true_auc is not None:
        per_task = true_auc.items() if isinstance(true_auc, dict) else [("", true_auc)]
        for task, auc in per_task:
            table.add_row(f"true model {task}".strip(), f"{float(auc):.4f}", "", "", "", "", style="dim")
        table.caption = "true model: the generator's own probabilities, the best any model can reach"
    console.print(table)
    for split, m in report["metrics_by_split"].items():
        if "hr_at_10" in m:
            console.print(f"{split} ranking: HR@10 {m['hr_at_10']:.4f}  NDCG@10 {m['ndcg_at_10']:.4f} "
                          f"({m['ranking_users']:,} groups of {m['ranking_candidates']} candidates)")
        if "full_ranking_users" in m:
            k = next(key for key in m if key.startswith("recall_at_")).removeprefix("recall_at_")
            console.print(f"{split} full ranking: Recall@{k} {m['recall_at_' + k]:.4f}  NDCG@{k} {m['ndcg_at_' + k]:.4f} "
                          f"({m['full_ranking_users']:,} users x {m['full_ranking_items']:,} items, trained items excluded)")
    t = report["throughput"]
    rate = f"{t['samples_per_s']:,.0f}" if t["samples_per_s"] else "n/a"
    console.print(f"{t['samples']:,} samples in {t['train_seconds']:.1f} s of training ({rate} samples/s)")
    if report["checkpoint"]:
        console.print(f"checkpoint: {report['checkpoint']}")
    console.print(f"report: {report['report_path']}")
