"""What the README's own commands write into the checkout (datasets, checkpoints, reports, outputs)
is ignored by git, so following the README leaves `git status` clean."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.conftest import REPO

OUTPUT_OPTIONS = ("--out", "--checkpoint-dir", "--output", "--report", "--plan")


def readme_outputs() -> list[str]:
    text = (REPO / "README.md").read_text()
    blocks = "\n".join(re.findall(r"```bash\n(.*?)```", text, flags=re.S))
    paths = set()
    for option in OUTPUT_OPTIONS:
        for value in re.findall(rf"(?<!\S){option}[ =]([^\s\\]+)", blocks):
            if not value.startswith(("/", "$", "..", "-")):
                paths.add(value)
    return sorted(paths)


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="not a git checkout")
def test_what_the_readme_commands_write_is_ignored_by_git():
    paths = readme_outputs()
    assert {"ckpt", "data/criteo-sample", "runs/kaggle.json"} <= set(paths), paths
    proc = subprocess.run(["git", "check-ignore", "--no-index", "--verbose", "--non-matching", *paths], cwd=REPO,
                          capture_output=True, text=True)
    not_ignored = [line.split("\t")[-1] for line in proc.stdout.splitlines() if line.startswith("::")]
    assert not not_ignored, f"README outputs that git would show: {not_ignored}"


def test_the_quickstart_says_where_the_command_is_and_how_long_the_tests_take():
    quickstart = (REPO / "README.md").read_text().split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    assert ".venv/bin/recstack" in quickstart and "source .venv/bin/activate" in quickstart
    assert "`make test`" in quickstart and "minutes" in quickstart.split("`make test`", 1)[1][:200]


def test_the_load_generators_rules_are_documented_where_users_read():
    """README "Load testing" and docs/SERVING.md state what loadgen refuses, from the code's own tables."""
    from recstack.serve.loadgen_cli import SCENARIO_OPTIONS
    from recstack.serve.workload import MAX_QUERIES

    readme = (REPO / "README.md").read_text().split("## Load testing", 1)[1].split("\n## ", 1)[0]
    serving = (REPO / "docs" / "SERVING.md").read_text().split("### The load generator's rules", 1)[1]
    for text in (readme, serving):
        flat = " ".join(text.split())
        assert "mutually exclusive" in flat and f"{MAX_QUERIES:.0e}".replace("+0", "") in flat
        assert "--offload-threshold Q > 0" in flat
        for option, scenarios in SCENARIO_OPTIONS.items():
            flag = f"`--{option.replace('_', '-')}`"
            assert flag in flat, flag
            assert f"({', '.join(scenarios)})" in flat.split(flag, 1)[1] or all(
                s in flat.split(flag, 1)[1][:120] for s in scenarios), (flag, scenarios)
