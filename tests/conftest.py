from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio

from trio_producer.testing import ConsumedRecord, consume_all

ReadBack = Callable[..., Awaitable[list[ConsumedRecord]]]


@pytest.fixture
def read_back(kafka_bootstrap: str) -> ReadBack:
    """Read a topic back with a real consumer (explicit partition assignment)."""

    async def read(
        topic: str, expected: int | None = None, **kwargs: object
    ) -> list[ConsumedRecord]:
        fn = partial(consume_all, kafka_bootstrap, topic, expected=expected, **kwargs)
        return await trio.to_thread.run_sync(fn)

    return read
