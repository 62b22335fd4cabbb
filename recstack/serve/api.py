"""The HTTP API's request and response bodies, and the encoder from a JSON query to a Batch.

A query names features by the model's schema: a `shared` part (the user and context, one value
per feature, the same for every candidate) and `candidates` (one column per feature, N values:
the N items to rank). Every schema feature appears in exactly one of the two. Values by kind:

- dense: for data prepared from raw files (Criteo TSV, `data prepare table`), the RAW value, as in
  the file that `predict --input` reads: a number (or its text), transformed here exactly as training's
  preparation did (the schema's dense transform, e.g. log(1 + max(x, 0))); null or "" is a missing
  value, which training read as 0 before the transform. For data without a raw form (synthetic), the
  model's input value itself, a finite number;
- id: an integer id in [0, num_embeddings) (data without a vocabulary: synthetic, pre-encoded);
- raw: a raw categorical value as a string, mapped through the checkpoint's vocabulary (unseen ->
  the OOV id 0, "" or null -> the missing id 1) or hashed as at training time; Criteo values are the
  hex keys of the TSV, other tables' values their text (an integer reads as its decimal text).

A sparse value is one id (or raw value) or a list of them (a bag); a feature of fixed bag length
L takes exactly L per candidate, a variable-length one (a behaviour sequence, oldest first) any
number. Every check fails with a RequestError that names the feature and what was wrong (HTTP 422).
"""

from __future__ import annotations

import re
from itertools import chain
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, StrictInt, WithJsonSchema

from recstack.data.batch import Batch, JaggedFeatures
from recstack.data.store import Schema, raw_key_kind
from recstack.errors import RecstackError

_SCALAR = {"anyOf": [{"type": "number"}, {"type": "integer"}, {"type": "string"}]}
_VALUE = {"anyOf": [_SCALAR, {"type": "array", "items": _SCALAR}]}
FeatureValue = Annotated[Any, WithJsonSchema(_VALUE)]
"""A number (dense), an id or raw value, or a list of ids or raw values (a bag)."""
FeatureColumn = Annotated[list[Any], WithJsonSchema({"type": "array", "items": _VALUE, "minItems": 1})]


class RankRequest(BaseModel):
    """One query: features shared by all candidates, and one column per candidate feature."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"shared": {"user_profile": [3, 17, 5], "hist_item": [40, 41, 7]},
                      "candidates": {"item": [12, 99, 5], "context": [[1, 2, 3], [4, 5, 6], [7, 8, 9]]}}]})

    shared: dict[str, FeatureValue] = Field(default_factory=dict, description="feature -> one value for all candidates")
    candidates: dict[str, FeatureColumn] = Field(description="feature -> N values, one per candidate, in order")


class RankBatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    queries: list[RankRequest] = Field(description="queries answered together (admitted or shed together)")


class SyntheticRequest(BaseModel):
    """A query of `size` candidates drawn by the server (load tests without client-side features)."""

    model_config = ConfigDict(extra="forbid")

    size: StrictInt = Field(description="candidates to draw and rank (1 .. the server's max candidates)")
    seed: StrictInt | None = Field(
        default=None, description="seed of a fresh draw (default: the server's draws of this size, reused in rotation)")


Scores = list[float] | list[list[float]]


class RankResponse(BaseModel):
    scores: Scores = Field(description="P(click) per candidate, in request order ([N], or [N, tasks])")


class RankBatchResponse(BaseModel):
    results: list[RankResponse]


class ErrorResponse(BaseModel):
    detail: str


class RequestError(RecstackError):
    """A request the API cannot take (HTTP 422)."""


_HEX = re.compile(r"[0-9a-fA-F]{1,16}")
_INTEGER = re.compile(r"[0-9]{1,18}")


def _wrong_types(values: list[Any], *allowed: type) -> str:
    """The JSON type names among `values` that are not `allowed`."""
    json_names = {bool: "bool", type(None): "null", str: "string", int: "integer", float: "number", list: "list",
                  dict: "object"}
    wrong = {json_names.get(t, t.__name__) for t in set(map(type, values)) - set(allowed)}
    return ", ".join(sorted(wrong))


def _all_of(values: list[Any], *types: type) -> bool:
    """Exact type check (a JSON true is not the integer 1)."""
    return set(map(type, values)) <= set(types)


_TRANSFORM_TEXT = {"log1p": "log(1 + max(x, 0))", "none": "no transform (the value as is)"}


def dense_transform_of(schema: Schema) -> str | None:
    """The transform training's preparation applied to raw dense values ("log1p" or "none"), or None
    for data without a raw form (synthetic: its dense values are the model's inputs)."""
    info = schema.info or {}
    table = info.get("table_schema")
    if isinstance(table, dict):
        return str(table.get("dense_transform", "log1p"))
    if (info.get("source") or {}).get("format") == "criteo-tsv":
        return "log1p"
    return None


_RAW_TEXT = {"hex": "hex keys as in the Criteo TSV", "integer": "the integer id as in the source file",
             "text": "the value's text, as in the table file (hashed as at training time)"}


class RequestEncoder:
    """JSON queries -> Batches for one model's schema and vocabularies."""

    def __init__(self, schema: Schema, vocab: dict[str, np.ndarray] | None = None, max_candidates: int = 4096):
        self.schema = schema
        self.max_candidates = max_candidates
        vocab = vocab or {}
        self.hash_buckets = schema.info.get("hash_buckets") if schema.info.get("mode") == "hash" else None
        self.raw_keys = raw_key_kind(schema)
        self.hex_keys = self.raw_keys == "hex"
        self._vocab = {}
        if vocab:
            from recstack.data.vocab import VocabIndex

            self._vocab = {name: VocabIndex(values) for name, values in vocab.items()}
            for f in schema.sparse:  # a behaviour history reads its target's table, and that table's vocabulary
                if f.name not in self._vocab and f.table_name in self._vocab:
                    self._vocab[f.name] = self._vocab[f.table_name]
        self.dense_transform = dense_transform_of(schema)
        self.kinds: dict[str, str] = {name: "dense" for name in schema.dense_names}
        for f in schema.sparse:
            self.kinds[f.name] = "raw" if f.name in self._vocab or self.hash_buckets else "id"

    def describe(self) -> dict[str, Any]:
        """The features a query must give (GET /v1/schema)."""
        if self.dense_transform is None:
            dense = {"kind": "dense", "expects": "the model's input value (a finite number); no transform is applied"}
        else:
            formula = _TRANSFORM_TEXT[self.dense_transform]
            dense = {"kind": "dense", "transform": self.dense_transform,
                     "expects": f"the raw value (a number, or its text); the server applies {formula} as training's "
                                "preparation did; null or \"\" is missing (0 before the transform, as in training)"}
        features = [{"name": name, **dense} for name in self.schema.dense_names]
        for f in self.schema.sparse:
            feature = {"name": f.name, "kind": self.kinds[f.name], "num_embeddings": f.num_embeddings,
                       "bag_length": f.length, "sequence": f.sequence}
            if self.kinds[f.name] == "raw":
                feature["expects"] = ("a raw value: " + _RAW_TEXT[self.raw_keys] + "; null or \"\" is missing (the "
                                      "missing id 1), an unseen value the OOV id 0")
            else:
                feature["expects"] = f"an integer id in [0, {f.num_embeddings})"
            features.append(feature)
        raw = _RAW_TEXT[self.raw_keys]
        return {"features": features, "tasks": list(self.schema.label_names), "raw_values": raw,
                "dense_values": "raw (transformed by the server)" if self.dense_transform else "model input values",
                "max_candidates": self.max_candidates}

    # --- one query ----------------------------------------------------------------------------

    def encode(self, request: RankRequest) -> Batch:
        shared, columns = request.shared, request.candidates
        names = set(self.kinds)
        unknown = sorted((set(shared) | set(columns)) - names)
        if unknown:
            raise RequestError(f"unknown features {unknown[:10]}; this model reads {sorted(names)[:40]}")
        both = sorted(set(shared) & set(columns))
        if both:
            raise RequestError(f"features {both[:10]} are given both in shared and in candidates; give each once")
        if not columns:
            raise RequestError("candidates is empty: give at least one feature column with one value per candidate")
        sizes = {len(column) for column in columns.values()}
        if len(sizes) > 1:
            raise RequestError(f"candidate columns have different lengths {sorted(sizes)[:10]}; each needs one value per candidate")
        n = sizes.pop()
        if n < 1:
            raise RequestError("the candidate list is empty: a query ranks at least one candidate")
        if n > self.max_candidates:
            raise RequestError(f"{n} candidates in one query; this server takes at most {self.max_candidates}")
        missing = [name for name in self.kinds if name not in shared and name not in columns]
        if missing:
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise RequestError(f"{len(missing)} missing features: {', '.join(missing[:10])}{more}; give each in "
                               "shared or in candidates (GET /v1/schema lists them)")
        dense = np.zeros((n, len(self.schema.dense_names)), dtype=np.float32)
        for j, name in enumerate(self.schema.dense_names):
            dense[:, j] = self._dense(name, shared[name], n, "shared") if name in shared else self._dense(
                name, columns[name], n, "candidates")
        values, lengths = [], []
        for f in self.schema.sparse:
            if f.name in shared:
                bag_ids = self._ids(f.name, self._bag(shared[f.name]), "shared")
                ids, counts = np.tile(bag_ids, n), np.full(n, bag_ids.size, dtype=np.int64)
            else:
                flat, counts = self._column_bags(f.name, columns[f.name])
                ids = self._ids(f.name, flat, "candidates")
            if f.length is not None and np.any(counts != f.length):
                bad = int(counts[np.flatnonzero(counts != f.length)[0]])
                raise RequestError(f"feature {f.name} takes exactly {f.length} id(s) per candidate, got a bag of {bad}")
            values.append(ids)
            lengths.append(counts)
        sparse = JaggedFeatures(
            list(self.schema.sparse_names),
            torch.from_numpy(np.concatenate(values) if values else np.zeros(0, np.int64)),
            torch.from_numpy(np.concatenate(lengths).astype(np.int32) if lengths else np.zeros(0, np.int32)),
            n,
        )
        return Batch(torch.from_numpy(dense), sparse, torch.zeros(n))

    # --- values -------------------------------------------------------------------------------

    def _dense(self, name: str, value: Any, n: int, where: str) -> np.ndarray:
        items = [value] if where == "shared" else value
        if self.dense_transform is not None:
            column = self._raw_dense(name, items, where)
            return column if where == "candidates" else np.full(n, column[0], dtype=np.float32)
        if not _all_of(items, int, float):
            raise RequestError(f"{where}.{name}: dense values must be numbers, got {_wrong_types(items, int, float)}")
        try:
            column = np.asarray(items, dtype=np.float64).astype(np.float32)
        except OverflowError:
            raise RequestError(f"{where}.{name}: a dense value is out of range") from None
        if not np.isfinite(column).all():
            raise RequestError(f"{where}.{name}: dense values must be finite (no NaN, no infinity, within float32)")
        return column if where == "candidates" else np.full(n, column[0], dtype=np.float32)

    def _raw_dense(self, name: str, items: list[Any], where: str) -> np.ndarray:
        """Raw dense values -> the model's inputs, as training's preparation made them: null or "" is
        missing (0), then the schema's transform."""
        if not _all_of(items, int, float, str, type(None)):
            raise RequestError(f"{where}.{name}: dense values must be numbers (or null for missing), "
                               f"got {_wrong_types(items, int, float, str, type(None))}")
        values = np.zeros(len(items), dtype=np.float64)
        for i, item in enumerate(items):
            if item is None or (type(item) is str and not item.strip()):
                continue
            try:
                values[i] = float(item)
            except (ValueError, OverflowError):
                raise RequestError(f"{where}.{name}: {str(item)[:40]!r} is not a number") from None
        if not np.isfinite(values).all():
            raise RequestError(f"{where}.{name}: dense values must be finite (no NaN, no infinity)")
        if self.dense_transform == "log1p":
            values = np.log1p(np.maximum(values, 0.0))
        column = values.astype(np.float32)
        if not np.isfinite(column).all():
            raise RequestError(f"{where}.{name}: dense values must be finite (no NaN, no infinity, within float32)")
        return column

    @staticmethod
    def _bag(value: Any) -> list[Any]:
        return value if type(value) is list else [value]

    def _column_bags(self, name: str, column: list[Any]) -> tuple[list[Any], np.ndarray]:
        """(flat values, bag sizes) of a candidate column of scalars and/or lists."""
        if list not in set(map(type, column)):
            return column, np.ones(len(column), dtype=np.int64)
        bags = [v if type(v) is list else [v] for v in column]
        return list(chain.from_iterable(bags)), np.fromiter(map(len, bags), dtype=np.int64, count=len(bags))

    def _ids(self, name: str, values: list[Any], where: str) -> np.ndarray:
        """Embedding ids of a feature's values (range-checked ids, or raw values encoded)."""
        feature = self.schema.feature(name)
        if self.kinds[name] == "id":
            if not _all_of(values, int):
                raise RequestError(f"{where}.{name}: ids must be integers, got {_wrong_types(values, int)}")
            try:
                ids = np.asarray(values, dtype=np.int64)
            except OverflowError:
                raise RequestError(f"{where}.{name}: an id is out of range [0, {feature.num_embeddings})") from None
            if ids.size and (ids.min() < 0 or ids.max() >= feature.num_embeddings):
                bad = int(ids[(ids < 0) | (ids >= feature.num_embeddings)][0])
                raise RequestError(f"{where}.{name}: id {bad} is out of range [0, {feature.num_embeddings})")
            return ids
        if not _all_of(values, str, type(None), *(() if self.hex_keys else (int,))):
            allowed = (str, type(None)) if self.hex_keys else (str, int, type(None))
            raise RequestError(f"{where}.{name}: raw categorical values must be strings (or null for missing), "
                               f"got {_wrong_types(values, *allowed)}")
        # null is missing, as an empty field is; an integer of a table reads as its text in the file
        values = ["" if v is None else v if type(v) is str else str(v) for v in values]
        return self._encode_raw(name, values, where)

    def _encode_raw(self, name: str, values: list[str], where: str) -> np.ndarray:
        from recstack.data.vocab import encode_hash, encode_vocab

        if not values:
            return np.zeros(0, dtype=np.int64)
        if self.hex_keys:
            distinct, inverse = np.unique(np.asarray(values, dtype=str), return_inverse=True)
            keys = np.zeros(len(distinct), dtype=np.uint64)
            for i, text in enumerate(distinct.tolist()):
                if text and not _HEX.fullmatch(text):
                    raise RequestError(f"{where}.{name}: {text[:40]!r} is not a Criteo categorical value (1-16 hex digits)")
                keys[i] = int(text, 16) if text else 0
            raw, missing = keys[inverse.reshape(-1)], (distinct == "")[inverse.reshape(-1)]
        elif self.raw_keys == "integer":
            distinct, inverse = np.unique(np.asarray([v.strip() for v in values], dtype=str), return_inverse=True)
            keys = np.zeros(len(distinct), dtype=np.uint64)
            for i, text in enumerate(distinct.tolist()):
                if text and not _INTEGER.fullmatch(text):
                    raise RequestError(f"{where}.{name}: {text[:40]!r} is not an id of the source file (a non-negative integer)")
                keys[i] = int(text) if text else 0
            raw, missing = keys[inverse.reshape(-1)], (distinct == "")[inverse.reshape(-1)]
        else:
            from recstack.data.table import hash_keys

            raw, missing = hash_keys(values)
        if name in self._vocab:
            ids = encode_vocab(raw, missing, self._vocab[name])
        else:
            ids = encode_hash(raw, missing, int(self.hash_buckets))
        return ids.astype(np.int64)

