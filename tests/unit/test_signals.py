"""Signals to a real process: ``cancel_on_signals`` with a black-holed broker.

Every child here starts with SIGINT at Python's default handler (the apps set it first
thing: a shell starts background jobs with SIGINT ignored, and children inherit that),
is waited for with a hard timeout, and is killed in ``finally``.
"""

from __future__ import annotations

import signal
import sys
import time
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

from ..harness.children import APPS, Child, black_holed_broker


@pytest.fixture
def black_hole() -> Iterator[str]:
    with black_holed_broker() as bootstrap:
        yield bootstrap


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_second_signal_cuts_the_drain_short_and_hands_everything_back(
    black_hole: str, sig: signal.Signals
) -> None:
    count = 1_000
    app = [sys.executable, str(APPS / "drain_until_second_signal.py"), black_hole, str(count)]
    with Child(app) as child:
        child.wait_for(b"accepted=%d\n" % count, stream="out")
        child.signal(sig)
        child.wait_for(b"signal 1 %s\n" % sig.name.encode(), stream="out")
        time.sleep(1.0)
        assert child.proc.poll() is None, child.output()  # draining: up to close_timeout=30
        start = time.monotonic()
        child.signal(sig)
        code = child.wait(timeout=20)
        elapsed = time.monotonic() - start
    assert code == 0, child.output()  # a normal exit, not killed by the signal
    lines = child.out.decode().splitlines()
    assert lines[-1] == f"handed_back={count} accepted={count}", child.output()
    assert f"signal 2 {sig.name}" in lines
    assert elapsed < 3.0, child.output()
