"""The HTTP app of `recstack serve`: the inference engine behind a JSON API (FastAPI).

    POST /v1/rank            one query: shared features + N candidates -> N scores, in order
    POST /v1/rank/batch      several queries, admitted (or shed) together
    POST /v1/rank/synthetic  N candidates drawn by the server (load tests)
    GET  /v1/schema          the features a query gives, by name and kind
    GET  /health             liveness and queue state
    GET  /metrics            Prometheus text: requests by status, latency histogram, queue depth, rejections
    GET  /openapi.json       the OpenAPI spec (interactive docs at /docs)

Bad input is a 4xx with a one-line `detail` (422 for a body that does not fit the API, 413 for a
body over the limit); a full queue is a 503 at once (load shedding). The app's shutdown drains
the engine; recstack/serve/server.py runs it under uvicorn.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pydantic_core
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from recstack.serve.api import (
    ErrorResponse,
    RankBatchRequest,
    RankBatchResponse,
    RankRequest,
    RankResponse,
    RequestEncoder,
    RequestError,
    SyntheticRequest,
)
from recstack.serve.candidates import SyntheticQueries
from recstack.serve.engine import EngineOverloaded, InferenceEngine, InferenceError
from recstack.serve.limits import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CANDIDATES,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_QUERIES,
)
from recstack.serve.protocol import Completion, Query

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


# --- metrics ----------------------------------------------------------------------------------


class _EngineCollector:
    """The engine's counters and queue state, read at every scrape."""

    def __init__(self, engine: InferenceEngine):
        self.engine = engine

    def describe(self) -> list:
        return []

    def collect(self):
        stats = self.engine.stats()
        for key, help_text in (("queries", "queries admitted"), ("completed", "queries completed"),
                               ("rejected", "queries shed by a full queue"), ("errors", "queries that failed")):
            yield CounterMetricFamily(f"recstack_engine_{key}", help_text, value=stats[key])
        yield GaugeMetricFamily("recstack_engine_in_flight", "queries admitted and not yet completed", value=stats["in_flight"])
        per_pool = [
            (CounterMetricFamily, "sub_requests", "sub-requests (query slices) queued"),
            (CounterMetricFamily, "batches", "merged batches run by the model"),
            (CounterMetricFamily, "items", "candidate rows scored"),
            (GaugeMetricFamily, "queue_items", "candidate rows waiting in the queue"),
            (GaugeMetricFamily, "queue_requests", "sub-requests waiting in the queue"),
        ]
        for family, key, help_text in per_pool:
            metric = family(f"recstack_engine_{key}", help_text, labels=["pool"])
            for name, pool in stats["pools"].items():
                metric.add_metric([name], pool[key])
            yield metric


class ServerMetrics:
    """Prometheus instruments of one app (its own registry: several apps may live in one process)."""

    def __init__(self, engine: InferenceEngine):
        self.registry = CollectorRegistry()
        self.requests = Counter("recstack_http_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("recstack_http_request_duration_seconds", "HTTP request latency by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.shed = Counter("recstack_http_shed", "scoring requests answered 503 by the in-flight limit, before parsing",
                            registry=self.registry)
        self.registry.register(_EngineCollector(engine))

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


# --- ASGI middleware --------------------------------------------------------------------------


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


class _Observe:
    """Counts and times every response by endpoint and status (outermost, so it sees 413s too)."""

    def __init__(self, app: Any, metrics: ServerMetrics, endpoints: set[str]):
        self.app, self.metrics, self.endpoints = app, metrics, endpoints

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]

        async def observed_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            endpoint = scope["path"] if scope["path"] in self.endpoints else "other"  # bounded label values
            self.metrics.observe(endpoint, status[0], time.perf_counter() - start)


class _BodyLimit:
    """Reads the body up to `limit` bytes and answers 413 beyond it, before any parsing."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = _error(413, f"request body over the limit of {self.limit:,} bytes", {"Connection": "close"})
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await too_large(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class _InFlightLimit:
    """At most `limit` scoring requests inside the app at once; beyond it a 503 at once, before the
    body is parsed. The engine's row limit sheds at its queue, but only for requests the event loop
    got to parse: when requests come faster than it can parse them they would wait unseen in front
    of it, so this bounds the HTTP layer's own queue too."""

    def __init__(self, app: Any, limit: int, scoring_paths: set[str], shed: Any):
        self.app, self.limit, self.scoring_paths, self.shed = app, limit, scoring_paths, shed
        self.in_flight = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in self.scoring_paths:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            self.shed()
            await _error(503, f"overloaded: {self.in_flight} requests in flight (--max-in-flight {self.limit}); "
                         "retry later", {"Retry-After": "1"})(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


# --- the app ----------------------------------------------------------------------------------


def _scores_json(scores: torch.Tensor) -> list:
    if not torch.isfinite(scores).all():
        raise RequestError("the model's output is not finite for these inputs (dense values far outside its range?)")
    return scores.tolist()


async def _score(engine: InferenceEngine, batches: list) -> list[torch.Tensor]:
    """Submit queries as one group and wait for their scores without blocking the event loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def settle(result: tuple) -> None:
        if not future.done():
            future.set_result(result)

    def done(completions: list[Completion], scores: list) -> None:
        loop.call_soon_threadsafe(settle, (completions, scores))

    now = time.perf_counter()
    engine.submit_group([Query(i, b.batch_size, now, b) for i, b in enumerate(batches)], done)
    completions, scores = await future
    for completion in completions:
        if completion.rejected:
            raise EngineOverloaded(completion.error or "the queue is full")
        if completion.error:
            raise InferenceError(completion.error)
    return scores


class _JSONRequest(Request):
    """Parses JSON bodies with pydantic-core's parser: a depth limit answered as malformed JSON, where
    the json module would hit Python's recursion limit on a deeply nested body."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = pydantic_core.from_json(body, allow_inf_nan=True)
            except ValueError as exc:
                raise json.JSONDecodeError(str(exc), "", 0) from None
        return self._json


class _Route(APIRoute):
    def get_route_handler(self):
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(_JSONRequest(request.scope, request.receive))

        return route


def _validation_summary(errors: list[dict]) -> str:
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return f"malformed JSON: {first.get('ctx', {}).get('error', 'cannot parse the body')}"
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid request')}{more}"


def create_app(
    engine: InferenceEngine,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
    max_queries: int = DEFAULT_MAX_QUERIES,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    close_engine: bool = True,
) -> FastAPI:
    """The ASGI app serving `engine`; with `close_engine`, its shutdown drains and closes the engine.
    At most `max_in_flight` scoring requests are inside it at once (0: no limit)."""
    from recstack import __version__

    encoder = RequestEncoder(engine.schema, engine.vocab, max_candidates)
    metrics = ServerMetrics(engine)
    # without a seed, synthetic queries come drawn once per size and reused in rotation, exactly like
    # the in-process load generator's: a fresh draw per request would charge the draw to the server
    synthetic = SyntheticQueries(engine.synthetic_query, np.random.default_rng([engine.seed, 1]))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(lambda: engine.candidates)  # the synthetic pool, before the first request
        yield
        if close_engine:
            await run_in_threadpool(engine.close)

    app = FastAPI(
        title="recstack inference server",
        version=__version__,
        description="Rank candidates with a recstack model. Scores are P(click) per candidate, in request order. "
        "Features are named by the model's schema (GET /v1/schema).",
        lifespan=lifespan,
    )
    app.router.route_class = _Route
    errors = {413: {"model": ErrorResponse, "description": "body over the size limit"},
              422: {"model": ErrorResponse, "description": "a body that does not fit the API or the model's schema"},
              503: {"model": ErrorResponse, "description": "overloaded: the queue is full, retry later"}}

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        details = [{"loc": list(map(str, e.get("loc", ()))), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
                   for e in errors]  # no input values: they may not even be JSON (NaN)
        return JSONResponse({"detail": _validation_summary(errors), "errors": details[:20]}, status_code=422)

    @app.exception_handler(RequestError)
    async def bad_request(request: Request, exc: RequestError) -> JSONResponse:
        return _error(422, str(exc))

    @app.exception_handler(EngineOverloaded)
    async def overloaded(request: Request, exc: EngineOverloaded) -> JSONResponse:
        return _error(503, f"overloaded: {exc}; retry later", {"Retry-After": "1"})

    @app.exception_handler(InferenceError)
    async def failed(request: Request, exc: InferenceError) -> JSONResponse:
        return _error(500, f"inference failed: {exc}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.get("/health", summary="liveness and queue state")
    async def health() -> dict[str, Any]:
        stats = engine.stats()
        keys = ("queries", "completed", "rejected", "in_flight", "queue_items", "queue_requests", "mode", "workers")
        return {"status": "ok", "model": engine.source, **{k: stats[k] for k in keys}}

    @app.get("/metrics", summary="Prometheus metrics (text format)", response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/schema", summary="the features a query gives, by name and kind")
    async def features() -> dict[str, Any]:
        return {"model": engine.source, **encoder.describe()}

    @app.post("/v1/rank", response_model=RankResponse, responses=errors, summary="rank the candidates of one query")
    async def rank(body: RankRequest) -> JSONResponse:
        (scores,) = await _score(engine, [encoder.encode(body)])
        return JSONResponse({"scores": _scores_json(scores)})

    @app.post("/v1/rank/batch", response_model=RankBatchResponse, responses=errors, summary="rank several queries")
    async def rank_batch(body: RankBatchRequest) -> JSONResponse:
        if not 1 <= len(body.queries) <= max_queries:
            raise RequestError(f"queries holds {len(body.queries)} queries; give 1 to {max_queries}")
        batches = []
        for i, query in enumerate(body.queries):
            try:
                batches.append(encoder.encode(query))
            except RequestError as exc:
                raise RequestError(f"queries.{i}: {exc}") from None
        scores = await _score(engine, batches)
        return JSONResponse({"results": [{"scores": _scores_json(s)} for s in scores]})

    @app.post("/v1/rank/synthetic", response_model=RankResponse, responses=errors,
              summary="rank N candidates drawn by the server (for load tests)")
    async def rank_synthetic(body: SyntheticRequest) -> JSONResponse:
        if not 1 <= body.size <= max_candidates:
            raise RequestError(f"size must be 1 to {max_candidates}, not {body.size}")
        now = time.perf_counter()
        if body.seed is None:
            query = synthetic(0, body.size, now)
        else:
            query = engine.synthetic_query(0, body.size, now, np.random.default_rng(abs(body.seed)))
        (scores,) = await _score(engine, [query.batch])
        return JSONResponse({"scores": _scores_json(scores)})

    endpoints = {route.path for route in app.routes}
    if max_in_flight:
        app.add_middleware(_InFlightLimit, limit=max_in_flight, scoring_paths={p for p in endpoints if p.startswith("/v1/rank")},
                           shed=metrics.shed.inc)
    app.add_middleware(_BodyLimit, limit=max_body_bytes)
    app.add_middleware(_Observe, metrics=metrics, endpoints=endpoints)
    app.state.engine, app.state.metrics = engine, metrics
    return app
