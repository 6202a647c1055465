"""A Trio app for the real-signal interrupt test: produces unique payloads until it is
interrupted (by a SIGINT from the parent) or done, then writes a JSON report.

Usage: interrupt_child.py BOOTSTRAP TOPIC PREFIX REPORT_PATH [COUNT] [CLOSE_TIMEOUT] [DUMP_AFTER]

``linger`` is 3600 s, so every message leaves in the final drain; the body sends COUNT
messages (default 600) with a short sleep every 20, so it lasts about 0.6 s. The report:
``{"books" (the ledger's, see tests/harness/accounting.py), "exit", "exit_detail",
"block_exit_detail", "traceback", "t_opened", "t_body_left", "t_block_exit", "t_end"}`` (times are
``time.time()``, comparable with the parent's clock). ``exit`` is ``"normal"``, or the
name of the exception type that left ``trio.run``. If the run still goes on DUMP_AFTER
seconds after the start (default 10), the Trio task tree is printed on stderr: a hang
then shows where each task waits.

The parent must put the checkout under test first on PYTHONPATH (a script's own
directory, not the current one, is first on sys.path).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
import traceback
from typing import Any

# A child started from a background shell inherits SIGINT ignored: Trio would then not
# install its handler, and Ctrl-C would do nothing. Reset it first of all.
signal.signal(signal.SIGINT, signal.default_int_handler)

import trio  # noqa: E402

from tests.harness.accounting import Ledger  # noqa: E402
from trio_producer import Producer, open_producer  # noqa: E402

BOOTSTRAP, TOPIC, PREFIX, REPORT = sys.argv[1:5]
COUNT = int(sys.argv[5]) if len(sys.argv) > 5 else 600
CLOSE_TIMEOUT = float(sys.argv[6]) if len(sys.argv) > 6 else 2.0
DUMP_AFTER = float(sys.argv[7]) if len(sys.argv) > 7 else 10.0

ledger = Ledger(PREFIX)
times: dict[str, float | None] = {"t_opened": None, "t_body_left": None, "t_block_exit": None}
holder: list[Producer] = []
block_exc: list[BaseException] = []  # what left the async with block


def describe(exc: BaseException | None) -> str:
    if exc is None:
        return "normal exit"
    if isinstance(exc, BaseExceptionGroup):
        text = f"{type(exc).__name__}[{', '.join(describe(e) for e in exc.exceptions)}]"
    else:
        text = type(exc).__name__
    if exc.__cause__ is not None:
        text += f" (from {describe(exc.__cause__)})"
    return text


def dump_tasks() -> None:
    """On the Trio thread: print every task and where it waits."""
    lines = ["=== interrupt_child: still running; Trio tasks:"]
    root = trio.lowlevel.current_root_task()
    assert root is not None
    todo = [(root, 0)]
    while todo:
        task, depth = todo.pop()
        frames = " > ".join(f"{f.f_code.co_qualname}:{n}" for f, n in task.iter_await_frames())
        lines.append(f"{'  ' * depth}{task.name}: {frames}")
        todo.extend((t, depth + 1) for n in task.child_nurseries for t in n.child_tasks)
    print("\n".join(lines), file=sys.stderr, flush=True)


def watchdog(token: trio.lowlevel.TrioToken) -> None:
    time.sleep(DUMP_AFTER)
    try:
        token.run_sync_soon(dump_tasks)
    except trio.RunFinishedError:
        pass


async def main() -> None:
    token = trio.lowlevel.current_trio_token()
    threading.Thread(target=watchdog, args=(token,), daemon=True).start()
    try:
        async with open_producer(
            bootstrap_servers=BOOTSTRAP, linger=3600, close_timeout=CLOSE_TIMEOUT
        ) as producer:
            holder.append(producer)
            times["t_opened"] = time.time()
            print("producing", flush=True)
            try:
                for i in range(COUNT):
                    await ledger.send(producer, TOPIC)
                    if i % 20 == 19:
                        await trio.sleep(0.02)
            finally:
                times["t_body_left"] = time.time()
    except BaseException as exc:
        block_exc.append(exc)
        raise
    finally:
        times["t_block_exit"] = time.time()


exc: BaseException | None = None
try:
    try:
        trio.run(main)
    except BaseException as caught:  # what left trio.run is the subject of the report
        exc = caught
    finally:
        # A late SIGINT must not interrupt the report.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
except KeyboardInterrupt as late:  # landed between trio.run and the line above
    exc = exc or late

# each object once: the block's exception is often also what left trio.run
for source in [*holder, *block_exc, exc]:
    ledger.collect(source)
report: dict[str, Any] = {
    "books": ledger.books(),
    "exit": "normal" if exc is None else type(exc).__name__,
    "exit_detail": describe(exc),
    "block_exit_detail": describe(block_exc[0] if block_exc else None),
    "traceback": "".join(traceback.format_exception(exc)) if exc is not None else "",
    "t_end": time.time(),
    **times,
}
with open(REPORT, "w") as f:
    json.dump(report, f)
