"""A loopback TCP fault proxy for tests, in Trio: cut, black-hole, or delay a broker's traffic.

The broker advertises the proxy's address, so every connection a client makes -- the
bootstrap one and the ones it learns from metadata -- goes through the proxy.
"""

from __future__ import annotations

import socket
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Literal

import trio

from trio_producer.testing import EmbeddedBroker, create_topics, free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

Mode = Literal["pass", "cut", "blackhole"]


def bound_listener(port: int) -> trio.SocketListener:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return trio.SocketListener(sock)


class FaultProxy:
    """Forwards ``127.0.0.1:listen_port`` to ``127.0.0.1:target_port``.

    Modes: ``pass`` forwards; ``cut`` closes every connection and closes new ones at
    once; ``blackhole`` keeps connections open but forwards nothing. ``latency`` delays
    every chunk in both directions.
    """

    def __init__(self, listen_port: int, target_port: int) -> None:
        self.listen_port = listen_port
        self.target_port = target_port
        self.mode: Mode = "pass"
        self.latency = 0.0
        self._scopes: set[trio.CancelScope] = set()
        self._flowing = trio.Event()
        self._flowing.set()
        self.connections = 0
        self.bytes_forwarded = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.listen_port, host="127.0.0.1")
        async with trio.open_nursery() as nursery:
            task_status.started()
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    def cut(self) -> None:
        self.mode = "cut"
        for scope in list(self._scopes):
            scope.cancel(reason="fault proxy: cut")

    def blackhole(self) -> None:
        self.mode = "blackhole"
        if self._flowing.is_set():
            self._flowing = trio.Event()

    def restore(self) -> None:
        self.mode = "pass"
        self._flowing.set()

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            if self.mode == "cut":
                return
            self.connections += 1
            try:
                upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
            except OSError:
                return
            async with upstream:
                with trio.CancelScope() as scope:
                    self._scopes.add(scope)
                    try:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self._pump, client, upstream, nursery.cancel_scope)
                            nursery.start_soon(self._pump, upstream, client, nursery.cancel_scope)
                    finally:
                        self._scopes.discard(scope)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            while True:
                data = await source.receive_some(65536)
                if not data:
                    break
                if self.latency:
                    await trio.sleep(self.latency)
                if self.mode == "blackhole":
                    await self._flowing.wait()  # hold the data: the peer sees no answer
                if self.mode == "cut":
                    break
                await sink.send_all(data)
                self.bytes_forwarded += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            scope.cancel(reason="fault proxy: one side closed")


@asynccontextmanager
async def proxied_broker(
    topics: Sequence[str], partitions: int = 1
) -> AsyncIterator[tuple[str, FaultProxy, trio.Nursery]]:
    """An embedded broker behind a FaultProxy, with ``topics`` created through it.

    Yields the bootstrap address (the proxy's), the proxy, and the nursery it runs in.
    """
    proxy_port = free_port()
    with EmbeddedBroker(advertised_port=proxy_port) as broker:
        proxy = FaultProxy(proxy_port, broker.port)
        bootstrap = f"127.0.0.1:{proxy_port}"
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.run)
            # blocking admin call: in a thread, so that the proxy (on this loop) can serve it
            await trio.to_thread.run_sync(
                partial(create_topics, bootstrap, list(topics), partitions=partitions)
            )
            yield bootstrap, proxy, nursery
            nursery.cancel_scope.cancel()
