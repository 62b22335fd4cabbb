"""Capacity guards: they read the kernel's and the cgroup's figures, and refuse with one line."""

from __future__ import annotations

import pytest

from recstack import memory
from recstack.memory import CapacityError, require_disk, require_memory


def test_meminfo_available_reads_the_kernel_line(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n")
    assert memory._meminfo_available(str(meminfo)) == 20_000_000 * 1024
    assert memory._meminfo_available(str(tmp_path / "missing")) is None


@pytest.mark.parametrize("files, expected", [
    ({"memory.max": "max\n", "memory.current": "5\n"}, None),
    ({"memory.max": "1000\n", "memory.current": "300\n"}, 700),
    ({"memory.max": "1000\n", "memory.current": "3000\n"}, 0),
    ({"memory/memory.limit_in_bytes": "9223372036854771712\n", "memory/memory.usage_in_bytes": "5\n"}, None),
    ({"memory/memory.limit_in_bytes": "2048\n", "memory/memory.usage_in_bytes": "48\n"}, 2000),
    ({}, None),
])
def test_cgroup_headroom_v2_and_v1(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert memory._cgroup_headroom(str(tmp_path)) == expected


def test_available_memory_is_the_smaller_known_figure(monkeypatch):
    monkeypatch.setattr(memory, "_meminfo_available", lambda: 10 << 30)
    monkeypatch.setattr(memory, "_cgroup_headroom", lambda: 4 << 30)
    assert memory.available_memory() == 4 << 30
    monkeypatch.setattr(memory, "_cgroup_headroom", lambda: None)
    assert memory.available_memory() == 10 << 30
    monkeypatch.setattr(memory, "_meminfo_available", lambda: None)
    assert memory.available_memory() is None
    require_memory(1 << 60, "anything")  # unknown capacity: the work goes ahead


def test_require_memory_names_need_and_capacity(monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda: 4 << 30)
    require_memory(4 << 30, "the tables")
    with pytest.raises(CapacityError, match=r"the tables needs 40GiB of memory, but 4GiB is available \(use less\)"):
        require_memory(40 << 30, "the tables", hint="use less")


def test_require_disk_checks_the_nearest_existing_parent(tmp_path):
    require_disk(tmp_path / "not" / "yet", 1, "a dataset")
    with pytest.raises(CapacityError, match=f"a dataset needs 1024TiB of disk, but .* is free at {tmp_path}"):
        require_disk(tmp_path / "not" / "yet", 1 << 50, "a dataset")
