"""The `recstack` command: one thin sub-command per verb. The work lives in the package; this file
only parses arguments, calls it, and turns a RecstackError into one line and a non-zero exit."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from recstack.argtypes import nonnegative_int, positive_int, seed
from recstack.errors import ConfigError, RecstackError


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--report", metavar="FILE", help="write the JSON report here")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or tables")


def _config_from(args: argparse.Namespace, extra: list[str]):
    from recstack.config import parse_overrides, resolve

    overrides: dict[str, Any] = {}
    if getattr(args, "data", None):
        overrides["data.path"] = args.data
    if getattr(args, "seed", None) is not None:
        overrides["seed"] = args.seed
    overrides.update(parse_overrides(extra))
    return resolve(args.config, overrides)


def cmd_train(args: argparse.Namespace, extra: list[str]) -> int:
    from recstack.distributed import launch, launched

    if (args.nproc > 1 or args.nnodes > 1) and not launched():
        # torch's own launcher (torchrun) starts the ranks, each running this command without these flags
        return launch(args.nproc, _without_launch_flags(args.argv), args.nnodes, args.node_rank,
                      args.rdzv_endpoint)
    from recstack.distributed import leave
    from recstack.train.run import train

    config = _config_from(args, extra)
    try:
        train(config, checkpoint_dir=args.checkpoint_dir, resume=args.resume, report_path=args.report,
              baselines=args.baseline)
    finally:
        leave()  # a rank exiting with its process group alive can abort in gloo's threads
    return 0


def _without_launch_flags(argv: list[str]) -> list[str]:
    """The command line minus --nproc/--nnodes/--node-rank/--rdzv-endpoint (with their values)."""
    flags = ("--nproc", "--nnodes", "--node-rank", "--rdzv-endpoint")
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        name = token.split("=", 1)[0]
        if name in flags:
            skip = "=" not in token
            continue
        out.append(token)
    return out


def cmd_evaluate(args: argparse.Namespace, extra: list[str]) -> int:
    from recstack.serve.scoring import evaluate_command

    _no_extra(extra)
    evaluate_command(args.checkpoint, data=args.data, raw_input=args.input, split=args.split, report_path=args.report,
                     batch_size=args.batch_size)
    return 0


def cmd_predict(args: argparse.Namespace, extra: list[str]) -> int:
    from recstack.serve.scoring import predict_command

    _no_extra(extra)
    predict_command(args.checkpoint, args.input, args.output, report_path=args.report, batch_size=args.batch_size)
    return 0


def cmd_prepare_criteo(args: argparse.Namespace, extra: list[str]) -> int:
    from recstack.data.prepare import check_inputs, check_out, prepare_criteo
    from recstack.data.report import finish_data_command, report_on_data_error

    _no_extra(extra)
    kwargs: dict[str, Any] = {}
    if args.vocab_min_count is not None:
        kwargs["vocab_min_count"] = args.vocab_min_count
    with report_on_data_error("data prepare criteo", args.report):
        check_inputs(args.input)
        check_out(args.out, args.overwrite)
        report = prepare_criteo(
            args.input,
            args.out,
            hash_buckets=args.hash_buckets,
            split_tail=args.split_tail,
            strict=args.strict,
            workers=args.workers,
            show_progress=not args.quiet,
            **kwargs,
        )
    finish_data_command("data prepare criteo", report, args.report)
    return 0


def cmd_prepare_table(args: argparse.Namespace, extra: list[str]) -> int:
    from recstack.data.prepare import check_inputs, check_out
    from recstack.data.report import finish_data_command, report_on_data_error
    from recstack.data.table import prepare_table

    _no_extra(extra)
    with report_on_data_error("data prepare table", args.report):
        check_inputs(args.input)
        check_out(args.out, args.overwrite)
        report = prepare_table(
            args.input, args.schema, args.out, strict=args.strict, split_tail=args.split_tail,
            split_random=args.split_random, split_key=args.split_key, seed=args.seed, show_progress=not args.quiet,
        )
    finish_data_command("data prepare table", report, args.report)
    return 0


def cmd_synth(args: argparse.Namespace, extra: list[str]) -> int:
    from recstack.data.prepare import check_out
    from recstack.data.report import synth_command

    _no_extra(extra)
    check_out(args.out, args.overwrite)
    synth_command(args.preset, args.rows, args.out, seed=args.seed, scale=args.scale,
                  test_fraction=args.test_fraction, report_path=args.report, quiet=args.quiet)
    return 0


def cmd_hotcold(args: argparse.Namespace, extra: list[str]) -> int:
    from recstack.data.hotcold import hotcold_command

    _no_extra(extra)
    hotcold_command(args.data, args.budget, sample=args.sample, dim=args.dim,
                    state_bytes_per_row=args.state_bytes_per_row, split=args.split, seed=args.seed,
                    report_path=args.report, quiet=args.quiet)
    return 0


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        values = ()
    if not values or not all(0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected fractions in [0, 1] separated by commas, got {text!r}")
    return values


def cmd_analyze_skew(args: argparse.Namespace, extra: list[str]) -> int:
    from recstack.analyze.skew import skew_command

    _no_extra(extra)
    skew_command(args.data, sample=args.sample, budgets=args.budgets, hot_inputs=args.hot_inputs, dim=args.dim,
                 state_bytes_per_row=args.state_bytes_per_row, split=args.split, seed=args.seed,
                 report_path=args.report, plot_path=args.plot, quiet=args.quiet)
    return 0


def cmd_bench_train(args: argparse.Namespace, extra: list[str]) -> int:
    from recstack.bench.train_bench import bench_train

    overrides = {"model.preset": args.preset}
    from recstack.config import parse_overrides

    overrides.update(parse_overrides(extra))
    bench_train(overrides, rows=args.rows, steps=args.steps, report_path=args.report, config_file=args.config)
    return 0


def _no_extra(extra: list[str]) -> None:
    if extra:
        raise ConfigError(f"unexpected arguments: {' '.join(extra)}")


# Sub-commands whose arguments live beside their code: (parent verbs, name, module, help). The module
# defines `add_arguments(parser)` and `run(args, extra) -> int`, and imports its heavy parts in `run`.
PLUGGED: list[tuple[tuple[str, ...], str, str, str]] = [
    (("data", "prepare"), "movielens", "recstack.data.movielens", "MovieLens ratings (ml-100k, ml-1m): leave-one-out with sampled negatives"),
    (("data", "prepare"), "implicit", "recstack.data.implicit", "implicit-feedback lists (user item item ...: train.txt, test.txt): sampled and full ranking"),
    (("data", "prepare"), "amazon", "recstack.data.amazon", "Amazon Electronics in the DIN format: behaviour histories, categories"),
    (("data", "prepare"), "taobao", "recstack.data.taobao", "Taobao UserBehavior: click sequences with sampled negatives"),
    ((), "models", "recstack.analyze.zoo_report", "the model zoo: parameters, bytes, FLOPs per sample, class"),
    ((), "profile", "recstack.analyze.profile", "a few training steps under torch.profiler, time by operator family"),
    ((), "plan", "recstack.train.plan_command", "a sharding plan for N ranks: tables' shardings, bytes per rank, predicted all-to-all"),
    (("bench",), "dist", "recstack.bench.dist_bench", "sharded training on N ranks x 1 thread against 1 process x 2 threads"),
    ((), "serve", "recstack.serve.server", "serve a model over HTTP: JSON ranking API, Prometheus metrics, load shedding"),
    ((), "loadgen", "recstack.serve.loadgen_cli", "open-loop load test of an engine or server: latency percentiles against load"),
    ((), "sched", "recstack.serve.sched", "DeepRecSched: tune query splitting and offload for latency-bounded throughput"),
    ((), "export", "recstack.serve.export", "a serving artifact from a checkpoint, its tables optionally quantized (fp16, int8, int4)"),
]


def _plug(groups: dict[tuple[str, ...], Any]) -> None:
    import importlib

    for parent, name, module_name, help_text in PLUGGED:
        module = importlib.import_module(module_name)
        sub = groups[parent].add_parser(name, help=help_text)
        module.add_arguments(sub)
        sub.set_defaults(func=module.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recstack",
        description="Train, serve and characterize deep learning recommendation models.",
    )
    from recstack import __version__

    parser.add_argument("--version", action="version", version=f"recstack {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND")

    train = verbs.add_parser(
        "train",
        help="train a model (with no data: on synthetic Criteo-format data)",
        description="Train, evaluate and write a report. Any config key can be set as --section.key VALUE "
        "(e.g. --train.batch_size 4096 --model.scale 0.01).",
    )
    train.add_argument("--config", metavar="FILE", help="a YAML config (see configs/)")
    train.add_argument("--data", metavar="DIR", help="a prepared dataset (recstack data prepare / synth)")
    train.add_argument("--checkpoint-dir", metavar="DIR", help="write checkpoints here")
    train.add_argument("--nproc", type=positive_int, default=1,
                       help="ranks on this machine (torch's launcher starts them; tables sharded, see README)")
    train.add_argument("--nnodes", type=positive_int, default=1,
                       help="launchers (\"nodes\") in the job, each started on this machine with its --node-rank")
    train.add_argument("--node-rank", type=nonnegative_int, default=0, help="this launcher's index in the job")
    train.add_argument("--rdzv-endpoint", metavar="127.0.0.1:PORT",
                       help="where the launchers meet (default 127.0.0.1 and a free port); across machines use torchrun")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --checkpoint-dir")
    train.add_argument("--seed", type=seed, help="the one seed for data order, initialization and synthetic data")
    train.add_argument("--baseline", action="append", metavar="SPEC",
                       help="also train and report a baseline: KEY=VALUE overrides (e.g. model.sequence_pooling=sum) "
                       "or popularity[:FEATURE]; repeatable")
    _add_common(train)
    train.set_defaults(func=cmd_train)

    evaluate = verbs.add_parser("evaluate", help="metrics of a checkpoint on a dataset split or a raw labelled file")
    evaluate.add_argument("--checkpoint", required=True, metavar="C", help="a checkpoint file, or a directory (its latest)")
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", metavar="DIR", help="a prepared dataset")
    source.add_argument("--input", metavar="RAW_FILE", help="a raw labelled file (Criteo TSV, or a table of the model's `data prepare table` schema), "
                        "mapped by the checkpoint's vocabularies")
    evaluate.add_argument("--split", default="test",
                          help="split of --data to evaluate (default: test; a dataset prepared without a split has only train)")
    evaluate.add_argument("--batch-size", type=positive_int, default=16384)
    _add_common(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    predict = verbs.add_parser("predict", help="score a raw file: one probability per input line")
    predict.add_argument("--checkpoint", required=True, metavar="C")
    predict.add_argument("--input", required=True, metavar="RAW_FILE", help="Criteo TSV, or a table of the model's `data prepare table` schema, with or without the label column")
    predict.add_argument("--output", required=True, metavar="FILE")
    predict.add_argument("--batch-size", type=positive_int, default=16384)
    _add_common(predict)
    predict.set_defaults(func=cmd_predict)

    data = verbs.add_parser("data", help="prepare or synthesize datasets").add_subparsers(dest="data_verb", metavar="ACTION")
    prepare = data.add_parser("prepare", help="convert raw logs into the binary format").add_subparsers(dest="source", metavar="SOURCE")
    criteo = prepare.add_parser("criteo", help="Criteo Kaggle or Terabyte TSV (plain or .gz)")
    criteo.add_argument("--input", nargs="+", required=True, metavar="FILE")
    criteo.add_argument("--out", required=True, metavar="DIR")
    ids = criteo.add_mutually_exclusive_group()
    ids.add_argument("--vocab-min-count", type=int, metavar="N", help="values seen fewer times share the OOV id")
    ids.add_argument("--hash-buckets", type=int, metavar="N", help="hash ids into N rows (no vocabulary pass)")
    criteo.add_argument("--split-tail", type=float, default=0.0, metavar="F", help="keep the last fraction F as the test split")
    criteo.add_argument("--strict", action="store_true", help="stop at the first bad row")
    criteo.add_argument("--workers", type=positive_int, default=2, help="parser processes (default 2)")
    criteo.add_argument("--overwrite", action="store_true", help="replace what --out already holds")
    _add_common(criteo)
    criteo.set_defaults(func=cmd_prepare_criteo)

    table = prepare.add_parser("table", help="any CTR table (CSV, TSV, Parquet) described by a schema YAML")
    table.add_argument("--input", required=True, metavar="FILE")
    table.add_argument("--schema", required=True, metavar="SCHEMA.yaml")
    table.add_argument("--out", required=True, metavar="DIR")
    table.add_argument("--split-tail", type=float, default=0.0, metavar="F",
                       help="keep the last fraction F of the rows as the test split (a file in time order)")
    table.add_argument("--split-random", type=float, default=0.0, metavar="F",
                       help="send each row (or each --split-key value) to the test split with probability F")
    table.add_argument("--split-key", metavar="COLUMN",
                       help="with --split-random: split by this column's values (all rows of a user or a day together)")
    table.add_argument("--seed", type=seed, default=0, help="seed of --split-random (default 0)")
    table.add_argument("--strict", action="store_true")
    table.add_argument("--overwrite", action="store_true", help="replace what --out already holds")
    _add_common(table)
    table.set_defaults(func=cmd_prepare_table)

    synth = data.add_parser("synth", help="synthetic data with per-table skew and pooling")
    synth.add_argument("--preset", default="criteo-kaggle")
    synth.add_argument("--rows", type=positive_int, required=True)
    synth.add_argument("--out", required=True, metavar="DIR")
    synth.add_argument("--seed", type=seed, default=0)
    synth.add_argument("--scale", type=float, default=1.0, help="multiply every table's rows")
    synth.add_argument("--test-fraction", type=float, default=0.1)
    synth.add_argument("--overwrite", action="store_true", help="replace what --out already holds")
    _add_common(synth)
    synth.set_defaults(func=cmd_synth)

    hotcold = data.add_parser(
        "hotcold", help="choose the FAE hot rows for a memory budget and store the hot/cold input partition"
    )
    hotcold.add_argument("--data", required=True, metavar="DIR", help="a prepared dataset (hotcold/ is written into it)")
    hotcold.add_argument("--budget", required=True, metavar="BYTES", help="memory for hot rows, e.g. 256MiB, 1GB, 4096")
    hotcold.add_argument("--sample", default="0.05", metavar="F", help="fraction of inputs profiled (0.05 or 5%%)")
    hotcold.add_argument("--dim", type=positive_int, default=16, help="embedding dimension (fp32)")
    hotcold.add_argument("--state-bytes-per-row", type=nonnegative_int, default=4, metavar="B", help="optimizer state per row")
    hotcold.add_argument("--split", default="train")
    hotcold.add_argument("--seed", type=seed, default=0)
    _add_common(hotcold)
    hotcold.set_defaults(func=cmd_hotcold)

    analyze = verbs.add_parser("analyze", help="characterize data and runs").add_subparsers(dest="analyze_verb", metavar="WHAT")
    skew = analyze.add_parser("skew", help="embedding access skew per table, and the hot inputs of memory budgets (FAE)")
    skew.add_argument("--data", required=True, metavar="DIR", help="a prepared dataset")
    skew.add_argument("--sample", default="5%", metavar="F", help="fraction of inputs for the sampled hot sets (5%% or 0.05)")
    skew.add_argument("--budgets", default="1MiB,16MiB,256MiB", metavar="LIST", help="hot-row memory budgets, comma-separated")
    skew.add_argument("--hot-inputs", type=_fractions, default=(), metavar="LIST",
                      help="also the budgets that make these fractions of the inputs all-hot, e.g. 0.5,0.9 (two more passes)")
    skew.add_argument("--dim", type=positive_int, default=16, help="embedding dimension (fp32)")
    skew.add_argument("--state-bytes-per-row", type=nonnegative_int, default=4, metavar="B", help="optimizer state per row")
    skew.add_argument("--split", default="train")
    skew.add_argument("--seed", type=seed, default=0)
    skew.add_argument("--plot", metavar="FILE.png", help="the curves' PNG (default: beside --report)")
    _add_common(skew)
    skew.set_defaults(func=cmd_analyze_skew)

    bench = verbs.add_parser("bench", help="benchmarks against this machine's ceilings").add_subparsers(dest="bench_verb", metavar="WHAT")
    bench_train = bench.add_parser(
        "train", help="training samples/s end to end and with loading excluded, next to the machine's ceiling"
    )
    bench_train.add_argument("--preset", default="criteo-kaggle")
    bench_train.add_argument("--config", metavar="FILE")
    bench_train.add_argument("--rows", type=positive_int, default=1 << 20, help="synthetic rows to read (default 1Mi)")
    bench_train.add_argument("--steps", type=positive_int, default=200, help="measured steps per variant")
    _add_common(bench_train)
    bench_train.set_defaults(func=cmd_bench_train)
    _plug({(): verbs, ("data",): data, ("data", "prepare"): prepare, ("analyze",): analyze, ("bench",): bench})
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _run(argv)
    except KeyboardInterrupt:  # anywhere, building the parser (its imports) included
        print("interrupted", file=sys.stderr)
        return 130


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    if not hasattr(args, "func"):
        # plain `recstack` (or `recstack data`, ...) prints the help of what was given, and fails
        try:
            parser.parse_args([*(argv if argv is not None else sys.argv[1:]), "--help"])
        except SystemExit:
            pass
        return 2
    from recstack.progress import set_quiet

    set_quiet(bool(getattr(args, "quiet", False)))
    try:
        return args.func(args, extra)
    except RecstackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # a path that cannot be read or written: the environment, not a bug
        where = f" {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}:{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
