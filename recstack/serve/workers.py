"""Inference workers: where a merged batch meets the model.

Every worker is a thread of the engine that takes batches from its pool's queue and hands them to
its runner: a `ThreadRunner` calls the model in that thread (torch releases the GIL inside its
kernels); a `ProcessRunner` ships the batch to a child process of its own and waits for the scores
(no GIL contention, but the batch and the scores cross a pipe). Each sets its intra-op threads, so
workers x threads need not oversubscribe the cores.

Children come from a fork server that imported torch once (never forked from the engine's own
process: a fork of a process whose OpenMP pool already ran can hang; spawning each would import
torch once per child). They receive the model once; its tensors move to shared memory, so N
children share one copy of the embedding tables.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as torch_mp
from torch import nn

from recstack.data.batch import Batch, JaggedFeatures

READY_TIMEOUT_S = 300.0
"""How long a spawned worker may take to import torch and receive the model."""


def _process_context() -> multiprocessing.context.BaseContext:
    if "forkserver" not in multiprocessing.get_all_start_methods():  # pragma: no cover - not POSIX
        return torch_mp.get_context("spawn")
    context = torch_mp.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # the server imports torch and this module once
    return context


def probabilities(model: nn.Module, batch: Batch, device: torch.device | str) -> torch.Tensor:
    """sigmoid(model(batch)) as float32 on the CPU: [B], or [B, T] for a multi-task model."""
    with torch.inference_mode():
        return torch.sigmoid(model(batch.to(device)).float()).cpu()


class WorkerError(RuntimeError):
    """A batch failed in a worker (the message says why); the worker itself goes on."""


class ThreadRunner:
    """Runs the model in the calling worker thread."""

    def __init__(self, model: nn.Module, device: torch.device | str, threads: int):
        self.model, self.device, self.threads = model, torch.device(device), threads

    def bind(self) -> None:
        """Called once in the worker thread: its intra-op threads (a per-thread OpenMP setting)."""
        torch.set_num_threads(self.threads)

    def run(self, batch: Batch) -> torch.Tensor:
        return probabilities(self.model, batch, self.device)

    def stop(self) -> None:
        pass

    def close(self) -> None:
        pass


def _encode(batch: Batch) -> tuple[Any, ...]:
    sparse = batch.sparse
    weights = None if sparse.weights is None else sparse.weights.numpy()
    return (tuple(sparse.keys), batch.dense.numpy(), sparse.values.numpy(), sparse.lengths.numpy(), weights,
            sparse.batch_size)


def _decode(message: tuple[Any, ...]) -> Batch:
    keys, dense, values, lengths, weights, size = message
    sparse = JaggedFeatures(list(keys), torch.from_numpy(values), torch.from_numpy(lengths), size,
                            None if weights is None else torch.from_numpy(weights))
    return Batch(torch.from_numpy(dense), sparse, torch.zeros(size))


def _child_main(conn: Any, model: nn.Module, threads: int) -> None:
    """A worker process: batches in, probabilities out, until told to stop or the parent goes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent drains and stops us
    torch.set_num_threads(threads)
    model.eval()
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        try:
            conn.send(("ok", probabilities(model, _decode(message), "cpu").numpy()))
        except Exception as exc:  # a bad batch fails alone; the worker lives on
            conn.send(("error", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))


class ProcessRunner:
    """Runs the model in a spawned child process; restarts the child if it dies."""

    def __init__(self, model: nn.Module, threads: int):
        self.model, self.threads = model, threads
        self._context = _process_context()
        self._start()

    def _start(self) -> None:
        self._conn, child_conn = self._context.Pipe()
        self.process = self._context.Process(target=_child_main, args=(child_conn, self.model, self.threads),
                                             daemon=True, name="recstack-worker")
        self.process.start()
        child_conn.close()
        self._ready = self._stopped = False

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        if self._ready:
            return
        if not self._conn.poll(timeout):
            raise WorkerError(f"worker process {self.process.pid} did not start within {timeout:.0f} s")
        try:
            self._conn.recv()
        except (EOFError, OSError):
            raise WorkerError(f"worker process {self.process.pid} died while starting (exit code "
                              f"{self.process.exitcode})") from None
        self._ready = True

    def bind(self) -> None:
        self.wait_ready()

    def run(self, batch: Batch) -> torch.Tensor:
        self.wait_ready()  # a restarted child says ready first
        try:
            self._conn.send(_encode(batch))
            status, payload = self._conn.recv()
        except (EOFError, OSError):
            code = self.process.exitcode
            self._conn.close()
            self._start()  # the next batch goes to a fresh child
            raise WorkerError(f"worker process died (exit code {code}); restarted it") from None
        if status != "ok":
            raise WorkerError(payload)
        return torch.from_numpy(np.asarray(payload))

    def stop(self) -> None:
        """Ask the child to exit (after the batch it is on); `close` waits for it."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self._conn.send(None)
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        self.stop()
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=5)
        self._conn.close()
