"""Inference from a checkpoint alone: `recstack evaluate` and `recstack predict`.

A checkpoint carries its config, the dataset schema (with the table schema of a `data prepare table`
dataset) and the categorical vocabularies, so raw Criteo lines, or the records of any file of the
model's table schema, are mapped to ids exactly as at training time (unseen values go to the OOV id)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recstack import checkpoint
from recstack.data.batch import Batch, JaggedFeatures
from recstack.data.store import Dataset
from recstack.embeddings.base import place
from recstack.errors import CheckpointError, DataError
from recstack.progress import console, is_quiet
from recstack.report import new_report, write_report
from recstack.scoring.evaluate import evaluate_rows
from recstack.scoring.metrics import MetricAccumulator

# schema.info keys that decide what an id means (hashing, thresholds, synthetic generator)
_ENCODING_KEYS = ("mode", "hash_buckets", "vocab_min_count", "generator", "preset", "seed", "scale")


class ScoringModel:
    """A model rebuilt from a checkpoint, in inference mode, with what it needs to read raw input."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu"):
        payload = checkpoint.load(path, map_location=device, require=checkpoint.SCORING)
        self.path = payload["path"]
        self.config, self.schema, self.model = checkpoint.rebuild_model(payload)
        self.vocab = checkpoint.vocab_from_tensors(payload.get("vocab", {}), self.path)
        self._vocab_index: dict[str, Any] | None = None
        self.device = torch.device(device)
        checkpoint.load_model(self.model, payload)
        place(self.model, self.device).eval()
        self.step = payload["trainer"].get("step")

    @torch.no_grad()
    def predict(self, batch: Batch) -> torch.Tensor:
        return torch.sigmoid(self.model(batch.to(self.device))).float().cpu()

    def check_dataset(self, dataset: Dataset) -> None:
        """The dataset must encode features exactly as the model's training data did: the same
        features, table sizes and vocabularies (or hash buckets, or synthetic generator)."""
        mine, theirs = self.schema, dataset.schema
        problem = None
        if mine.dense_names != theirs.dense_names or mine.sparse_names != theirs.sparse_names:
            problem = "other features"
        elif [s.num_embeddings for s in mine.sparse] != [s.num_embeddings for s in theirs.sparse]:
            problem = "other table sizes"
        elif any(mine.info.get(k) != theirs.info.get(k) for k in _ENCODING_KEYS):
            problem = "another id encoding"
        elif set(self.vocab) != set(theirs.vocab) or any(
            not np.array_equal(self.vocab[k], dataset.vocab(k)) for k in self.vocab
        ):
            problem = "other vocabularies"
        if problem:
            raise DataError(
                f"dataset {dataset.path} was prepared with {problem} than the model's training data; "
                "its ids would mean other values: score raw files with --input instead"
            )

    def _folds(self, name: str) -> bool:
        return any(t.fold for t in self.model.embeddings.tables if name in t.feature_names)

    # --- raw input: Criteo TSV, or a table of the model's `data prepare table` schema -------------

    def table_spec(self):
        """The table schema the model's data was prepared with (`data prepare table`), or None."""
        from recstack.data.table import load_table_spec

        table = self.schema.info.get("table_schema")
        if not isinstance(table, dict):
            return None
        keys = ("format", "header", "delimiter", "labels", "dense", "categorical", "dense_transform")
        mapping = {k: table[k] for k in keys if table.get(k) is not None}
        if self.schema.info.get("hash_buckets"):
            mapping["hash_buckets"] = self.schema.info["hash_buckets"]
        return load_table_spec(mapping)

    def raw_batches(
        self, path: str | Path, has_label: bool | None, batch_size: int
    ) -> Iterator[tuple[Any, list[Batch]]]:
        """(parsed chunk, batches of at most batch_size of its kept rows) for each chunk of a raw
        file, ids mapped through the checkpoint's own vocabulary: Criteo TSV, or for a model trained
        on a `data prepare table` dataset any file of that table schema."""
        from recstack.data.criteo import CAT_NAMES, DENSE_NAMES, encode_chunk, iter_criteo_chunks

        spec = self.table_spec()
        if spec is not None:
            yield from self._table_batches(spec, path, has_label, batch_size)
            return
        if self.schema.dense_names != DENSE_NAMES or self.schema.sparse_names != CAT_NAMES:
            fmt = (self.schema.info.get("source") or {}).get("format") or self.schema.info.get("generator") or "unknown"
            raise DataError(
                f"raw --input reads Criteo TSV or a table of the model's `data prepare table` schema, but this model "
                f"was trained on data of another kind ({fmt}); evaluate it on its dataset with --data"
            )
        hash_buckets = self.schema.info.get("hash_buckets")
        if not hash_buckets and set(self.vocab) != set(CAT_NAMES):
            raise CheckpointError(f"{self.path} carries no vocabulary for raw Criteo input")
        vocabs = self._vocabs(hash_buckets)
        # predicting (has_label None) reads a label column if there is one but never judges it
        for chunk in iter_criteo_chunks([path], chunk_bytes=4 << 20, has_label=has_label,
                                        check_label=has_label is not None):
            batches = []
            if chunk.num_kept:
                ids = encode_chunk(chunk, vocabs=vocabs, hash_buckets=hash_buckets or None)
                labels = chunk.labels if chunk.labels is not None else np.zeros(chunk.num_kept, np.float32)
                batches = _one_hot_batches(ids, CAT_NAMES, chunk.dense, labels, chunk.num_kept, batch_size)
            yield chunk, batches


    def _vocabs(self, hash_buckets: Any) -> dict[str, Any] | None:
        """The vocabularies' lookup indexes, built once (None when the model hashes)."""
        if hash_buckets:
            return None
        if self._vocab_index is None:
            from recstack.data.vocab import VocabIndex

            self._vocab_index = {k: VocabIndex(v) for k, v in self.vocab.items()}
        return self._vocab_index

    def _table_batches(self, spec, path: str | Path, has_label: bool | None,
                       batch_size: int) -> Iterator[tuple[Any, list[Batch]]]:
        from dataclasses import replace

        from recstack.data.table import encode_parsed, iter_table_chunks

        hash_buckets = self.schema.info.get("hash_buckets") or None
        if not hash_buckets and set(self.vocab) != set(spec.feature_names):
            raise CheckpointError(f"{self.path} carries no vocabulary for its table's features")
        vocabs = self._vocabs(hash_buckets)
        with_labels = has_label is True
        if not with_labels and spec.header:
            spec = replace(spec, labels=[])  # predicting: a label column may be there or not, and is not read
        tasks = len(self.schema.label_names)
        records = 0
        for parsed in iter_table_chunks(path, spec, with_labels=with_labels):
            chunk = _TableChunk(parsed, records)
            records += chunk.num_lines
            batches = []
            if chunk.num_kept:
                ids = encode_parsed(parsed, spec, vocabs=vocabs, hash_buckets=hash_buckets)
                labels = (parsed.labels if parsed.labels is not None
                          else np.zeros((chunk.num_kept, tasks), np.float32))
                labels = labels[:, 0] if tasks == 1 else labels
                batches = _one_hot_batches(ids, self.schema.sparse_names, parsed.dense, labels, chunk.num_kept,
                                           batch_size)
            yield chunk, batches


def _one_hot_batches(ids: dict[str, np.ndarray], names: list[str], dense: np.ndarray, labels: np.ndarray, rows: int,
                     batch_size: int) -> list[Batch]:
    """Batches of `rows` encoded records, one id per feature and record."""
    batches = []
    for a in range(0, rows, batch_size):
        b = min(a + batch_size, rows)
        sparse = JaggedFeatures(
            keys=names,
            values=torch.from_numpy(np.concatenate([ids[k][a:b] for k in names]).astype(np.int64)),
            lengths=torch.ones((b - a) * len(names), dtype=torch.int32),
            batch_size=b - a,
        )
        dense_part = torch.from_numpy(np.ascontiguousarray(dense[a:b]))
        batches.append(Batch(dense_part, sparse, torch.from_numpy(np.ascontiguousarray(labels[a:b]))))
    return batches


class _TableChunk:
    """A parsed table batch seen as the Criteo path's chunk: rows numbered by record (1-based, the
    header excluded, a quoted field over several lines one record), so that output line i answers
    record i; reject examples name the file's own line numbers."""

    def __init__(self, parsed: Any, before: int):
        from recstack.data.table import TABLE_REJECT_REASONS

        self.file, self.notes, self.labels = parsed.file, parsed.notes, parsed.labels
        every = np.sort(np.concatenate([parsed.lines, parsed.reject_lines]))
        self.lines = before + 1 + np.searchsorted(every, parsed.lines)
        self.reject_lines = before + 1 + np.searchsorted(every, parsed.reject_lines)
        self.file_reject_lines = parsed.reject_lines
        self._reasons = [TABLE_REJECT_REASONS[c] for c in parsed.reject_reasons.tolist()]
        self.num_kept, self.num_rejected = int(parsed.lines.size), int(parsed.reject_lines.size)
        self.num_lines = self.num_kept + self.num_rejected

    def reject_names(self) -> list[str]:
        return self._reasons


def _reject_summary(chunks_rejects: dict[str, int], examples: dict[str, list[dict[str, Any]]], chunk,
                    notes: list[str]) -> None:
    for note in chunk.notes:  # e.g. a gzip stream that broke: the lines after it were never read
        notes.append(note)
        print(f"warning: {note}", file=sys.stderr)
    for line, name in zip(getattr(chunk, "file_reject_lines", chunk.reject_lines).tolist(), chunk.reject_names()):
        chunks_rejects[name] = chunks_rejects.get(name, 0) + 1
        if len(examples.setdefault(name, [])) < 5:
            examples[name].append({"file": chunk.file, "line": line, "reason": name})


def _nothing_read(rows_read: int, notes: list[str]) -> str:
    what = f"{rows_read:,} rows, all rejected" if rows_read else "the input holds no line"
    return f"{what}: see the warning above" if notes else what  # the warning has already said why


def evaluate_command(
    checkpoint_path: str | Path,
    data: str | None,
    raw_input: str | None,
    split: str,
    report_path: str | None,
    batch_size: int = 16384,
) -> dict[str, Any]:
    scorer = ScoringModel(checkpoint_path)
    report = new_report("evaluate", scorer.config.to_dict())
    report["checkpoint"] = scorer.path
    start = time.perf_counter()
    if data:
        dataset = Dataset(data)
        scorer.check_dataset(dataset)
        rows = dataset.split(split)
        metrics = evaluate_rows(scorer.model, dataset, rows, batch_size, scorer.device)
        report.update({"data": str(dataset.path), "split": split, "rows": list(rows)})
    else:
        tasks = list(scorer.schema.label_names)
        accumulator = MetricAccumulator(tasks if len(tasks) > 1 else None)
        rejects: dict[str, int] = {}
        examples: dict[str, list[dict[str, Any]]] = {}
        notes: list[str] = []
        rows_read = 0
        for chunk, batches in scorer.raw_batches(raw_input, has_label=True, batch_size=batch_size):
            rows_read += chunk.num_lines
            _reject_summary(rejects, examples, chunk, notes)
            for batch in batches:
                accumulator.update(batch.labels.numpy(), scorer.predict(batch).numpy())
        if accumulator.count == 0:
            raise DataError(f"{raw_input}: no labelled row could be read ({_nothing_read(rows_read, notes)})")
        metrics = accumulator.compute()
        report.update({"input": raw_input, "rows_read": rows_read, "rows_kept": rows_read - sum(rejects.values()),
                       "rows_rejected": sum(rejects.values()), "rejects_by_reason": rejects, "reject_examples": examples,
                       "notes": notes})
    seconds = time.perf_counter() - start
    report["metrics"] = metrics
    report["throughput"] = {"samples_per_s": metrics["count"] / seconds if seconds else None, "seconds": seconds}
    write_report(report_path, report)
    if not is_quiet():
        console.print(
            f"AUC {metrics['auc']:.4f}  log loss {metrics['logloss']:.4f}  NE {metrics['ne']:.4f}  "
            f"accuracy {metrics['accuracy']:.4f}  on {metrics['count']:,} rows"
        )
        if report.get("rows_rejected"):
            console.print(f"{report['rows_rejected']:,} rows rejected: {report['rejects_by_reason']}", style="yellow")
    return report


def predict_command(
    checkpoint_path: str | Path, raw_input: str, output: str, report_path: str | None = None, batch_size: int = 16384
) -> dict[str, Any]:
    """One probability per input line, in input order; a rejected line gets `nan` (and is counted),
    so line i of the output always answers line i of the input."""
    scorer = ScoringModel(checkpoint_path)
    if len(scorer.schema.label_names) > 1:
        raise DataError(f"{scorer.path} predicts {len(scorer.schema.label_names)} tasks; predict writes one "
                        "probability per line: use evaluate, or serve it (the API returns every task's score)")
    rejects: dict[str, int] = {}
    examples: dict[str, list[dict[str, Any]]] = {}
    notes: list[str] = []
    rows_read = written = 0
    start = time.perf_counter()
    out_path = Path(output)
    if out_path.is_dir():
        raise DataError(f"--output {out_path} is a directory; give a file name")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    try:
        with open(tmp, "w") as out:
            next_line = 1
            for chunk, batches in scorer.raw_batches(raw_input, has_label=None, batch_size=batch_size):
                rows_read += chunk.num_lines
                _reject_summary(rejects, examples, chunk, notes)
                if chunk.num_lines == 0:
                    continue
                first = min(int(chunk.lines.min()) if chunk.num_kept else 1 << 62,
                            int(chunk.reject_lines.min()) if chunk.num_rejected else 1 << 62)
                if first != next_line:
                    raise DataError(f"{raw_input}: lines {next_line}..{first - 1} were neither scored nor rejected")
                scores = np.full(chunk.num_lines, np.nan)
                if batches:
                    scores[chunk.lines - first] = torch.cat([scorer.predict(b) for b in batches]).numpy()
                out.write("\n".join("nan" if np.isnan(v) else f"{v:.6f}" for v in scores) + "\n")
                written += chunk.num_lines
                next_line = first + chunk.num_lines
        if rows_read == 0 and notes:  # damage before the first line: an empty output would pass for a result
            raise DataError(f"{raw_input}: no line could be read ({_nothing_read(rows_read, notes)})")
        tmp.replace(out_path)
    finally:
        tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    report = new_report("predict", scorer.config.to_dict())
    report.update({
        "checkpoint": scorer.path, "input": raw_input, "output": str(out_path), "rows_read": rows_read,
        "rows_scored": rows_read - sum(rejects.values()), "rows_rejected": sum(rejects.values()),
        "rejects_by_reason": rejects, "reject_examples": examples, "notes": notes,
        "throughput": {"samples_per_s": rows_read / seconds if seconds else None, "seconds": seconds},
    })
    write_report(report_path, report)
    if not is_quiet():
        console.print(f"scored {report['rows_scored']:,} of {rows_read:,} lines -> {out_path} ({seconds:.1f} s)")
        if report["rows_rejected"]:
            console.print(f"{report['rows_rejected']:,} lines rejected (written as nan): {rejects}", style="yellow")
    return report
