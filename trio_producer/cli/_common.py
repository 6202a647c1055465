"""What every command shares: the program name, one-line errors, stderr lines."""

from __future__ import annotations

import signal
import sys
from typing import NoReturn

PROG = "trio-producer"


class CliError(Exception):
    """An error to print on one line, with an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str, code: int = 1) -> NoReturn:
    raise CliError(message, code)


def say(text: str) -> None:
    print(f"{PROG}: {text}", file=sys.stderr, flush=True)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name
