"""The command line's log lines on stderr, and what they tell the final error line."""

from __future__ import annotations

import logging
import sys

from .._logging import DeduplicateFilter
from ._common import PROG


class _ErrorNames(logging.Handler):
    """Remembers which librdkafka errors were reported, to name the problem at the end."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.names: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text.startswith("librdkafka error: "):
            self.names.add(text.split(":", 2)[1].strip())


_stderr_handler = logging.StreamHandler(sys.stderr)
_error_names = _ErrorNames()
_connectivity_handler = logging.StreamHandler(sys.stderr)


def _is_connectivity(record: logging.LogRecord) -> bool:
    return record.name == "trio_producer" and record.getMessage().startswith(
        "the Kafka cluster at "
    )


def setup_logging() -> None:
    """Log lines on stderr: errors only, unless ``-v`` (warnings) or ``-vv`` (info)."""
    _stderr_handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    _stderr_handler.addFilter(DeduplicateFilter())  # librdkafka repeats itself; bounded
    _stderr_handler.addFilter(lambda record: not _is_connectivity(record))
    _stderr_handler.setLevel(logging.ERROR)
    # The cluster becoming unreachable (and coming back) is said at once, at any -v.
    _connectivity_handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    _connectivity_handler.addFilter(_is_connectivity)
    root = logging.getLogger("trio_producer")
    root.addHandler(_stderr_handler)
    root.addHandler(_connectivity_handler)
    root.addHandler(_error_names)
    root.setLevel(logging.INFO)
    root.propagate = False
    # librdkafka's connection failures are also reported through error_cb; keep one copy.
    logging.getLogger("trio_producer.librdkafka").setLevel(logging.CRITICAL)


def set_verbosity(verbose: int) -> None:
    """``-v``: librdkafka's warnings too; ``-vv``: more."""
    if verbose:
        _stderr_handler.setLevel(logging.WARNING if verbose == 1 else logging.INFO)


def unreachable_hint(bootstrap: str) -> str:
    if _error_names.names & {"_ALL_BROKERS_DOWN", "_TRANSPORT", "_RESOLVE"}:
        return f"could not reach the broker at {bootstrap}; "
    return ""
