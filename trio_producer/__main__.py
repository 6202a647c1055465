"""``python -m trio_producer``: the command line."""

import sys

from .cli import main

sys.exit(main())
