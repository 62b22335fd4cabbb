"""The process group a run belongs to: torch.distributed, set up from torchrun's environment.

`torchrun --nproc-per-node N -m recstack train ...` (or `recstack train --nproc N`, which calls
torch's own launcher) starts N processes with RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE
set; `join()` joins them into one group: gloo on CPU, NCCL with one GPU per local rank. A process
started without them is a world of one, and nothing here touches torch.distributed.

On one machine every rank talks over 127.0.0.1 (`LOOPBACK_ENV`): the launcher, the tests and the
benchmarks set it, and a hostname is never resolved.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta

import torch

from recstack.errors import ConfigError

LOOPBACK_ENV = {"MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}
"""What a job on one machine sets so that every rank talks over loopback only."""
JOIN_TIMEOUT = timedelta(seconds=float(os.environ.get("RECSTACK_DIST_TIMEOUT", "120")))
"""How long a rank waits for the others (rendezvous, and any collective) before it fails with one line."""


@dataclass
class Collectives:
    """Bytes this rank sent to other ranks, and wall seconds, per kind of collective."""

    bytes: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, kind: str, sent: int, seconds: float = 0.0) -> None:
        self.bytes[kind] = self.bytes.get(kind, 0) + int(sent)
        self.seconds[kind] = self.seconds.get(kind, 0.0) + seconds


@dataclass
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        """Part of a torch.distributed job (torchrun started it; a job of one rank too)."""
        import torch.distributed as dist

        return dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """Whether torchrun started this process (as one rank of a job, possibly of one rank)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_PORT" in os.environ


def join(device: str = "cpu") -> World:
    """Join the job torchrun started (a world of one when it did not): the backend for the device
    (gloo on CPU, NCCL on CUDA, one GPU per local rank) and the intra-op threads divided among the
    ranks of this machine so they do not oversubscribe its cores."""
    import torch.distributed as dist

    env = {k: int(os.environ.get(k, d)) for k, d in
           (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0), ("LOCAL_WORLD_SIZE", 1))}
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device is cuda but no CUDA device is available (use cpu)")
        torch.cuda.set_device(env["LOCAL_RANK"] % torch.cuda.device_count())
        where = torch.device("cuda", torch.cuda.current_device())
    else:
        where = torch.device("cpu")
    world = World(env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"], where)
    if not launched():
        return world
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world.local_world_size))
    if os.environ.get("MASTER_ADDR", "").startswith("127."):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # a job on this machine stays on loopback
    if not dist.is_initialized():
        try:
            dist.init_process_group("nccl" if where.type == "cuda" else "gloo", timeout=JOIN_TIMEOUT,
                                    device_id=where if where.type == "cuda" else None)
        except (RuntimeError, ValueError) as exc:
            where_to = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
            raise ConfigError(f"rank {world.rank} could not join the other {world.world_size - 1} rank(s) at "
                              f"{where_to} within {JOIN_TIMEOUT.total_seconds():.0f} s "
                              f"({str(exc).splitlines()[0][:160]})") from None
    return world


def comm_device() -> torch.device:
    """Where collectives take their tensors: the GPU with NCCL, the host with gloo."""
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a launcher's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_endpoint(endpoint: str | None) -> tuple[str, str]:
    """(host, port) of a rendezvous on this machine: 127.0.0.1 and a free port, or the given
    127.0.0.1:PORT. Anything else is refused: this launcher is the one-machine shortcut (several
    "nodes" included, as tests run them), and a job across machines is torchrun's to start."""
    if endpoint is None:
        return "127.0.0.1", str(free_port())
    host, _, port = endpoint.rpartition(":")
    if host != LOOPBACK_ENV["MASTER_ADDR"] or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--rdzv-endpoint {endpoint}: recstack's launcher meets on 127.0.0.1:PORT only; for a job "
                          "across machines start each one with torchrun (README, Scaling out)")
    return host, port


def launch(nproc: int, module_args: list[str], nnodes: int = 1, node_rank: int = 0,
           endpoint: str | None = None) -> int:
    """Run `python -m recstack.cli <module_args>` on `nproc` ranks with torch's own launcher (torchrun),
    rendezvous and gloo on loopback (127.0.0.1, interface lo); the exit status of the job."""
    from torch.distributed.run import get_args_parser, run

    host, port = loopback_endpoint(endpoint)
    os.environ.update(LOOPBACK_ENV)  # the ranks inherit it: gloo never picks another interface
    args = get_args_parser().parse_args([
        "--nproc-per-node", str(nproc), "--nnodes", str(nnodes), "--node-rank", str(node_rank),
        "--master-addr", host, "--master-port", port, "--max-restarts", "0",
        "--rdzv-conf", f"timeout={int(JOIN_TIMEOUT.total_seconds())}",
        "-m", "recstack.cli", *module_args,
    ])
    from torch.distributed import DistStoreError
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError, RendezvousTimeoutError

    try:
        run(args)
    except (RendezvousTimeoutError, RendezvousError, DistStoreError) as exc:
        raise ConfigError(f"the {nnodes} node(s) did not all reach the rendezvous at {host}:{port} within "
                          f"{JOIN_TIMEOUT.total_seconds():.0f} s (RECSTACK_DIST_TIMEOUT): start every node's launcher "
                          f"({type(exc).__name__})") from None
    except ChildFailedError as exc:
        failures = exc.failures
        first = min(failures.values(), key=lambda f: f.timestamp) if failures else None
        code = first.exitcode if first is not None else 1
        return code if code > 0 else 1
    return 0


def agree(error: Exception | None, what: str) -> None:
    """Every rank reports whether `what` worked for it; if it failed anywhere, every rank stops with
    one line (the failing rank with its own error), instead of the others waiting for it until the
    timeout."""
    import torch.distributed as dist

    if not dist.is_initialized():
        if error is not None:
            raise error
        return
    device = comm_device()
    failed = torch.tensor([0 if error is None else 1 + dist.get_rank()], dtype=torch.int64, device=device)
    flags = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(flags, failed)
    if error is not None:
        raise error
    bad = [int(f) - 1 for f in flags if int(f)]
    if bad:
        raise ConfigError(f"rank(s) {bad} could not {what}; this rank stops with them")


def gather_objects(value):
    """Every rank's `value`, in rank order (a list of one outside a job)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return [value]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out
