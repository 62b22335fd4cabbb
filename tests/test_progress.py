"""Progress when stdout is not a terminal: a plain line every PLAIN_INTERVAL_S seconds, silent for
short work and with --quiet."""

from __future__ import annotations

import pytest

from recstack import progress


@pytest.fixture
def clock(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(progress, "_clock", lambda: now[0])
    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 10.0)
    monkeypatch.setattr(progress, "_quiet", False)
    return now


def test_a_long_run_prints_plain_lines_when_stdout_is_not_a_terminal(clock, capsys):
    with progress.progress_bar("training", total=1000, status="") as bar:
        for step in range(100):  # 100 updates, 1 s apart: a line every 10 s
            clock[0] += 1.0
            bar.update(10, status=f"loss {0.5 - step / 1000:.3f}")
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 11  # ten while running, one at the end
    assert lines[0] == "training: 100/1,000 (10%), 10.0/s, elapsed 10s, ETA 1m30s, loss 0.491"
    assert lines[-1].startswith("training: 1,000/1,000 (100%)") and lines[-1].endswith("(done)")


def test_short_work_and_quiet_print_nothing(clock, capsys, monkeypatch):
    with progress.progress_bar("training", total=10) as bar:
        clock[0] += 3.0
        bar.update(10)
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(progress, "_quiet", True)
    with progress.progress_bar("training", total=10) as bar:
        clock[0] += 60.0
        bar.update(10)
    assert capsys.readouterr().out == ""
