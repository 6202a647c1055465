"""The ``trio-producer`` command line: produce from stdin, consume to stdout, a
self-checking demo, a broker.

``main`` is the console script. The commands are built only once ``click`` is known to be
installed (it comes with the ``cli`` extra):

* ``produce.py`` -- the ``produce`` command and its run; ``_lines.py`` (line formats,
  the reader, the inputs), ``_shutdown.py`` (signals and the drain), ``_report.py``
  (the lines not delivered, the summary);
* ``consume.py`` -- the ``consume`` command (kcat -C);
* ``demo.py``, ``broker.py`` -- the other commands;
* ``_options.py`` (``-b``, ``-X``, ``-F``, ``--property``), ``_logging.py`` (stderr),
  ``_common.py`` (one-line errors).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from .._exceptions import TrioProducerError
from ._common import PROG, CliError
from ._logging import set_verbosity, setup_logging

if TYPE_CHECKING:
    from collections.abc import Sequence

    import click as click_types

__all__ = ["main"]


def _build() -> click_types.Group:
    import click

    from . import broker, consume, demo, produce

    @click.group(context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(None, "--version", "-V", package_name="trio-producer", prog_name=PROG)
    @click.option("-v", "--verbose", count=True, help="Log librdkafka's warnings (-vv: more).")
    def cli(verbose: int) -> None:
        """A Kafka producer for Trio, on the command line."""
        set_verbosity(verbose)

    cli.add_command(produce.command())
    cli.add_command(consume.command())
    cli.add_command(demo.demo)
    cli.add_command(broker.broker)
    return cli


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trio-producer`` console script."""
    setup_logging()
    try:
        import click
    except ImportError:
        print(
            f"{PROG}: the command line needs extras: pip install 'trio-producer[cli]'",
            file=sys.stderr,
        )
        return 2
    cli = _build()
    try:
        cli.main(
            args=list(argv) if argv is not None else None, prog_name=PROG, standalone_mode=False
        )
    except click.exceptions.NoArgsIsHelpError as exc:  # pragma: no cover - depends on click
        print(exc.format_message() if hasattr(exc, "format_message") else exc, file=sys.stderr)
        return 2
    except click.UsageError as exc:
        print(f"{PROG}: error: {exc.format_message()}", file=sys.stderr)
        return 2
    except click.Abort:
        print(f"{PROG}: aborted", file=sys.stderr)
        return 130
    except CliError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.code
    except TrioProducerError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except Exception as exc:  # one line, no traceback, for anything the broker/OS raises
        print(f"{PROG}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0
