"""`recstack bench dist --vs torchrec` without TorchRec: one line, non-zero exit, nothing run."""

from __future__ import annotations

import sys

from recstack.cli import main


def test_vs_torchrec_without_torchrec_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "torchrec", None)  # import torchrec fails, installed or not
    report = tmp_path / "r.json"
    code = main(["bench", "dist", "--preset", "tiny", "--vs", "torchrec", "--report", str(report)])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1, err
    assert "--vs torchrec needs TorchRec" in err and "torchrec==1.8.0 --no-deps" in err
    assert not report.exists()
