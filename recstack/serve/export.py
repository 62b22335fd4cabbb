"""`recstack export`: a serving artifact from a training checkpoint, its tables optionally quantized.

    recstack export --checkpoint C --out DIR [--quantize fp16|int8|int4] [--data DIR [--split test]]
                    [--report F] [--overwrite]

The artifact is a checkpoint file (`DIR/ckpt-<step>.pt`, recstack.checkpoint's format) that
`evaluate --checkpoint`, `predict`, `serve`, `loadgen` and `sched` load like any other: its config
names the tables' kind (`embeddings.kind` fp16, int8 or int4 for every collection; dense, float32,
without --quantize), and its model state holds every table's logical state, the rows as the exported
kind reads them back (dequantized), which that kind loads into the same codes. It keeps the config,
the dataset schema, the vocabularies and the trainer's position; it drops what only training reads:
the dense optimizer, the RNG state and the tables' sparse optimizer state (`train.sparse_optimizer`
becomes sgd, which keeps none). A training-only kind (FAE's tiers) exports as the kind that serves it.

Nothing is half-written: the artifact is written and loaded back (and, with --data, evaluated) in a
temporary directory beside DIR, and moved into DIR only when all of that succeeded. The report holds
`bytes_before` and `bytes_after` (embedding bytes of the tables as loaded from the checkpoint, and as
exported), `artifact` and `file_bytes`, and with --data `metrics` (of the exported model on the split:
`metrics.auc`), `source_metrics` (the checkpoint's) and `auc_loss`.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import time
from pathlib import Path
from typing import Any

from recstack.argtypes import positive_int
from recstack.errors import CheckpointError, ConfigError

QUANTIZE = {"fp16": "fp16", "int8": "int8", "int4": "int4"}
"""--quantize value -> the embeddings kind of the exported tables (none given: dense, float32)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Write a serving artifact (a checkpoint evaluate, predict and serve load) from a "
                          "training checkpoint, its tables float32 or quantized (fp16, row-wise int8 or int4).")
    parser.add_argument("--checkpoint", required=True, metavar="C", help="a checkpoint file, or a directory (its latest)")
    parser.add_argument("--out", required=True, metavar="DIR", help="write the artifact into this directory")
    parser.add_argument("--quantize", metavar="KIND", help="fp16, int8 or int4 (default: float32 tables)")
    parser.add_argument("--data", metavar="DIR", help="also evaluate the exported and the source model on this dataset")
    parser.add_argument("--split", default="test", help="split of --data to evaluate (default: test)")
    parser.add_argument("--batch-size", type=positive_int, default=16384)
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an --out that holds files (its checkpoints are replaced)")
    parser.add_argument("--report", metavar="FILE", help="write the JSON report here")
    parser.add_argument("--quiet", action="store_true", help="no summary line")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if extra:
        raise ConfigError(f"unexpected arguments: {' '.join(extra)}")
    export(args.checkpoint, args.out, quantize=args.quantize, data=args.data, split=args.split,
           report_path=args.report, batch_size=args.batch_size, overwrite=args.overwrite)
    return 0


def export(checkpoint_path: str | Path, out: str | Path, quantize: str | None = None, data: str | None = None,
           split: str = "test", report_path: str | None = None, batch_size: int = 16384,
           overwrite: bool = False) -> dict[str, Any]:
    from recstack import checkpoint
    from recstack.checkpoint.format import fsync_directory
    from recstack.progress import console, is_quiet
    from recstack.report import check_output_path, new_report, write_report

    if quantize is not None and quantize not in QUANTIZE:
        raise ConfigError(f"--quantize must be one of {', '.join(QUANTIZE)}, not {quantize!r}")
    check_output_path(report_path)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory for the artifact")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"--out {out} already holds files; give --overwrite to write there anyway (its "
                          "checkpoints are replaced), or another --out")
    if data is not None and not Path(data).is_dir():
        raise ConfigError(f"--data {data} is not a directory (give a prepared dataset)")

    payload = checkpoint.load(checkpoint_path, require=(*checkpoint.SCORING, "vocab"))
    config, schema, source = checkpoint.rebuild_model(payload)
    checkpoint.load_model(source, payload)
    source.eval()
    kind = QUANTIZE[quantize] if quantize else "dense"
    exported_config, model = _exported_model(config, schema, source, kind, payload["path"])
    bytes_before, bytes_after = _embedding_bytes(source), _embedding_bytes(model)

    step = payload["trainer"].get("step")
    name = checkpoint.checkpoint_name(step if isinstance(step, int) and step >= 0 else 0)
    artifact = {
        "config": exported_config.to_dict(), "schema": payload["schema"], "model": model.state_dict(),
        "trainer": payload["trainer"], "vocab": payload["vocab"],
        "export": {"source": payload["path"], "tables": kind, "bytes_before": bytes_before, "bytes_after": bytes_after,
                   "source_sparse_optimizer": config.train.sparse_optimizer},
    }
    report = new_report("export", exported_config.to_dict())
    report.update(checkpoint=payload["path"], quantize=quantize, tables=kind, bytes_before=bytes_before,
                  bytes_after=bytes_after, compression=bytes_before / bytes_after if bytes_after else None)
    # staged beside the nearest folder that exists, so a failure leaves no folder behind either
    base = next(p for p in out.absolute().parents if p.exists())
    staging = base / f".{out.name}.export-{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        written = checkpoint.save(staging / name, artifact)
        del artifact, model
        if data is not None:
            report.update(_evaluate(written, source, data, split, batch_size))
        else:
            _load_back(written)
        out.mkdir(parents=True, exist_ok=True)
        if overwrite:  # the checkpoints there (the newest would be what `--checkpoint DIR` loads)
            for old in [*checkpoint.list_checkpoints(out), out / checkpoint.BEST]:
                if old.is_dir():
                    shutil.rmtree(old)
                else:
                    old.unlink(missing_ok=True)
        final = out / name
        os.replace(written, final)
        fsync_directory(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report.update(artifact=str(final), file_bytes=final.stat().st_size)
    write_report(report_path, report)
    if not is_quiet():
        line = (f"exported {final}: tables {kind}, {bytes_before / 2**20:,.2f} MiB -> {bytes_after / 2**20:,.2f} MiB "
                f"of embeddings")
        if "metrics" in report:
            line += f"; AUC {report['metrics']['auc']:.5f} (checkpoint {report['source_metrics']['auc']:.5f})"
        console.print(line)
    return report


def _exported_model(config: Any, schema: Any, source: Any, kind: str, path: str) -> tuple[Any, Any]:
    """(config, model) of the artifact: every collection of `kind`, no sparse optimizer state,
    holding the source model's state."""
    from recstack.checkpoint.sharded import is_table_key
    from recstack.embeddings.base import embedding_collections
    from recstack.errors import RecstackError
    from recstack.models.zoo import build_model

    if kind == "int4":
        odd = sorted({f"{t.name} ({t.embedding_dim})" for c in embedding_collections(source) for t in c.tables
                      if t.embedding_dim % 2})
        if odd:
            raise ConfigError(f"--quantize int4 packs two codes per byte and needs even embedding dimensions; "
                              f"checkpoint {path} has tables of odd dimension: {', '.join(odd[:5])}"
                              f"{' ...' if len(odd) > 5 else ''} (use int8 or fp16)")
    exported = copy.deepcopy(config)
    exported.embeddings.kind = kind
    exported.embeddings.collections = []
    exported.train.sparse_optimizer = "sgd"  # a serving artifact keeps no sparse optimizer state
    try:
        model = build_model(exported, schema, inference=True)
    except (RecstackError, ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path}: its model cannot be built with {kind} tables: {exc}") from None
    state = source.state_dict()
    for key in [k for k in state if is_table_key(k) and k.endswith(".optimizer_state")]:
        state[key] = state[key].new_zeros(state[key].shape[0], 0)
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError) as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise CheckpointError(f"checkpoint {path}: its tables cannot be exported as {kind}: {first.strip()}") from None
    return exported, model.eval()


def _embedding_bytes(model: Any) -> int:
    from recstack.embeddings.base import embedding_collections

    return sum(c.embedding_bytes() for c in embedding_collections(model))


def _load_back(path: Path) -> Any:
    """The artifact as evaluate, predict and serve load it (a failure is export's, not theirs)."""
    from recstack.errors import RecstackError
    from recstack.serve.scoring import ScoringModel

    try:
        return ScoringModel(path)
    except RecstackError as exc:
        raise CheckpointError(f"the exported artifact does not load back ({exc}); nothing was written") from None


def _evaluate(path: Path, source: Any, data: str, split: str, batch_size: int) -> dict[str, Any]:
    """Metrics of the artifact (loaded back as evaluate loads it) and of the source model on `split`."""
    from recstack.data.store import Dataset
    from recstack.errors import DataError
    from recstack.scoring.evaluate import evaluate_rows

    scorer = _load_back(path)
    dataset = Dataset(data)
    scorer.check_dataset(dataset)
    if split not in dataset.schema.splits:
        raise DataError(f"dataset {dataset.path} has no split {split!r} (it has {', '.join(dataset.schema.splits)})")
    rows = dataset.split(split)
    start = time.perf_counter()
    metrics = evaluate_rows(scorer.model, dataset, rows, batch_size, scorer.device)
    seconds = time.perf_counter() - start
    source_metrics = evaluate_rows(source, dataset, rows, batch_size, scorer.device)
    return {"data": str(dataset.path), "split": split, "rows": list(rows), "metrics": metrics,
            "source_metrics": source_metrics, "auc_loss": source_metrics["auc"] - metrics["auc"],
            "throughput": {"samples_per_s": metrics["count"] / seconds if seconds else None, "seconds": seconds}}
