"""pytest plugin (entry point ``trio_producer``): broker fixtures."""

from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING

import pytest

from .._admin import create_topics
from .._embedded import BOOTSTRAP_ENV, EmbeddedBroker

if TYPE_CHECKING:
    from collections.abc import Iterator

_topic_numbers = itertools.count()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``host:port`` of a Kafka-compatible broker for the whole session.

    The embedded Tansu broker, or the broker named by ``TRIO_PRODUCER_TEST_BOOTSTRAP``.
    """
    external = os.environ.get(BOOTSTRAP_ENV)
    if external:
        yield external
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers


@pytest.fixture
def kafka_topic(kafka_bootstrap: str, request: pytest.FixtureRequest) -> str:
    """A new, empty topic with one partition, named after the test."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:80]
    topic = f"{base}-{os.getpid()}-{next(_topic_numbers)}"
    create_topics(kafka_bootstrap, [topic], partitions=1)
    return topic
