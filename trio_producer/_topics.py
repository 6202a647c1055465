"""Topic names: what Kafka allows, checked once per name (the hot path is a set lookup).

Below everything that takes a topic (the send methods, ``send_offsets``' positions, the
fake producer): it imports nothing of the package.
"""

from __future__ import annotations

import re

_TOPIC_RE = re.compile(r"[a-zA-Z0-9._-]{1,249}")
#: Topic names already checked (the check is a regex; the hot path is a set lookup).
valid_topics: set[str] = set()
_VALID_TOPICS_MAX = 10_000


def bad_topic(topic: object) -> TypeError | ValueError:
    if not isinstance(topic, str):
        return TypeError(f"topic must be a non-empty str, not {type(topic).__name__} {topic!r:.50}")
    if not topic:
        return ValueError(f"topic must be a non-empty str, not {topic!r}")
    return ValueError(
        f"topic {topic!r:.80} is not a valid Kafka topic name: use 1 to 249 of "
        "the characters a-z A-Z 0-9 . _ - (and not '.' or '..')"
    )


def check_topic(topic: object) -> None:
    """Raise unless ``topic`` is a legal Kafka topic name; remember the good ones."""
    if type(topic) is str and topic in valid_topics:
        return
    if type(topic) is not str or topic in (".", "..") or not _TOPIC_RE.fullmatch(topic):
        raise bad_topic(topic)
    if len(valid_topics) < _VALID_TOPICS_MAX:
        valid_topics.add(topic)
