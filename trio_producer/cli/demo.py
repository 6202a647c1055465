"""``trio-producer demo``: produce through ``open_producer``, read back, check nothing was lost."""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from functools import partial
from typing import TYPE_CHECKING

import attrs
import click
import trio

from .._admin import consume_all, create_topics
from .._embedded import BrokerError, EmbeddedBroker
from .._lifecycle import open_producer
from ._common import fail

if TYPE_CHECKING:
    from collections.abc import Callable


@attrs.frozen
class DemoResult:
    sent: int
    delivered: int
    read_back: int
    in_order: bool
    seconds: float
    drain_seconds: float

    @property
    def lost(self) -> int:
        return self.sent - self.read_back

    @property
    def ok(self) -> bool:
        return self.read_back == self.sent == self.delivered and self.in_order


async def run_demo(
    bootstrap: str, topic: str, count: int, size: int, on_progress: Callable[[int, int], None]
) -> DemoResult:
    payload = b"x" * max(0, size - 8)
    start = time.monotonic()
    async with open_producer(bootstrap_servers=bootstrap, linger=0.005) as producer:
        for i in range(count):
            try:
                producer.send_nowait(topic, b"%08d" % i + payload)
            except trio.WouldBlock:
                await producer.send(topic, b"%08d" % i + payload)
            if i % 2048 == 0:
                on_progress(i, producer.statistics().delivered)
                await trio.lowlevel.checkpoint()
        drain_start = time.monotonic()
    drain = time.monotonic() - drain_start
    seconds = time.monotonic() - start
    delivered = producer.statistics().delivered
    on_progress(count, delivered)
    records = await trio.to_thread.run_sync(
        partial(consume_all, bootstrap, topic, expected=count, idle_timeout=5.0)
    )
    in_order = all(
        r.value is not None and r.value[:8] == b"%08d" % i for i, r in enumerate(records)
    )
    return DemoResult(count, delivered, len(records), in_order, seconds, drain)


@click.command()
@click.option("-n", "--messages", type=click.IntRange(min=1), default=100_000, show_default=True)
@click.option(
    "--size",
    type=click.IntRange(min=8),
    default=100,
    show_default=True,
    help="Bytes per message.",
)
@click.option("-b", "--bootstrap-servers", help="Use this broker instead of an embedded one.")
def demo(messages: int, size: int, bootstrap_servers: str | None) -> None:
    """Start an embedded broker, produce N messages, read them back, check nothing was lost."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.table import Table

    console = Console()
    topic = f"trio-producer-demo-{os.getpid()}"
    with ExitStack() as stack:
        if bootstrap_servers is None:
            try:
                broker = stack.enter_context(EmbeddedBroker())
            except BrokerError as exc:
                fail(str(exc))
            bootstrap_servers = broker.bootstrap_servers
            console.print(f"embedded broker (Tansu) on {bootstrap_servers}")
        create_topics(bootstrap_servers, [topic], partitions=1)
        progress = stack.enter_context(
            Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                console=console,
                transient=False,
            )
        )
        sending = progress.add_task("accepted ", total=messages)
        delivering = progress.add_task("delivered", total=messages)

        def on_progress(sent: int, delivered: int) -> None:
            progress.update(sending, completed=sent)
            progress.update(delivering, completed=delivered)

        result = trio.run(run_demo, bootstrap_servers, topic, messages, size, on_progress)
        progress.stop()
    table = Table(title="trio-producer demo")
    for column in ("sent", "delivered", "read back", "lost", "in order", "msgs/s", "drain"):
        table.add_column(column, justify="right")
    table.add_row(
        str(result.sent),
        str(result.delivered),
        str(result.read_back),
        str(result.lost),
        "yes" if result.in_order else "NO",
        f"{result.sent / result.seconds:,.0f}",
        f"{result.drain_seconds * 1000:.1f} ms",
    )
    console.print(table)
    if not result.ok:
        fail(f"demo failed: sent {result.sent}, read back {result.read_back}")
