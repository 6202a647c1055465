"""The ``trio-producer`` command line, for tests that signal it.

Usage: run_cli.py ARGS... (as ``python -m trio_producer ARGS...``)

SIGINT gets Python's default handler first: a shell starts background jobs with SIGINT
ignored, and a child inherits that; Trio only turns SIGINT into KeyboardInterrupt when
it has the default handler.
"""

from __future__ import annotations

import signal
import sys

signal.signal(signal.SIGINT, signal.default_int_handler)

from trio_producer.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
