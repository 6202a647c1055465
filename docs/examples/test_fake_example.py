import pytest
import trio.testing

from trio_producer import DeliveryError, Message, Producer, UndeliveredMessagesError
from trio_producer.testing import open_fake_producer


async def notify(producer: Producer, users: list[str]) -> None:
    """The application code under test: typed against the real Producer."""
    for user in users:
        await producer.send("notifications", b"welcome", key=user.encode())


async def test_one_message_per_user() -> None:
    async with open_fake_producer() as fake:
        await notify(fake, ["ann", "bob"])
    assert fake.keys("notifications") == [b"ann", b"bob"]
    assert [record.offset for record in fake.delivered] == [0, 1]


async def test_a_rejected_message_comes_back_in_the_exception() -> None:
    def reject_bob(message: Message) -> str | None:
        return "MSG_SIZE_TOO_LARGE" if message.key == b"bob" else None

    with pytest.raises(DeliveryError) as info:
        async with open_fake_producer(fail=reject_bob) as fake:
            await notify(fake, ["ann", "bob"])
    assert info.value.message == Message("notifications", b"welcome", key=b"bob")
    assert fake.keys() == [b"ann"]


async def test_an_unreachable_cluster_hands_the_messages_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with pytest.raises(UndeliveredMessagesError) as info:
        async with open_fake_producer(unreachable=True) as fake:
            await notify(fake, ["ann", "bob"])
    # after close_timeout (30 s, instant under autojump_clock), as the real producer
    assert trio.current_time() == 30.0
    assert [message.key for message in info.value.messages] == [b"ann", b"bob"]
