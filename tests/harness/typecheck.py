"""Run ``mypy --strict`` on a snippet that uses trio_producer (the typing tests)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def mypy_strict(source: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``mypy --strict`` on ``source`` written to ``tmp_path/snippet.py`` (shared cache)."""
    snippet = tmp_path / "snippet.py"
    snippet.write_text(source)
    cache = Path(tempfile.gettempdir()) / "trio-producer-mypy-test-cache"
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(cache), str(snippet)],
        env={**os.environ, "MYPYPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
