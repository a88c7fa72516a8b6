"""The README and CI agree: .ci/run runs exactly the README's two commands (without help from
NUMBA_CACHE_DIR), and every repository path the README or .ci/run mentions exists."""
from __future__ import annotations

import re

from tests.conftest import ROOT

README = ROOT / "README.md"
CI = ROOT / ".ci" / "run"
# what CI may run besides the README's commands: its own venv, pip upgrade, and the system browser
# the report tests drive (Debian's chromium and its driver, installed only where missing)
SETUP = ("set -euo pipefail", 'cd "$(dirname "$0")/.."', "python3 -m venv .ci-venv", ". .ci-venv/bin/activate",
         "python -m pip install -q --upgrade pip",
         "command -v chromium >/dev/null && command -v chromedriver >/dev/null || "
         "(apt-get update && apt-get install -y chromium chromium-driver)")


def readme_commands() -> list[str]:
    lines = README.read_text().splitlines()
    block = lines[lines.index("```bash") + 1:lines.index("```")]
    return [ln for ln in block if ln.strip() and not ln.lstrip().startswith("#")]


def ci_commands() -> list[str]:
    return [ln.strip() for ln in CI.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_ci_runs_exactly_the_readme_commands():
    """The README opens with two commands, and .ci/run runs those two, in that order, and nothing
    else but its venv setup: no NUMBA_CACHE_DIR or other variable that a user would not have."""
    cmds = readme_commands()
    assert len(cmds) == 2
    ci = ci_commands()
    assert [c for c in ci if c not in SETUP] == cmds, ci
    assert "NUMBA_CACHE_DIR" not in CI.read_text().replace("# No NUMBA_CACHE_DIR", "")


# a path into the repository: a top-level folder of it (or one a doc might invent), then more
_DIRS = "tamec|passes|runtime|tests|models|bench|notes|docs|\\.ci"
_PATH = re.compile(rf"(?<![\w./-])((?:{_DIRS})/[\w./-]*[\w/]|[\w-]+\.md)(?![\w/])")


def mentioned_paths(text: str) -> set[str]:
    return {m.group(1) for m in _PATH.finditer(text)}


def test_every_path_the_readme_mentions_exists():
    """Every repo path in README.md and .ci/run (`tamec/ops/rules.py`, `bench/accuracy.py`, `tests/...`,
    any `*.md`) names a file or folder of the repository: no dangling reference."""
    paths = mentioned_paths(README.read_text()) | mentioned_paths(CI.read_text())
    assert {"tamec/ops/rules.py", "bench/forward.py", "models/make_models.py"} <= paths  # the scan finds them
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"README.md or .ci/run mention {missing}, which do not exist"


def test_path_scan_finds_a_dangling_reference():
    """The scan is not vacuous: it picks out DESIGN.md, notes/x.md and tests/test_x.py from prose."""
    text = "see DESIGN.md's example (numbers in notes/train_bench.md; `tests/test_readme.py`), not X.npy"
    assert mentioned_paths(text) == {"DESIGN.md", "notes/train_bench.md", "tests/test_readme.py"}
