"""The durable spool (``spool_path``): accepted means written to disk.

A subpackage behind one entry point. :func:`open_producer` calls :func:`open_spooled`
and gets the spool's parts for the core (an intake, the worker's source, the delivery
task's report hooks); nothing outside this package knows the spool's sequence numbers,
its runs or its confirmation rules.

Modules:

* ``_format``: the on-disk format (records, segment headers and seals, ack logs, the
  hand-off mark): encoded and parsed there and nowhere else.
* ``_engine``: :class:`Spool`, the storage engine (sans-Trio): segments in shared file
  mappings, appends, confirmations, sync and maintenance.
* ``_keeper``: the keeper task (confirmations, fsync and maintenance in a thread) and
  the recovered messages.
* ``_intake``: the intake that writes a message to the spool before accepting it.
"""

from __future__ import annotations

from ._engine import SpoolDiskFullError as SpoolDiskFullError
from ._engine import SpoolError as SpoolError
from ._engine import SpoolLockedError as SpoolLockedError

__all__ = ["SpoolDiskFullError", "SpoolError", "SpoolLockedError"]
