"""The spool's confirmation rules: which delivery reports take a message out of the spool.

A spooled message carries its seq as its ``ticket`` (opaque to the core). A plain one
goes to librdkafka's batch call in a run of own-run messages with one shared report
callback, :class:`SpooledRun` (the delivery task's ``run_reports``); one with a stable
id header, headers, a partition, a timestamp or a ``send_and_wait`` waiter has its own
``TrackedReport`` carrying the ticket. After each pass over an epoch's reports the
delivery task calls :meth:`Confirmations.after_reports`, which confirms in the spool:

* every delivered message;
* while the producer runs, every failed one too (it was handed back to the application:
  the spool must not send it again);
* at the stop, only the delivered ones: purged messages stay in the spool for the next
  producer (and :class:`SpooledRun` keeps, of a run, those its failures match).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._client import Failure, failure_from_report

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .._batch import Pending
    from .._client import DeliveryReports, RunReports
    from .._exceptions import DeliveryError


class SpooledRun:
    """The report callback shared by a run of spooled messages handed to librdkafka's
    batch call together (each carries its spool seq as its ``ticket`` instead of a
    tracker of its own): a :class:`~trio_producer._client.RunReports`.

    On the poll thread it only counts, like :class:`DeliveryReports`, and keeps its
    failures. On the Trio thread, once every message of the run has a report,
    :class:`Confirmations` confirms the run in the spool (:meth:`confirmable`): every
    message while the producer runs (delivered, or failed and handed back), but at the
    stop only the delivered ones -- purged messages stay in the spool for the next
    producer. A failure report does not say which message of the run it is; it is
    matched to the run's messages by key and value, and when several messages of the run
    have that same key and value, none of them is confirmed (at least once: an identical
    one that was delivered may be sent again, never one that was not delivered dropped).

    Attributes:
        items: The run's messages, in the order they were produced.
        delivered: How many were delivered (poll thread).
        failures: Their failures, as they came (poll thread).
        seen: How many of ``failures`` the delivery task has looked at.
        kept: The failures that came while the producer was stopping.
    """

    __slots__ = ("delivered", "failures", "items", "kept", "reports", "seen")

    def __init__(self, reports: DeliveryReports) -> None:
        self.reports = reports
        self.items: list[Pending] = []
        self.delivered = 0
        self.failures: list[DeliveryError] = []
        self.seen = 0
        self.kept: list[DeliveryError] = []

    def __call__(self, err: object, msg: Any, /) -> None:
        if err is None:
            self.delivered += 1
            self.reports.delivered += 1
        else:
            error = failure_from_report(err, msg, None)
            self.failures.append(error)
            self.reports.failures.append(Failure(error, None))

    def confirmable(self) -> list[int]:
        """The seqs to confirm in the spool, once the run is settled (Trio thread)."""
        if not self.kept:
            return [item["ticket"] for item in self.items]
        kept = {(error.message.key, error.message.value) for error in self.kept}
        return [
            item["ticket"] for item in self.items if (item.get("key"), item["value"]) not in kept
        ]


class Confirmations:
    """The delivery task's ``after_reports`` hook with a spool: confirms what the rules
    above allow, through ``confirm`` (the keeper's).

    Args:
        confirm: Called with the seqs to confirm (Trio thread).
    """

    __slots__ = ("_confirm",)

    def __init__(self, confirm: Callable[[list[int]], None]) -> None:
        self._confirm = confirm

    def after_reports(
        self, reports: DeliveryReports, failures: Sequence[Failure], stopping: bool
    ) -> None:
        """Confirm what ``reports`` settled since the last call (Trio thread)."""
        # Always a fresh list: failed seqs appended below must not stay behind in
        # reports.tickets, to be confirmed again at the next pass.
        confirmed, reports.tickets = reports.tickets, []
        if not stopping:
            for failure in failures:
                owner = failure.tracked
                if owner is not None and owner.ticket >= 0:
                    # Handed back while running: out of the spool. (At the stop, purged
                    # spooled messages stay in the spool for the next producer.)
                    confirmed.append(owner.ticket)
        if reports.runs:
            open_runs: list[RunReports] = []
            for run in reports.runs:
                assert isinstance(run, SpooledRun)
                failed = len(run.failures)  # (the poll thread may append meanwhile)
                if stopping and run.seen < failed:
                    run.kept.extend(run.failures[run.seen : failed])
                run.seen = failed
                if run.delivered + failed >= len(run.items):
                    confirmed.extend(run.confirmable())
                else:
                    open_runs.append(run)
            reports.runs = open_runs
        if confirmed:
            self._confirm(confirmed)
