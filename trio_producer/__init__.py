"""trio_producer: a Kafka producer for Trio applications.

A message that ``send`` accepted is delivered, or handed back to the application in an
exception -- on normal exit, on an exception, on cancellation, on Ctrl-C, on a dead
network. See :func:`open_producer`.
"""

from ._config import ProducerConfig as ProducerConfig
from ._config import ProducerFields as ProducerFields
from ._exceptions import ConfigError as ConfigError
from ._exceptions import DeliveryError as DeliveryError
from ._exceptions import KafkaFatalError as KafkaFatalError
from ._exceptions import ProducerClosedError as ProducerClosedError
from ._exceptions import SerializationError as SerializationError
from ._exceptions import TransactionError as TransactionError
from ._exceptions import TrioProducerError as TrioProducerError
from ._exceptions import UndeliveredMessagesError as UndeliveredMessagesError
from ._hooks import KafkaStatistics as KafkaStatistics
from ._hooks import OAuthToken as OAuthToken
from ._lifecycle import open_producer as open_producer
from ._message import KafkaErrorInfo as KafkaErrorInfo
from ._message import Message as Message
from ._message import ProducerStatistics as ProducerStatistics
from ._message import RecordMetadata as RecordMetadata
from ._producer import Producer as Producer
from ._producer import SpooledProducer as SpooledProducer
from ._signals import cancel_on_signals as cancel_on_signals
from ._undelivered import undelivered_failures as undelivered_failures
from ._undelivered import undelivered_messages as undelivered_messages
from .spool import SpoolDiskFullError as SpoolDiskFullError
from .spool import SpoolError as SpoolError
from .spool import SpoolLockedError as SpoolLockedError

__version__ = "0.1.0"


def _fix_module_names() -> None:
    # As trio does: tracebacks show `trio_producer.DeliveryError`, not the private module
    # it is defined in. Exceptions and functions only: typing.get_type_hints() resolves a
    # class's annotations in the module its __module__ names, so the attrs records keep
    # theirs (their reprs show the bare class name anyway).
    for name in __all__:
        obj = globals()[name]
        exception = isinstance(obj, type) and issubclass(obj, BaseException)
        function = callable(obj) and not isinstance(obj, type)
        if (exception or function) and obj.__module__.startswith("trio_producer."):
            obj.__module__ = "trio_producer"


__all__ = [
    "ConfigError",
    "DeliveryError",
    "KafkaErrorInfo",
    "KafkaFatalError",
    "KafkaStatistics",
    "Message",
    "OAuthToken",
    "Producer",
    "ProducerClosedError",
    "ProducerConfig",
    "ProducerFields",
    "ProducerStatistics",
    "RecordMetadata",
    "SerializationError",
    "SpoolDiskFullError",
    "SpoolError",
    "SpoolLockedError",
    "SpooledProducer",
    "TransactionError",
    "TrioProducerError",
    "UndeliveredMessagesError",
    "cancel_on_signals",
    "open_producer",
    "undelivered_failures",
    "undelivered_messages",
]

_fix_module_names()
del _fix_module_names
