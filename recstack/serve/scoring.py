"""Inference from a checkpoint alone: `recstack evaluate` and `recstack predict`.

A checkpoint carries its config, the dataset schema and the categorical vocabularies, so raw
Criteo lines are mapped to ids exactly as at training time (unseen values go to the OOV id)."""

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

    # --- raw Criteo input ---------------------------------------------------------------------

    def raw_batches(
        self, path: str | Path, has_label: bool | None, batch_size: int
    ) -> Iterator[tuple[Any, list[Batch]]]:
        """(parsed chunk, batches of at most batch_size of its kept rows) for each chunk of a raw
        Criteo file, ids mapped through the checkpoint's own vocabulary."""
        from recstack.data.criteo import CAT_NAMES, DENSE_NAMES, encode_chunk, iter_criteo_chunks

        if self.schema.dense_names != DENSE_NAMES or self.schema.sparse_names != CAT_NAMES:
            raise DataError(
                "raw --input is read as Criteo TSV, but this model was trained on other features; "
                "prepare the file with `recstack data prepare table` and use --data"
            )
        hash_buckets = self.schema.info.get("hash_buckets")
        if not hash_buckets and set(self.vocab) != set(CAT_NAMES):
            raise CheckpointError(f"{self.path} carries no vocabulary for raw Criteo input")
        if not hash_buckets and self._vocab_index is None:
            from recstack.data.vocab import VocabIndex

            self._vocab_index = {k: VocabIndex(v) for k, v in self.vocab.items()}
        # predicting (has_label None) reads a label column if there is one but never judges it
        for chunk in iter_criteo_chunks([path], chunk_bytes=4 << 20, has_label=has_label,
                                        check_label=has_label is not None):
            batches = []
            if chunk.num_kept:
                ids = encode_chunk(chunk, vocabs=None if hash_buckets else self._vocab_index,
                                   hash_buckets=hash_buckets or None)
                labels = chunk.labels if chunk.labels is not None else np.zeros(chunk.num_kept, np.float32)
                for a in range(0, chunk.num_kept, batch_size):
                    b = min(a + batch_size, chunk.num_kept)
                    sparse = JaggedFeatures(
                        keys=CAT_NAMES,
                        values=torch.from_numpy(np.concatenate([ids[k][a:b] for k in CAT_NAMES]).astype(np.int64)),
                        lengths=torch.ones((b - a) * len(CAT_NAMES), dtype=torch.int32),
                        batch_size=b - a,
                    )
                    dense = torch.from_numpy(np.ascontiguousarray(chunk.dense[a:b]))
                    batches.append(Batch(dense, sparse, torch.from_numpy(np.ascontiguousarray(labels[a:b]))))
            yield chunk, batches


def _reject_summary(chunks_rejects: dict[str, int], examples: dict[str, list[dict[str, Any]]], chunk,
                    notes: list[str]) -> None:
    for note in chunk.notes:  # e.g. a gzip stream that broke: the lines after it were never read
        notes.append(note)
        print(f"warning: {note}", file=sys.stderr)
    for line, name in zip(chunk.reject_lines.tolist(), chunk.reject_names()):
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
        accumulator = MetricAccumulator()
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
