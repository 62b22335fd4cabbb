"""`recstack profile --model NAME`: a few training steps under torch.profiler, with the step time split
by operator family: embedding lookup, MLP, interaction, attention (forward and backward of the layers
that declare each family), optimizer (the dense step and the sparse row updates), data loading, and
the rest (loss, autograd bookkeeping). The families add up to the measured step time.

A family's forward time is the profiler's total of its `family::<name>` ranges, opened and closed by
module hooks (the model files carry no profiling code); its backward time is the total of the autograd
nodes whose sequence numbers the forward ops inside those ranges recorded (the profiler's link
between a forward op and its backward).
"""

from __future__ import annotations

import argparse
import bisect
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from recstack.argtypes import int_in
from recstack.models.base import FAMILIES, family_modules
from recstack.train import pipeline

STEP = "family::step"
PIPELINE_PHASES = {pipeline.DATA: "data", pipeline.OPTIMIZER: "optimizer"}
"""The training step's own profiler ranges (recstack.train.pipeline) -> the family they count to."""
ORDER = ["data", *FAMILIES, "optimizer", "other"]
MAX_STEPS = 10_000
"""Most profiled (and warm-up) steps: the profiler keeps every event in memory, and the synthetic data
is sized for the steps; a profile needs tens."""


class _Ranges:
    """Opens a profiler range when a family's module starts its forward and closes it at the end."""

    def __init__(self, model: nn.Module):
        self.handles = []
        modules = dict(model.named_modules())
        for name, family in family_modules(model).items():
            module = modules[name]
            self.handles.append(module.register_forward_pre_hook(self._opener(f"family::{family}")))
            self.handles.append(module.register_forward_hook(self._closer()))
            if family == "embedding":  # behaviour sequences are looked up by a method, not forward
                self._wrap_sequences(module)
        self._open: list[Any] = []

    def _wrap_sequences(self, collection: nn.Module) -> None:
        lookup = collection.sequences

        def sequences(*args, **kwargs):
            with record_function("family::embedding"):
                return lookup(*args, **kwargs)

        collection.sequences = sequences
        self.handles.append(_Unwrap(collection))

    def _opener(self, label: str):
        def hook(*_):
            scope = record_function(label)
            scope.__enter__()
            self._open.append(scope)

        return hook

    def _closer(self):
        def hook(*_):
            if self._open:
                self._open.pop().__exit__(None, None, None)

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class _Unwrap:
    """Removes an instance-level method wrapper, like a hook handle."""

    def __init__(self, module: nn.Module):
        self.module = module

    def remove(self) -> None:
        del self.module.sequences


BACKWARD_NODE = "autograd::engine::evaluate_function: "


def backward_seconds(events) -> dict[str, float]:
    """Backward time per family: each autograd node is charged to the family whose forward range
    contained the forward op of the same sequence number."""
    ranges = sorted((e.time_range.start, e.time_range.end, e.key.removeprefix("family::")) for e in events
                    if e.key.startswith("family::") and e.key != STEP and e.key not in ("family::data", "family::optimizer"))
    starts = [r[0] for r in ranges]
    family_of_sequence: dict[int, str] = {}
    for e in events:
        if e.sequence_nr < 0 or e.key.startswith(BACKWARD_NODE) or e.key.startswith("family::"):
            continue
        i = bisect.bisect_right(starts, e.time_range.start) - 1
        if i >= 0 and e.time_range.end <= ranges[i][1]:
            family_of_sequence.setdefault(e.sequence_nr, ranges[i][2])
    out: dict[str, float] = defaultdict(float)
    for e in events:
        if e.key.startswith(BACKWARD_NODE) and e.sequence_nr in family_of_sequence:
            out[family_of_sequence[e.sequence_nr]] += (e.time_range.end - e.time_range.start) / 1e6
    return dict(out)


def profile_training(trainer, steps: int, warmup: int) -> dict[str, Any]:
    """Run warmup + steps training steps of a Trainer, the last `steps` under the profiler."""
    model, device = trainer.model, trainer.device
    batches = trainer.loader.epoch(0)

    def step() -> None:
        with record_function(STEP):
            with record_function("family::data"):  # waiting for the loader; the step's own copy is pipeline.DATA
                batch = next(batches)
            trainer.step(batch, trainer.train_cfg.sparse_lr)
            if device.type == "cuda":
                torch.cuda.synchronize()

    model.train()
    for _ in range(warmup):
        step()
    ranges = _Ranges(model)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    try:
        start = time.perf_counter()
        with profile(activities=activities) as prof:
            for _ in range(steps):
                step()
        wall = time.perf_counter() - start
    finally:
        ranges.remove()
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        family = PIPELINE_PHASES.get(event.key) or (event.key.removeprefix("family::") if event.key.startswith("family::") else None)
        if family is not None:
            totals[family] = totals.get(family, 0.0) + event.cpu_time_total / 1e6
    step_seconds = totals.pop("step", wall)
    backward = backward_seconds(prof.events())
    families = {name: totals.get(name, 0.0) + backward.get(name, 0.0) for name in ORDER if name != "other"}
    families["other"] = max(step_seconds - sum(families.values()), 0.0)
    top_ops = sorted((e for e in prof.key_averages() if not e.key.startswith("family::") and e.key not in PIPELINE_PHASES),
                     key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    return {
        "steps": steps,
        "warmup_steps": warmup,
        "batch_size": trainer.train_cfg.batch_size,
        "step_ms": 1e3 * step_seconds / steps,
        "wall_ms_per_step": 1e3 * wall / steps,
        "samples_per_s": steps * trainer.train_cfg.batch_size / step_seconds,
        "seconds": families,
        "backward_seconds": backward,
        "share": {k: v / step_seconds for k, v in families.items()},
        "top_ops": [{"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1e3, "calls": e.count} for e in top_ops],
    }


def plot_profile(result: dict[str, Any], title: str, path: str | Path) -> tuple[Path | None, str | None]:
    from recstack.analyze.plots import NO_MATPLOTLIB, _figure, save_figure

    try:
        fig = _figure(7.0, 3.8)
    except ImportError:
        return None, NO_MATPLOTLIB
    ax = fig.add_subplot()
    names = [n for n in ORDER if n in result["share"]]
    ms = [1e3 * result["seconds"][n] / result["steps"] for n in names]
    bars = ax.barh(names[::-1], ms[::-1], color="#4c72b0")
    for bar, name in zip(bars, names[::-1]):
        ax.annotate(f"{100 * result['share'][name]:.0f}%", (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                    xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_xlabel("ms per training step")
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    return save_figure(fig, path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="PRESET", help="model preset to profile (recstack models)")
    parser.add_argument("--config", metavar="FILE", help="a YAML config (its model preset is replaced by --model)")
    parser.add_argument("--data", metavar="DIR", help="a prepared dataset (default: the preset's synthetic data)")
    parser.add_argument("--steps", type=int_in(1, MAX_STEPS, what=f"a step count in [1, {MAX_STEPS}]"), default=20,
                        help="profiled steps (default 20)")
    parser.add_argument("--warmup", type=int_in(0, MAX_STEPS, what=f"a step count in [0, {MAX_STEPS}]"), default=5,
                        help="steps run before profiling (default 5)")
    parser.add_argument("--report", metavar="FILE", help="write the JSON report here (the PNG goes beside it)")
    parser.add_argument("--plot", metavar="FILE.png", help="the bar chart's PNG (default: beside --report)")
    parser.add_argument("--quiet", action="store_true", help="no table, no profiler log lines")


def quiet_profiler_log() -> None:
    """Silence kineto's own log lines (`USDT: ... profiler_start`, `STAGE: ...`), which it writes to stderr
    from C++: it reads KINETO_LOG_LEVEL when the first profile starts, and 6 is above its highest level.
    A level the user set is kept."""
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from recstack.analyze.plots import plot_path
    from recstack.config import parse_overrides, resolve
    from recstack.errors import ConfigError
    from recstack.models.zoo import build_model
    from recstack.progress import console, is_quiet, say
    from recstack.report import check_output_path, new_report, write_report
    from recstack.train.datasets import open_dataset
    from recstack.train.trainer import Trainer

    check_output_path(args.report)
    plot = args.plot or (str(Path(args.report).with_suffix(".png")) if args.report else None)
    if plot:
        plot = plot_path(plot)
    overrides = {"model.preset": args.model, **parse_overrides(extra)}
    if args.data:
        overrides["data.path"] = args.data
    config = resolve(args.config, overrides)
    needed = (args.steps + args.warmup) * config.train.batch_size
    if not config.data.path and "data.synth_rows" not in overrides:
        # enough synthetic rows for the steps (the test split is carved from them), not the default dataset
        config.data.synth_rows = int(needed / (1 - config.data.synth_test_fraction)) + config.train.batch_size
    config.data.drop_last, config.train.max_steps = True, 0
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    torch.manual_seed(config.seed)
    dataset = open_dataset(config)
    trainer = Trainer(config, dataset, build_model(config, dataset.schema))
    if len(trainer.loader) < args.steps + args.warmup:
        raise ConfigError(f"the training split holds {len(trainer.loader)} batches; --steps + --warmup need "
                          f"{args.steps + args.warmup}")
    if is_quiet():
        quiet_profiler_log()
    say(f"profiling {args.steps} steps of {config.model.preset} ({config.model.name}), batch {config.train.batch_size}")
    result = profile_training(trainer, args.steps, args.warmup)
    result["model"] = {"preset": config.model.preset, "name": config.model.name, "device": str(trainer.device)}
    if plot:
        written, reason = plot_profile(result, f"{config.model.preset}: training step by operator family", plot)
        result["plot"] = str(written) if written else None
        if reason:
            say(reason)
    if args.report:
        report = new_report("profile", config.to_dict())
        report.update(result)
        write_report(args.report, report)
    if not is_quiet():
        from rich.table import Table

        table = Table(title=f"{config.model.preset}: {result['step_ms']:.1f} ms per step of {config.train.batch_size}",
                      header_style="bold")
        for col in ("family", "ms/step", "share"):
            table.add_column(col, justify="left" if col == "family" else "right")
        for name in ORDER:
            table.add_row(name, f"{1e3 * result['seconds'][name] / args.steps:.2f}", f"{100 * result['share'][name]:.1f}%")
        console.print(table)
    return 0
