"""The README's Quick start and its test example, run as written (so they cannot drift).

Each block follows a ``<!-- quickstart: NAME -->`` marker in README.md: ``app.py``,
``conftest.py`` and ``test_partners.py`` are written into an empty folder, and the
``shell`` block's commands run there in order (``pip install`` aside: this
environment has the package already), then pytest runs the extracted test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"<!-- quickstart: (\S+) -->\n```\w*\n(.*?)```", re.S)
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def quickstart_blocks() -> dict[str, str]:
    return dict(BLOCK.findall(README.read_text()))


def test_the_readme_marks_every_quickstart_block():
    assert set(quickstart_blocks()) == {"app.py", "shell", "conftest.py", "test_partners.py"}


def test_the_quickstart_and_its_test_work_as_written(tmp_path):
    blocks = quickstart_blocks()
    folder = tmp_path / "host"
    folder.mkdir()
    for name in ("app.py", "conftest.py", "test_partners.py"):
        (folder / name).write_text(blocks[name])
    commands = [line[2:] for line in blocks["shell"].splitlines() if line.startswith("$ ")]
    assert commands[0].startswith("pip install ")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("FLASK_", "PYTEST_", "SQLALCHEMY", "PARTNERSTACK_"))
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    script = "set -e\n" + "\n".join(commands[1:]) + "\npytest -q -p no:cacheprovider\n"
    result = subprocess.run(
        ["bash", "-c", script], cwd=folder, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The Quick start leaves LIVEMODE unset: right for trying it, and check says so.
    assert (
        "Everything a production install needs is in place, once "
        "PARTNERSTACK_STRIPE_LIVEMODE = True there (mode, above)." in result.stdout
    )
    assert "1 passed" in result.stdout
    assert (folder / "migrations" / "versions").is_dir()
