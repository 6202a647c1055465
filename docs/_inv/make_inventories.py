"""Write the intersphinx inventories in this folder: ``python3 docs/_inv/make_inventories.py``.

The docs are built where there is no network, so intersphinx cannot download
``objects.inv`` from docs.python.org and trio.readthedocs.io. These two small inventories
name the objects that our pages and docstrings refer to, with their real addresses in
those sites; Sphinx reads them instead (see ``intersphinx_mapping`` in ``docs/conf.py``).
Add a line below when a page refers to another Python or Trio object, then run this.
"""

from __future__ import annotations

import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (name, role, page): the anchor is the name itself (module-NAME for a module), as there.
PYTHON = [
    *[
        (name, "py:exception", "library/exceptions.html")
        for name in (
            "BaseException",
            "BaseExceptionGroup",
            "Exception",
            "ExceptionGroup",
            "KeyboardInterrupt",
            "OSError",
            "RuntimeError",
            "TimeoutError",
            "TypeError",
            "ValueError",
        )
    ],
    *[
        (name, "py:class", "library/stdtypes.html")
        for name in ("bytes", "bytearray", "memoryview", "str", "dict", "list", "tuple")
    ],
    *[(name, "py:class", "library/functions.html") for name in ("int", "float", "bool", "object")],
    ("None", "py:data", "library/constants.html"),
    *[
        (f"collections.abc.{name}", "py:class", "library/collections.abc.html")
        for name in (
            "AsyncIterable",
            "AsyncIterator",
            "Awaitable",
            "Callable",
            "Iterable",
            "Iterator",
            "Mapping",
            "Sequence",
        )
    ],
    ("typing.Any", "py:data", "library/typing.html"),
    ("contextlib.asynccontextmanager", "py:function", "library/contextlib.html"),
    ("signal.SIGINT", "py:data", "library/signal.html"),
    ("signal.SIGTERM", "py:data", "library/signal.html"),
    ("logging.Logger", "py:class", "library/logging.html"),
    ("asyncio", "py:module", "library/asyncio.html"),
]

TRIO = [
    ("trio", "py:module", "reference-core.html"),
    *[
        (f"trio.{name}", "py:function", "reference-core.html")
        for name in (
            "run",
            "sleep",
            "open_nursery",
            "move_on_after",
            "move_on_at",
            "fail_after",
            "fail_at",
            "open_memory_channel",
            "to_thread.run_sync",
            "from_thread.run",
            "from_thread.run_sync",
        )
    ],
    *[
        (f"trio.{name}", "py:class", "reference-core.html")
        for name in ("CancelScope", "Nursery", "Event", "MemorySendChannel")
    ],
    *[
        (f"trio.{name}", "py:exception", "reference-core.html")
        for name in (
            "Cancelled",
            "WouldBlock",
            "TooSlowError",
            "ClosedResourceError",
            "BrokenResourceError",
            "EndOfChannel",
        )
    ],
    ("trio.testing.MockClock", "py:class", "reference-testing.html"),
    ("trio.testing.wait_all_tasks_blocked", "py:function", "reference-testing.html"),
    ("trio.lowlevel.checkpoint", "py:function", "reference-lowlevel.html"),
    ("trio.lowlevel.enable_ki_protection", "py:function", "reference-lowlevel.html"),
]


def write(path: Path, project: str, version: str, entries: list[tuple[str, str, str]]) -> None:
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    lines = []
    for name, role, page in sorted(entries):
        anchor = f"module-{name}" if role == "py:module" else "$"
        lines.append(f"{name} {role} 1 {page}#{anchor} -\n")
    body = "".join(lines)
    path.write_bytes(header.encode() + zlib.compress(body.encode()))


def main() -> None:
    write(HERE / "python.inv", "Python", "3", PYTHON)
    write(HERE / "trio.inv", "Trio", "stable", TRIO)


if __name__ == "__main__":
    main()
