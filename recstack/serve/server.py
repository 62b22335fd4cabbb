"""`recstack serve`: a model behind the JSON HTTP API of recstack/serve/app.py, on uvicorn.

    recstack serve --checkpoint runs/ckpt            a trained model (raw values through its vocabulary)
    recstack serve --preset rmc1 --model.scale 0.01  a zoo preset with random weights (benchmarks)

SIGTERM or SIGINT stops accepting connections, lets in-flight requests finish (up to
--shutdown-timeout), drains the engine and exits 0. Heavy imports wait for `run`, so `recstack
--help` stays fast.
"""

from __future__ import annotations

import argparse
import signal
import socket
from typing import Any

from recstack.argtypes import float_in, int_in, nonnegative_float, nonnegative_int, port, positive_int, seed
from recstack.errors import ConfigError
from recstack.serve.engine import MAX_QUERY_SIZE, MAX_WAIT_MS, MAX_WORKERS, refuse_idle_accelerator, worker_count
from recstack.serve.limits import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CANDIDATES,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_QUERIES,
    MAX_BODY_BYTES,
)

# engine options: (flag, EngineConfig field, type, help); defaults are EngineConfig's
_ENGINE_OPTIONS: list[tuple[str, str, Any, str]] = [
    ("--workers", "workers", worker_count, "CPU inference workers (default 2)"),
    ("--threads-per-worker", "threads_per_worker", worker_count,
     f"intra-op threads of each worker, at most {MAX_WORKERS} (default: cores / workers)"),
    ("--sub-batch", "sub_batch", nonnegative_int, "split queries into sub-requests of at most this many rows (default 0: whole)"),
    ("--offload-threshold", "offload_threshold", nonnegative_int,
     "queries of at least this many candidates go whole to the accelerator pool (default 0: never)"),
    ("--accelerator-workers", "accelerator_workers", worker_count, "workers of the accelerator pool (default 1)"),
    ("--max-batch", "max_batch", positive_int, "dynamic batching: rows per model call (default 1024)"),
    ("--max-wait-ms", "max_wait_ms", float_in(0.0, MAX_WAIT_MS, what=f"a number of ms in [0, {MAX_WAIT_MS:g}]"),
     "dynamic batching: longest wait for more rows (default 0)"),
    ("--queue-limit", "queue_limit", nonnegative_int,
     "candidate rows that may wait; beyond it requests get 503 (default 0: unbounded)"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Serve a model over HTTP: POST /v1/rank, /v1/rank/batch, /v1/rank/synthetic; GET /health, "
                          "/metrics (Prometheus), /v1/schema, /openapi.json, /docs. See docs/SERVING.md.")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", metavar="C", help="a checkpoint file, or a directory (its latest)")
    model.add_argument("--preset", metavar="NAME", help="a zoo preset with random weights (benchmarks; --model.scale S)")
    parser.add_argument("--seed", type=seed, default=0, help="weights of --preset, and the server's synthetic draws")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=port, default=8000, help="0 picks a free port (printed at start)")
    parser.add_argument("--mode", choices=["thread", "process"], help="worker kind (default thread: docs/SERVING.md)")
    parser.add_argument("--accelerator", choices=["auto", "cuda", "cpu", "none"],
                        help="the offload pool's device (default auto: cuda when available, else cpu workers)")
    for flag, field, kind, help_text in _ENGINE_OPTIONS:
        parser.add_argument(flag, dest=field, type=kind, metavar="N", help=help_text)
    parser.add_argument("--max-body-bytes", type=int_in(1, MAX_BODY_BYTES, what=f"a size in [1, {MAX_BODY_BYTES}] bytes"),
                        default=DEFAULT_MAX_BODY_BYTES, help="default 1 MiB, at most 1 GiB (a body is parsed in memory)")
    parser.add_argument("--max-candidates", type=int_in(1, MAX_QUERY_SIZE, what=f"a query size in [1, {MAX_QUERY_SIZE}]"),
                        default=DEFAULT_MAX_CANDIDATES, help="per query (default 4096)")
    parser.add_argument("--max-queries", type=positive_int, default=DEFAULT_MAX_QUERIES,
                        help="per /v1/rank/batch request (default 64)")
    parser.add_argument("--max-in-flight", type=nonnegative_int, default=DEFAULT_MAX_IN_FLIGHT, metavar="N",
                        help="scoring requests inside the server at once; beyond it 503 before parsing (default 256; 0: no limit)")
    parser.add_argument("--shutdown-timeout", type=nonnegative_float, default=30.0, metavar="S",
                        help="longest wait for in-flight requests after SIGTERM (default 30)")
    parser.add_argument("--http", choices=["auto", "httptools", "h11"], default="auto",
                        help="HTTP/1.1 parser (default auto: httptools when installed, pure-Python h11 otherwise)")
    parser.add_argument("--loop", choices=["auto", "uvloop", "asyncio"], default="auto",
                        help="event loop (default auto: uvloop when installed)")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    parser.add_argument("--quiet", action="store_true")


def engine_from_args(args: argparse.Namespace, extra: list[str]):
    from recstack.config import parse_overrides
    from recstack.serve.engine import EngineConfig, InferenceEngine

    overrides = parse_overrides(extra)
    scale = overrides.pop("model.scale", 1.0)
    if overrides or (args.checkpoint and extra):
        raise ConfigError(f"unexpected arguments: {' '.join(extra)} (only --model.scale, with --preset)")
    refuse_idle_accelerator(args.accelerator, args.offload_threshold)
    if args.accelerator_workers is not None and not args.offload_threshold:
        raise ConfigError("--accelerator-workers sizes the pool that queries of at least --offload-threshold candidates "
                          "go to; without --offload-threshold > 0 there is no such pool")
    given = {field: getattr(args, field) for field in ("mode", "accelerator", *(o[1] for o in _ENGINE_OPTIONS))}
    config = EngineConfig(**{k: v for k, v in given.items() if v is not None})
    config.validate()
    if args.checkpoint:
        return InferenceEngine.from_checkpoint(args.checkpoint, config)
    try:
        scale = float(scale)
    except ValueError:
        raise ConfigError(f"--model.scale must be a number, not {scale!r}") from None
    if not 0 < scale < float("inf"):
        raise ConfigError(f"--model.scale must be a positive number, not {scale}")
    return InferenceEngine.from_preset(args.preset, config, scale=scale, seed=args.seed)


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit it: without it, a keep-alive response's body waits ~40 ms for the
    # client's delayed ACK of the headers (Nagle); asyncio sets it only on sockets made with IPPROTO_TCP
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # connections queue from now on, before uvicorn starts accepting
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def _server(config: Any) -> Any:
    """A uvicorn Server whose force quit (a second SIGINT while it shuts down: stop waiting for open
    connections) still runs the app's shutdown. uvicorn skips it then, and the loop's teardown cancels
    the app's lifespan task, which starlette logs as a CancelledError traceback; the app's shutdown
    (draining the engine) runs after the loop anyway."""
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            await super().shutdown(sockets=sockets)
            if self.force_exit:
                await self.lifespan.shutdown()

    return Server(config)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    import uvicorn

    from recstack.progress import say
    from recstack.serve.app import create_app
    from recstack.serve.engine import freeze_heap

    sock = _listen(args.host, args.port)
    engine = engine_from_args(args, extra)
    app = create_app(engine, max_body_bytes=args.max_body_bytes, max_candidates=args.max_candidates,
                     max_queries=args.max_queries, max_in_flight=args.max_in_flight)
    server = _server(uvicorn.Config(
        app, log_level="warning" if args.quiet else "info", access_log=args.access_log, http=args.http, loop=args.loop,
        timeout_graceful_shutdown=args.shutdown_timeout, lifespan="on",
    ))
    freeze_heap()
    stats = engine.stats()
    say(f"serving {engine.source}: {stats['workers']} {stats['mode']} worker(s) x {stats['threads_per_worker']} "
        f"thread(s), accelerator {stats['accelerator']}")
    # uvicorn re-raises the stop signal after its graceful shutdown; a drained server exits 0 instead.
    # A signal from the URL's printing on, before uvicorn takes over the handlers (it is starting),
    # stops it as soon as it has started.
    stop_signals: list[int] = []

    def stop(sig: int, frame: Any) -> None:
        stop_signals.append(sig)
        server.should_exit = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        print(f"listening on http://{args.host}:{sock.getsockname()[1]} (API docs at /docs)", flush=True)
        server.run(sockets=[sock])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        engine.close()  # idempotent: the app's shutdown has drained it already
    stopped_by = f" by {signal.Signals(stop_signals[0]).name}" if stop_signals else ""
    say(f"stopped{stopped_by}: {engine.stats()['completed']:,} queries served")
    return 0
