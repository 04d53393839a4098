"""The receive buffer shared by the network links: flow control at the high-water mark."""

from __future__ import annotations

from servomexd.link.stream import Receiver


async def test_pauses_at_the_high_water_mark_and_resumes_below_half() -> None:
    calls: list[str] = []
    receiver = Receiver(
        1000, pause=lambda: calls.append("pause"), resume=lambda: calls.append("resume")
    )
    receiver.data_received(b"x" * 600)
    assert not receiver.paused
    receiver.data_received(b"x" * 600)
    assert receiver.paused and calls == ["pause"]
    receiver.data_received(b"x" * 600)  # already paused: no second call
    assert calls == ["pause"]
    assert receiver.take(1000) == b"x" * 1000
    assert receiver.paused, "800 bytes left: still above half the mark"
    receiver.take(400)
    assert not receiver.paused and calls == ["pause", "resume"]


async def test_a_reader_thread_without_hooks_sees_the_flag() -> None:
    receiver = Receiver(100)
    receiver.data_received(b"y" * 150)
    assert receiver.paused  # Rfc2217Link's reader thread stops reading on this
    receiver.take(None)
    assert not receiver.paused
