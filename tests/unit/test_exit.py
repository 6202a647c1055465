"""The exit decision, for every combination, without a broker.

body result x failures x fatal error x cancellation x KeyboardInterrupt x internal bug:
``decide`` must pick exactly one exception (or none), never hide an undelivered message,
and let ``KeyboardInterrupt`` out as itself.
"""

from __future__ import annotations

import itertools

import pytest
import trio

from trio_producer import (
    DeliveryError,
    KafkaErrorInfo,
    KafkaFatalError,
    Message,
    ProducerClosedError,
    UndeliveredMessagesError,
)
from trio_producer._exit import INTERNAL_ERROR, Ending, decide


def cancelled() -> trio.Cancelled:
    # Cancelled has no public constructor; this is what trio itself uses in tests.
    return trio.Cancelled._create(source="explicit")


def failure(i: int, name: str = "_PURGE_QUEUE") -> DeliveryError:
    return DeliveryError(Message("t", b"%d" % i), KafkaErrorInfo(-1, name, "x"))


FATAL = KafkaErrorInfo(-150, "_FENCED", "fenced", fatal=True)


class Boom(Exception):
    pass


def bodies() -> dict[str, BaseException | None]:
    return {
        "none": None,
        "own": Boom("body"),
        "own-in-group": BaseExceptionGroup("g", [Boom("body"), cancelled()]),
        "cancelled": cancelled(),
        "cancelled-group": BaseExceptionGroup("g", [cancelled(), cancelled()]),
        "ki": KeyboardInterrupt(),
        "ki-group": BaseExceptionGroup("g", [KeyboardInterrupt(), cancelled()]),
        "secondary": ProducerClosedError("failed", producer_failed=True),
        "secondary-group": BaseExceptionGroup(
            "g", [ProducerClosedError("failed", producer_failed=True), cancelled()]
        ),
        "closed-plain": ProducerClosedError("closed"),
    }


FAILURES = {"none": 0, "one": 1, "three": 3}
INTERNALS = ["none", "bug", "ki", "cancelled"]


def make_internal(kind: str) -> BaseException | None:
    if kind == "bug":
        return BaseExceptionGroup("n", [RuntimeError("bug")])
    if kind == "ki":
        return BaseExceptionGroup("n", [KeyboardInterrupt()])
    if kind == "cancelled":
        return BaseExceptionGroup("n", [cancelled()])
    return None


CASES = list(
    itertools.product(
        list(bodies()),
        list(FAILURES),
        [False, True],  # the first failure failed the producer (no hook)
        [False, True],  # fatal
        [False, True],  # the drain was interrupted by KeyboardInterrupt
        INTERNALS,
    )
)


@pytest.mark.parametrize(("body", "nfail", "failed_by", "fatal", "interrupt", "internal"), CASES)
def test_every_combination_keeps_the_promise(
    body: str, nfail: str, failed_by: bool, fatal: bool, interrupt: bool, internal: str
) -> None:
    body_exc = bodies()[body]
    failures = [failure(i) for i in range(FAILURES[nfail])]
    ki = KeyboardInterrupt() if interrupt else None
    ending = Ending(
        body=body_exc,
        interrupt=ki,
        internal=make_internal(internal),
        failures=failures,
        failed_by=failures[0] if failed_by and failures else None,
        fatal=FATAL if fatal else None,
    )
    verdict = decide(ending)
    exc = verdict.raise_

    # KeyboardInterrupt, wherever it was, leaves as itself.
    any_ki = body in ("ki", "ki-group") or interrupt or internal == "ki"
    if any_ki:
        assert type(exc) is KeyboardInterrupt
        if body in ("ki", "ki-group"):
            leaf = body_exc.exceptions[0] if isinstance(body_exc, BaseExceptionGroup) else body_exc
            assert exc is leaf
        elif interrupt:
            assert exc is ki
    elif body in ("own", "own-in-group", "closed-plain") or (
        body in ("secondary", "secondary-group") and not (fatal or ending.failed_by)
    ):
        # The body's own exception wins, untouched (a ProducerClosedError is secondary
        # only when the producer really failed).
        assert exc is body_exc
    elif internal == "bug":
        assert isinstance(exc, UndeliveredMessagesError)
        assert INTERNAL_ERROR in str(exc)
        assert isinstance(exc.__cause__, RuntimeError)
        assert exc.failures == tuple(failures)
    elif fatal:
        assert isinstance(exc, KafkaFatalError)
        assert exc.failures == tuple(failures)
    elif failures:
        if failed_by and len(failures) == 1:
            assert exc is failures[0]
        else:
            assert isinstance(exc, UndeliveredMessagesError)
            assert exc.failures == tuple(failures)
    else:
        assert exc is body_exc  # None, or the cancellation going on untouched

    # Every undelivered message is handed back exactly once: in the producer's own
    # exception, or in Producer.undelivered (with a note) when another exception won.
    carried = tuple(getattr(exc, "failures", ()))
    if isinstance(exc, DeliveryError):
        carried = (exc,)
    if failures:
        if carried:
            assert carried == tuple(failures)
            assert verdict.undelivered in ((), tuple(failures))
        else:
            assert verdict.undelivered == tuple(failures)
            assert any("were not delivered" in note for note in verdict.notes)
            assert verdict.log_error


def test_secondary_closed_error_gives_way_to_the_failure_that_caused_it() -> None:
    root = failure(0, "_UNKNOWN_PARTITION")
    body = ProducerClosedError("the producer failed", producer_failed=True)
    verdict = decide(Ending(body=body, failures=[root], failed_by=root))
    assert verdict.raise_ is root
    assert root.__context__ is body


def test_cancellation_does_not_swallow_undelivered_messages() -> None:
    lost = [failure(i) for i in range(3)]
    verdict = decide(Ending(body=BaseExceptionGroup("g", [cancelled()]), failures=lost))
    assert isinstance(verdict.raise_, UndeliveredMessagesError)
    assert verdict.raise_.messages == tuple(f.message for f in lost)


def test_cut_short_says_why() -> None:
    verdict = decide(Ending(failures=[failure(0)], cut_short="received SIGTERM a second time"))
    assert str(verdict.raise_) == (
        "1 accepted message(s) were not delivered (the drain was cut short: received "
        "SIGTERM a second time): _PURGE_QUEUE x1"
    )


def test_unknown_reports_are_counted() -> None:
    verdict = decide(Ending(unknown=2))
    assert str(verdict.raise_) == (
        "0 accepted message(s) were not delivered "
        "(and 2 more with no delivery report after the purge)"
    )


def test_a_fatal_error_says_what_the_spool_keeps() -> None:
    # A zombie fenced by another producer: KafkaFatalError, and what its spool keeps.
    verdict = decide(Ending(fatal=FATAL, kept=120, spool_path="/var/spool/a"))
    assert isinstance(verdict.raise_, KafkaFatalError)
    assert verdict.raise_.__notes__ == [
        "trio_producer: 120 accepted message(s) never left the spool; those and the purged "
        "ones are kept in the spool '/var/spool/a' for the next producer"
    ]
    # Without a spool (or nothing kept) there is nothing to say.
    assert not hasattr(decide(Ending(fatal=FATAL)).raise_, "__notes__")
    assert not hasattr(decide(Ending(fatal=FATAL, spool_path="/s")).raise_, "__notes__")
