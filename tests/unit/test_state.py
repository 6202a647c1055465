"""The state machines' tables: every allowed move works, every other one raises at once."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import pytest

from trio_producer import _state, _transaction
from trio_producer._batch import Batch
from trio_producer._state import PHASE_TRANSITIONS, IllegalTransition, Phase, ProducerState
from trio_producer._transaction import (
    TRANSACTION_TRANSITIONS,
    Transactions,
    TransactionState,
)
from trio_producer._worker import BatchChannel

ALL_PHASES = [(old, new) for old in Phase for new in Phase]
ALL_TXN = [(old, new) for old in TransactionState for new in TransactionState]


def _docstring_table(doc: str) -> dict[str, set[str]]:
    """The ``FROM → TO, TO`` lines of a module docstring's transition table."""
    table: dict[str, set[str]] = {}
    for old, targets in re.findall(r"^ {4}([A-Z_]+) +→ (.+)$", doc, re.MULTILINE):
        table[old] = set() if targets == "(none)" else set(targets.split(", "))
    return table


def test_the_phase_table_is_the_one_at_the_top_of_its_module() -> None:
    assert _state.__doc__ is not None
    assert _docstring_table(_state.__doc__) == {
        old.name: {new.name for new in targets} for old, targets in PHASE_TRANSITIONS.items()
    }
    assert PHASE_TRANSITIONS == {
        Phase.OPEN: {Phase.DRAINING, Phase.STOPPED},
        Phase.DRAINING: {Phase.CUT_SHORT, Phase.STOPPED},
        Phase.CUT_SHORT: {Phase.STOPPED},
        Phase.STOPPED: {Phase.FINISHED},
        Phase.FINISHED: set(),
    }


def test_the_transaction_table_is_the_one_at_the_top_of_its_module() -> None:
    assert _transaction.__doc__ is not None
    assert _docstring_table(_transaction.__doc__) == {
        old.name: {new.name for new in targets} for old, targets in TRANSACTION_TRANSITIONS.items()
    }
    s = TransactionState
    assert TRANSACTION_TRANSITIONS == {
        s.NONE: set(),
        s.MANAGED: set(),
        s.READY: {s.IN_TRANSACTION},
        s.IN_TRANSACTION: {s.COMMITTING, s.ABORTING},
        s.COMMITTING: {s.READY, s.ABORTING},
        s.ABORTING: {s.READY},
    }


def _state_at(phase: Phase) -> ProducerState:
    state = ProducerState(None, BatchChannel(Batch(10, 10**6, 10), 0.0))
    path = {
        Phase.OPEN: [],
        Phase.DRAINING: [state.begin_drain],
        Phase.CUT_SHORT: [state.begin_drain, state.cut_short],
        Phase.STOPPED: [state.begin_drain, state.stop],
        Phase.FINISHED: [state.begin_drain, state.stop, state.finish],
    }[phase]
    for move in path:
        move()
    assert state.phase is phase
    return state


def _move_to(state: ProducerState, new: Phase) -> None:
    """The method that moves to ``new`` (OPEN has none: nothing moves back to it)."""
    if new is Phase.OPEN:
        state._move(new)
    else:
        {
            Phase.DRAINING: state.begin_drain,
            Phase.CUT_SHORT: state.cut_short,
            Phase.STOPPED: state.stop,
            Phase.FINISHED: state.finish,
        }[new]()


@pytest.mark.parametrize(("old", "new"), ALL_PHASES, ids=lambda p: p.name)
def test_a_phase_moves_only_along_its_table(old: Phase, new: Phase) -> None:
    state = _state_at(old)
    if new in PHASE_TRANSITIONS[old]:
        _move_to(state, new)
        assert state.phase is new
    else:
        with pytest.raises(IllegalTransition) as info:
            _move_to(state, new)
        assert str(info.value) == (
            "internal error in trio_producer, please report it: the producer's phase "
            f"cannot move from {old.name} to {new.name}"
        )
        assert state.phase is old


def test_what_the_phases_mean_for_a_failure_and_a_send() -> None:
    # The phase is the one owner: stopping (failures handed back at the exit, not to
    # the hook) from CUT_SHORT on; the drain closes the channel.
    assert [_state_at(p).stopping for p in Phase] == [False, False, True, True, True]
    assert [_state_at(p).channel.closed for p in Phase] == [False, True, True, True, True]
    finished = _state_at(Phase.FINISHED)
    assert finished.adopt_failure(None) is False  # type: ignore[arg-type]  # never routed


def _transactions(transactional: bool) -> tuple[Transactions, list[bool]]:
    tracker: Any = SimpleNamespace(client=SimpleNamespace(transactional=transactional))
    needs: list[bool] = []

    channel = BatchChannel(Batch(10, 10**6, 10), 0.0)
    txn = Transactions(tracker, channel, ProducerState(None, channel), needs.append, 1.0)
    return txn, needs


@pytest.mark.parametrize(("old", "new"), ALL_TXN, ids=lambda s: s.name)
def test_a_transaction_state_moves_only_along_its_table(
    old: TransactionState, new: TransactionState
) -> None:
    txn, needs = _transactions(old is not TransactionState.NONE)
    assert needs == [old is not TransactionState.NONE]
    txn.state = old
    if new in TRANSACTION_TRANSITIONS[old]:
        txn._move(new)
        assert txn.state is new
        # The send methods' one-attribute check follows the state: refused only when READY.
        assert needs[-1] is (new is TransactionState.READY)
        # Where the failures of an aborting transaction go: a list exactly while ABORTING.
        aborting = txn._producer_state.transaction_failures is not None
        assert aborting is (new is TransactionState.ABORTING)
    else:
        with pytest.raises(IllegalTransition) as info:
            txn._move(new)
        assert str(info.value) == (
            "internal error in trio_producer, please report it: the transaction state "
            f"cannot move from {old.name} to {new.name}"
        )
        assert txn.state is old
        assert len(needs) == 1
