"""Small helpers shared by several test files (one copy each)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trio_producer._batch import Pending


def item(i: int) -> Pending:
    """A pending message to topic ``t`` whose value is ``i`` as text."""
    return {"topic": "t", "value": str(i).encode()}


def rss_mb(*, anon: bool = False) -> float:
    """This process's resident memory in MiB (Linux, ``/proc/self/status``).

    ``anon=False``: all of it (``VmRSS``, what ``/proc/self/statm`` calls resident).
    ``anon=True``: anonymous memory only (``RssAnon``, the heap): file mappings such as
    the spool's segments are page cache that counts in RSS as they fill, but they are
    not the producer's memory.
    """
    field = "RssAnon:" if anon else "VmRSS:"
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/self/status")
