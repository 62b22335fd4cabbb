"""`recstack loadgen`: its options, the target they open (an in-process engine or a server's URL), the
scenario they run (recstack.serve.loadgen), and what it prints, reports and plots."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recstack.argtypes import float_in, int_in, nonnegative_float, nonnegative_int, positive_float, positive_int, seed
from recstack.errors import ConfigError
from recstack.serve.engine import MAX_QUERY_SIZE, EngineConfig, refuse_idle_accelerator, worker_count
from recstack.serve.loadgen import OVERLOAD_FACTOR, offline_run, overload_run, server_run, trace_run
from recstack.serve.protocol import QueryTarget
from recstack.serve.workload import ARRIVAL_KINDS, SizeDistribution, Workload, check_query_count, load_trace

# --- plot ------------------------------------------------------------------------------------------


def plot_latency_vs_load(runs: Sequence[dict[str, Any]], path: str | Path, target_ms: float | None = None,
                         title: str = "") -> tuple[Path | None, str | None]:
    """p50/p95/p99 latency against offered load, one point per Server run."""
    from recstack.plotting import NO_MATPLOTLIB, figure, save_figure

    try:
        fig = figure(7.5, 4.8)
    except ImportError:
        return None, NO_MATPLOTLIB
    ax = fig.add_subplot()
    points = sorted((r for r in runs if r.get("offered_qps")), key=lambda r: r["offered_qps"])
    x = [r["offered_qps"] for r in points]
    for key, style in (("p50", "o-"), ("p95", "s-"), ("p99", "^-")):
        ax.plot(x, [r["latency_ms"][key] for r in points], style, ms=4, label=key)
    if target_ms is not None:
        ax.axhline(target_ms, color="crimson", ls="--", lw=1, label=f"target {target_ms:.1f} ms")
    rejected = [xi for xi, r in zip(x, points) if r["rejected"]]
    if rejected:
        ax.plot(rejected, [0] * len(rejected), "x", color="crimson", label="load shed (503s)")
    ax.set_yscale("log")
    ax.set_xlabel("offered load (queries/s)")
    ax.set_ylabel("latency from scheduled arrival (ms)")
    ax.set_title(title or "latency against offered load", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


# --- targets and the command -----------------------------------------------------------------------


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """What to drive: an in-process engine (a preset with random weights, or a checkpoint) or a
    running server. Shared by `loadgen` and `sched`."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", "--model", dest="preset", metavar="NAME",
                        help="a model preset with random weights (size it with --model.scale S)")
    source.add_argument("--checkpoint", metavar="C", help="a trained checkpoint")
    parser.add_argument("--workers", type=worker_count, default=2, help="engine CPU workers (default 2)")
    parser.add_argument("--mode", choices=("thread", "process"), default="thread", help="engine workers (default thread)")
    parser.add_argument("--accelerator", choices=("auto", "cuda", "cpu", "none"), default="auto",
                        help="the engine's offload pool: cuda, cpu (one more CPU worker), none; auto (default): cuda "
                        "when available, else cpu")
    parser.add_argument("--seed", type=seed, default=0, help="the one seed for weights, features, sizes and arrivals")
    parser.add_argument("--sizes", default="mlperf", metavar="DIST",
                        help="query sizes: mlperf (default), fixed:N, normal:MEAN,STD, lognormal:MU,SIGMA, file:PATH")
    parser.add_argument("--max-size", type=int_in(1, MAX_QUERY_SIZE, what=f"a query size in [1, {MAX_QUERY_SIZE}]"),
                        default=1024, help="clip query sizes to this (default 1024)")
    parser.add_argument("--arrival", choices=ARRIVAL_KINDS, default="poisson",
                        help="poisson (exponential gaps, default), deeprecsys (integer-ms Poisson gaps), fixed")


def engine_factory(args: argparse.Namespace, extra: list[str]) -> Callable[..., Any]:
    """`make(**engine_config) -> InferenceEngine` for the preset or checkpoint the arguments name;
    the only `--section.key` override accepted is --model.scale."""
    from recstack.config import parse_overrides
    from recstack.serve.engine import EngineConfig, InferenceEngine

    overrides = parse_overrides(extra)
    unknown = set(overrides) - {"model.scale"}
    if unknown:
        raise ConfigError(f"unexpected options: {', '.join('--' + k for k in sorted(unknown))}",
                          "only --model.scale applies here")
    try:
        scale = float(overrides.get("model.scale", 1.0))
    except ValueError:
        raise ConfigError(f"--model.scale must be a number, got {overrides['model.scale']!r}") from None
    if args.checkpoint and "model.scale" in overrides:
        raise ConfigError("--model.scale applies to --preset, not to a checkpoint")
    if not args.checkpoint and not args.preset:
        raise ConfigError("name a model: --preset NAME (random weights), --checkpoint C, or --url of a server")
    base = {"workers": args.workers, "mode": args.mode, "accelerator": args.accelerator}

    def make(**config: Any) -> Any:
        engine_config = EngineConfig(**(base | config))
        if args.checkpoint:
            return InferenceEngine.from_checkpoint(args.checkpoint, engine_config)
        return InferenceEngine.from_preset(args.preset, engine_config, scale=scale, seed=args.seed)

    return make


def workload_from(args: argparse.Namespace) -> Workload:
    return Workload(SizeDistribution.parse(args.sizes, args.max_size), args.arrival, args.seed)


percentile = float_in(0.0, 100.0, what="a percentile in [0, 100]")


def _rates(text: str) -> list[float]:
    try:
        rates = [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        rates = []
    if not rates or not all(r > 0 and math.isfinite(r) for r in rates):
        raise argparse.ArgumentTypeError(f"expected positive rates separated by commas, got {text!r}")
    return rates


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Offer open-loop load to an in-process engine (--preset/--checkpoint) or a server (--url) and report "
        "latency percentiles from each query's scheduled arrival. Scenarios: server (Poisson at --rate or each of "
        "--rates, or --sweep N rates up to 1.2x the measured capacity), offline (--queries at once: max "
        "throughput), overload (--factor x --rate for --duration, then back to half load), trace (--trace FILE)."
    )
    add_target_arguments(parser)
    parser.add_argument("--url", metavar="URL", help="a running `recstack serve` (http://host:port)")
    parser.add_argument("--scenario", choices=("server", "offline", "overload", "trace"), default="server")
    load = parser.add_mutually_exclusive_group()  # each sets the offered load: one at a time
    load.add_argument("--rate", type=positive_float, metavar="QPS",
                      help="offered queries/s (server; overload: the sustainable rate)")
    load.add_argument("--rates", type=_rates, metavar="LIST", help="several offered rates, e.g. 50,100,200 (plotted)")
    load.add_argument("--sweep", type=positive_int, metavar="N", help="N rates from 10%% to 120%% of the Offline capacity")
    load.add_argument("--mean-gap-ms", type=positive_float, metavar="MS", help="DeepRecSys style: the mean gap instead of --rate")
    parser.add_argument("--duration", type=positive_float, default=10.0, metavar="S", help="measured seconds per rate (default 10)")
    parser.add_argument("--warmup", type=nonnegative_float, default=1.0, metavar="S", help="seconds left out at the start (default 1)")
    parser.add_argument("--queries", type=positive_int, default=512, help="offline: queries at once (default 512)")
    parser.add_argument("--trace", metavar="FILE", help="trace: lines of arrival_seconds[ size]")
    parser.add_argument("--target-p95-ms", type=positive_float, metavar="MS", help="the latency target (of --percentile)")
    parser.add_argument("--percentile", type=percentile, default=95.0, help="the percentile held to the target (default 95)")
    parser.add_argument("--factor", type=positive_float, metavar="F", help="overload: multiple of --rate (default 3)")
    parser.add_argument("--sub-batch", type=nonnegative_int, default=0, metavar="B", help="engine: split queries into B items (0: whole)")
    parser.add_argument("--offload-threshold", type=nonnegative_int, default=0, metavar="Q", help="engine: offload queries >= Q (0: never)")
    parser.add_argument("--max-batch", type=positive_int, default=EngineConfig.max_batch, metavar="N",
                        help=f"engine: rows per model call (default {EngineConfig.max_batch})")
    parser.add_argument("--queue-limit", type=nonnegative_int, default=0, help="engine: shed beyond this many queued rows (0: never)")
    parser.add_argument("--plot", metavar="FILE.png", help="latency against load (default: beside --report)")
    parser.add_argument("--report", metavar="FILE", help="write the JSON report here")
    parser.add_argument("--quiet", action="store_true", help="no tables")


SCENARIO_OPTIONS = {"rate": ("server", "overload"), "mean_gap_ms": ("server", "overload"), "rates": ("server",),
                    "sweep": ("server",), "trace": ("trace",), "factor": ("overload",),
                    "target_p95_ms": ("server", "overload", "trace")}
"""Options (default None) that only these scenarios read: with another, they would be ignored."""
ENGINE_OPTIONS = ("workers", "mode", "accelerator", "sub_batch", "offload_threshold", "max_batch", "queue_limit")
"""The in-process engine's options, defaults EngineConfig's (a server has its own: --url refuses them)."""


def check_options(args: argparse.Namespace) -> None:
    """Refuse options the scenario would ignore, and runs too large to hold, before a model is loaded.
    Sets args.rate from --mean-gap-ms, and --factor's default."""
    for name, scenarios in SCENARIO_OPTIONS.items():
        if getattr(args, name) is not None and args.scenario not in scenarios:
            raise ConfigError(f"--{name.replace('_', '-')} applies to --scenario {' or '.join(scenarios)}, "
                              f"not to --scenario {args.scenario}")
    if args.mean_gap_ms is not None:
        args.rate = 1000.0 / args.mean_gap_ms
    if args.factor is None:  # None until here, so that the check above sees whether it was given
        args.factor = OVERLOAD_FACTOR
    if args.scenario == "offline" or args.sweep:
        check_query_count(args.queries, f"--queries {args.queries}")
    rate = max(args.rates or [args.rate or 0.0])
    if args.scenario == "server":
        if not (rate or args.sweep):
            raise ConfigError("--scenario server needs --rate, --rates, --sweep N or --mean-gap-ms")
        check_query_count(rate * (args.duration + args.warmup),
                          f"{rate:g} queries/s for --duration {args.duration:g} s + --warmup {args.warmup:g} s")
    if args.scenario == "overload":
        if not rate or args.target_p95_ms is None:
            raise ConfigError("--scenario overload needs --rate (the sustainable rate) and --target-p95-ms")
        check_query_count(args.factor * rate * args.duration,
                          f"--factor {args.factor:g} x {rate:g} queries/s for --duration {args.duration:g} s")
    if args.scenario == "trace" and not args.trace:
        raise ConfigError("--scenario trace needs --trace FILE")


def open_target(args: argparse.Namespace, extra: list[str]) -> tuple[QueryTarget, dict[str, Any]]:
    engine = {"sub_batch": args.sub_batch, "offload_threshold": args.offload_threshold, "max_batch": args.max_batch,
              "queue_limit": args.queue_limit}
    if args.url:
        from recstack.serve.http_target import HttpTarget

        defaults = EngineConfig()
        engine_given = [name for name in ENGINE_OPTIONS if getattr(args, name) != getattr(defaults, name)]
        if args.preset or args.checkpoint or extra or engine_given:
            raise ConfigError("--url drives a running server: the model and engine options are the server's "
                              "(recstack serve --workers ... --sub-batch ... --queue-limit ...)")
        return HttpTarget(args.url), {"url": args.url}
    refuse_idle_accelerator(args.accelerator, args.offload_threshold)
    return engine_factory(args, extra)(**engine), {"preset": args.preset, "checkpoint": args.checkpoint,
                                                   "workers": args.workers, "mode": args.mode, **engine}


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from recstack.progress import say
    from recstack.report import check_output_path, new_report, write_report
    from recstack.serve.engine import freeze_heap

    workload = workload_from(args)
    check_options(args)
    check_output_path(args.report)
    check_output_path(args.plot, "--plot", "plot.png")
    if args.scenario == "trace":
        workload.trace = load_trace(args.trace)
    target, described = open_target(args, extra)
    freeze_heap()
    report = new_report("loadgen") | {"target": described, "workload": workload.sizes.describe() | {
        "arrival": args.arrival, "seed": args.seed}}
    try:
        report |= _run_scenario(args, target, workload, say)
    finally:
        stats = getattr(target, "stats", None)
        if stats is not None:
            report["target_stats"] = stats()
        target.close()
    if len(report.get("runs", [])) > 1:
        plot = args.plot or (str(Path(args.report).with_suffix(".png")) if args.report else None)
        if plot:
            written, why = plot_latency_vs_load(report["runs"], plot, args.target_p95_ms,
                                                title=f"{described.get('preset') or described.get('url') or ''}, sizes {args.sizes}")
            report["plot"] = str(written) if written else why
            say(f"plot: {written}" if written else why)
    write_report(args.report, report)
    return 0


def _run_scenario(args: argparse.Namespace, target: QueryTarget, workload: Workload, say: Callable[[str], None]) -> dict[str, Any]:
    if args.scenario == "offline":
        result = offline_run(target, workload, args.queries)
        items = result.get("items_per_s")
        say(f"offline: {_qps(result['achieved_qps'])} ({'-' if items is None else f'{items:.0f}'} items/s), "
            f"p99 {_ms(result['latency_ms']['p99'])}, rejected {result['rejected']}, errors {result['errors']}")
        return result
    if args.scenario == "trace":
        result = trace_run(target, workload, percentile=args.percentile, target_ms=args.target_p95_ms)
        say(_line(result))
        return result
    if args.scenario == "overload":
        result = overload_run(target, workload, args.rate, args.target_p95_ms, factor=args.factor,
                              overload_s=args.duration)
        say(f"overload {args.factor:g}x {args.rate:.1f} q/s: shed {result['rejected']} of {result['requests']}, "
            f"accepted p99 {_ms(result['accepted_p99_ms'])} (limit {result['accepted_p99_limit_ms']:.1f}), "
            f"no rejections {result['recovered_after_s']:.2f} s after the end; passed: {result['passed']}")
        return result
    rates = args.rates or ([args.rate] if args.rate else None)
    extra: dict[str, Any] = {}
    if args.sweep:
        capacity = offline_run(target, workload, args.queries)
        if not capacity["achieved_qps"]:
            raise ConfigError(f"--sweep: the Offline run answered no query (rejected {capacity['rejected']}, "
                              f"errors {capacity['errors']}), so there is no capacity to sweep up to")
        extra["offline"] = capacity
        rates = list(np.linspace(0.1, 1.2, args.sweep) * capacity["achieved_qps"])
    runs = []
    for rate in rates:
        result = server_run(target, workload, rate, args.duration, warmup_s=args.warmup,
                            percentile=args.percentile, target_ms=args.target_p95_ms)
        runs.append(result)
        say(_line(result))
    headline = runs[-1]
    if args.target_p95_ms is not None:
        headline = max((r for r in runs if r["meets_target"]), key=lambda r: r["offered_qps"], default=runs[0])
    return headline | extra | ({"runs": runs} if len(runs) > 1 else {})


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _qps(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} queries/s"


def _line(result: dict[str, Any]) -> str:
    lat = result["latency_ms"]
    offered = result["offered_qps"]
    achieved = result["achieved_qps"]
    verdict = "" if "meets_target" not in result else ("  meets target" if result["meets_target"] else "  misses target")
    return (f"offered {offered or 0:8.1f} q/s  achieved {achieved or 0:8.1f} q/s  p50 {_ms(lat['p50'])}  "
            f"p95 {_ms(lat['p95'])}  p99 {_ms(lat['p99'])}  rejected {result['rejected']}  errors {result['errors']}{verdict}")
