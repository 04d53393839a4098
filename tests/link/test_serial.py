"""SerialLink and SerialSettings over real pseudo-terminals (PtyDevice)."""

from __future__ import annotations

import asyncio
import os
import resource
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from servomexd.errors import ServomexConnectionError, ServomexValidationError
from servomexd.link.serial import SerialLink, SerialSettings
from servomexd.simulator.pty import PtyDevice


@pytest.fixture
def device(tmp_path: Path) -> Iterator[PtyDevice]:
    with PtyDevice(tmp_path / "serial-by-id-adapter") as pty:
        yield pty


def open_fds_to(device_path: str) -> list[str]:
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == device_path:
                fds.append(fd)
        except OSError:
            continue
    return fds


async def read_until(link: SerialLink, wanted: int, within: float = 5.0) -> bytes:
    data = b""
    deadline = time.monotonic() + within
    while len(data) < wanted and time.monotonic() < deadline:
        data += await link.read(0.5)
    return data


# --- settings -----------------------------------------------------------------------------------


def test_settings_defaults_and_describe() -> None:
    settings = SerialSettings("/dev/ttyUSB0")
    assert (settings.baudrate, settings.bytesize, settings.parity, settings.stopbits) == (
        19200,
        8,
        "N",
        1,
    )
    assert settings.describe() == "/dev/ttyUSB0 @19200 8N1"
    assert SerialSettings("/dev/x", 9600, 7, "E", 2).describe() == "/dev/x @9600 7E2"
    assert SerialSettings("/dev/x", stopbits=1.5).framing == "8N1.5"
    with pytest.raises(AttributeError):
        settings.port = "/dev/other"  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"port": ""},
        {"port": "/dev/x\x00"},
        {"port": "/dev/x", "baudrate": 1920},
        {"port": "/dev/x", "baudrate": True},
        {"port": "/dev/x", "bytesize": 9},
        {"port": "/dev/x", "parity": "X"},
        {"port": "/dev/x", "parity": "n"},
        {"port": "/dev/x", "stopbits": 3},
    ],
)
def test_settings_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ServomexValidationError):
        SerialSettings(**kwargs)  # type: ignore[arg-type]


# --- open ---------------------------------------------------------------------------------------


async def test_open_missing_port_is_a_connection_error(tmp_path: Path) -> None:
    with pytest.raises(ServomexConnectionError) as info:
        await SerialLink.open(SerialSettings(str(tmp_path / "no-such-adapter")))
    assert info.value.context["port"] == str(tmp_path / "no-such-adapter")
    assert info.value.reason == "connection"


async def test_open_through_symlink_and_describe(device: PtyDevice) -> None:
    async with await SerialLink.open(SerialSettings(str(device.link))) as link:
        assert link.is_open
        assert link.describe() == f"{device.link} @19200 8N1 ({device.slave_name})"


async def test_port_is_locked_exclusively(device: PtyDevice) -> None:
    settings = SerialSettings(str(device.link))
    link = await SerialLink.open(settings)
    with pytest.raises(ServomexConnectionError):
        await SerialLink.open(settings)
    await link.close()
    again = await SerialLink.open(settings)
    await again.close()


# --- reads ----------------------------------------------------------------------------------------


async def test_read_times_out_with_empty_bytes(device: PtyDevice) -> None:
    async with await SerialLink.open(SerialSettings(str(device.link))) as link:
        started = time.monotonic()
        assert await link.read(0.2) == b""
        elapsed = time.monotonic() - started
        assert 0.15 <= elapsed < 1.0
        with pytest.raises(ServomexValidationError):
            await link.read(0)
        with pytest.raises(ServomexValidationError):
            await link.read(1.0, max_bytes=0)


async def test_each_read_keeps_its_own_timeout(device: PtyDevice) -> None:
    """The port's one timer is re-armed lazily: a short read after a long one still
    returns after its own timeout, and a long one after short ones waits its full time."""
    async with await SerialLink.open(SerialSettings(str(device.link))) as link:
        device.write(b"x")
        assert await link.read(5.0) == b"x"  # arms the timer 5 s ahead
        started = time.monotonic()
        assert await link.read(0.2) == b""
        assert 0.15 <= time.monotonic() - started < 1.0
        for _ in range(3):
            assert await link.read(0.05) == b""
        started = time.monotonic()
        assert await link.read(0.5) == b""
        assert 0.45 <= time.monotonic() - started < 1.5


async def test_readers_are_woken_together_on_the_shared_tick(tmp_path: Path) -> None:
    """Bytes on several ports are handed on in one pass of the loop, on the tick, and
    never later than one tick after they arrived."""
    from servomexd.link import serial as serial_link

    with PtyDevice(tmp_path / "a") as a, PtyDevice(tmp_path / "b") as b:
        first = await SerialLink.open(SerialSettings(str(a.link)))
        second = await SerialLink.open(SerialSettings(str(b.link)))
        woken: list[tuple[bytes, float]] = []

        async def reader(link: SerialLink) -> None:
            data = await link.read(5.0)
            woken.append((data, asyncio.get_running_loop().time()))

        tasks = [asyncio.create_task(reader(first)), asyncio.create_task(reader(second))]
        loop = asyncio.get_running_loop()
        tick = serial_link._WAKE_TICK
        # start just after a tick boundary, so both writes fall in the same tick
        await asyncio.sleep((loop.time() // tick + 1) * tick + 0.005 - loop.time())
        written = loop.time()
        a.write(b"from a")
        await asyncio.sleep(0.005)
        b.write(b"from b")
        await asyncio.gather(*tasks)
        await first.close()
        await second.close()
    assert sorted(data for data, _ in woken) == [b"from a", b"from b"]
    times = [at for _, at in woken]
    assert max(times) - min(times) < 0.005  # the same tick
    assert max(times) - written < serial_link._WAKE_TICK + 0.1


async def test_arrival_is_when_the_bytes_came_in_not_when_they_were_read(
    device: PtyDevice,
) -> None:
    """Frames are stamped with ``arrival``: bytes read 0.3 s after they came in (a busy
    loop, the shared tick) still carry the time they arrived."""
    async with await SerialLink.open(SerialSettings(str(device.link))) as link:
        written_wall, written = time.time_ns(), time.monotonic_ns()
        device.write(b"early")
        await asyncio.sleep(0.3)
        read_at = time.monotonic_ns()
        assert await link.read(1.0) == b"early"
        wall_ns, monotonic_ns = link.arrival
    assert written <= monotonic_ns < read_at - 100_000_000
    assert abs((wall_ns - written_wall) - (monotonic_ns - written)) < 50_000_000


async def test_an_empty_read_means_no_data_not_a_hang_up(device: PtyDevice) -> None:
    """VMIN=1 on the open port: a read that finds nothing raises EAGAIN instead of
    returning 0 bytes, which the link would take for a hang-up (pyserial leaves 0)."""
    import termios

    slave = device.slave_name
    assert slave is not None
    async with await SerialLink.open(SerialSettings(str(device.link))) as link:
        fd = int(open_fds_to(slave)[0])
        assert termios.tcgetattr(fd)[6][termios.VMIN] == 1
        with pytest.raises(BlockingIOError):
            os.read(fd, 100)
        assert link.is_open


async def test_bytes_arrive_and_max_bytes_is_honoured(device: PtyDevice) -> None:
    async with await SerialLink.open(SerialSettings(str(device.link))) as link:
        assert device.write(b"0123456789\n") == 11
        data = await link.read(2.0, max_bytes=4)
        assert data == b"0123"
        assert await read_until(link, 7) == b"456789\n"


async def test_reset_input_discards_what_was_not_read(device: PtyDevice) -> None:
    async with await SerialLink.open(SerialSettings(str(device.link))) as link:
        device.write(b"stale bytes")
        await asyncio.sleep(0.2)
        link.reset_input()
        assert await link.read(0.2) == b""
        device.write(b"fresh")
        assert await read_until(link, 5) == b"fresh"


async def test_backpressure_keeps_every_byte(device: PtyDevice) -> None:
    payload = bytes(range(256)) * 40  # 10 KiB
    async with await SerialLink.open(SerialSettings(str(device.link)), high_water=1024) as link:
        written = 0
        received = b""
        deadline = time.monotonic() + 10
        while len(received) < len(payload) and time.monotonic() < deadline:
            if written < len(payload):
                written += device.write(payload[written : written + 2048])
            await asyncio.sleep(0.01)
            received += await link.read(0.2, max_bytes=700)
        assert received == payload


# --- loss and close -------------------------------------------------------------------------------


async def test_unplug_while_reading_raises_promptly(device: PtyDevice) -> None:
    link = await SerialLink.open(SerialSettings(str(device.link)))
    reader = asyncio.create_task(link.read(30.0))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    device.unplug()
    with pytest.raises(ServomexConnectionError, match="lost"):
        await asyncio.wait_for(reader, 5)
    assert time.monotonic() - started < 1.0
    assert not link.is_open
    with pytest.raises(ServomexConnectionError):
        await link.read(1.0)
    await link.close()


async def test_bytes_before_the_unplug_are_delivered_first(device: PtyDevice) -> None:
    link = await SerialLink.open(SerialSettings(str(device.link)))
    device.write(b"last words\n")
    await asyncio.sleep(0.2)
    device.unplug()
    await asyncio.sleep(0.2)
    assert await link.read(1.0) == b"last words\n"
    with pytest.raises(ServomexConnectionError):
        await link.read(1.0)
    await link.close()


async def test_close_releases_the_fd_at_once(device: PtyDevice) -> None:
    slave = device.slave_name
    assert slave is not None
    link = await SerialLink.open(SerialSettings(str(device.link)))
    assert len(open_fds_to(slave)) == 1
    await link.close()
    assert open_fds_to(slave) == []
    await link.close()  # idempotent
    with pytest.raises(ServomexConnectionError):
        await link.read(0.1)


async def test_close_during_a_pending_read(device: PtyDevice) -> None:
    link = await SerialLink.open(SerialSettings(str(device.link)))
    reader = asyncio.create_task(link.read(30.0))
    await asyncio.sleep(0.05)
    await link.close()
    reader.cancel()
    with pytest.raises((asyncio.CancelledError, ServomexConnectionError)):
        await reader


async def test_lost_link_releases_the_fd_and_replug_gives_a_new_device(
    device: PtyDevice,
) -> None:
    settings = SerialSettings(str(device.link))
    first = device.slave_name
    assert first is not None
    link = await SerialLink.open(settings)
    device.unplug()
    assert not device.link.exists()
    with pytest.raises(ServomexConnectionError):
        await link.read(5.0)
    await link.close()
    assert open_fds_to(first) == []
    with pytest.raises(ServomexConnectionError):
        await SerialLink.open(settings)  # the path vanished
    device.replug()
    async with await SerialLink.open(settings) as again:
        device.write(b"back\n")
        assert await read_until(again, 5) == b"back\n"


async def test_cancelled_open_never_leaks_the_fd(device: PtyDevice) -> None:
    slave = device.slave_name
    assert slave is not None
    settings = SerialSettings(str(device.link))
    for _ in range(20):
        opening = asyncio.create_task(SerialLink.open(settings))
        await asyncio.sleep(0)  # the open is under way in the executor
        opening.cancel()
        try:
            link = await opening
        except asyncio.CancelledError:
            pass
        else:  # the open won the race: an ordinary close then
            await link.close()
    # The last cancelled open may still be running in its thread: wait for the lock.
    deadline = time.monotonic() + 5
    while True:
        try:
            link = await SerialLink.open(settings)
            break
        except ServomexConnectionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
    assert len(open_fds_to(slave)) == 1  # ours only: no cancelled open left one behind
    await link.close()
    assert open_fds_to(slave) == []


# --- descriptors above 1024 ----------------------------------------------------------------------


@pytest.fixture
def low_fds_taken() -> Iterator[None]:
    """Fill descriptors 0..1100 so that the next port opens above 1024, where select() fails."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1200
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the hard descriptor limit ({hard}) is below {wanted}")
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    dummies: list[int] = []
    try:
        while not dummies or dummies[-1] < 1100:
            dummies.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in dummies:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_reads_work_on_descriptors_above_1024(low_fds_taken: None, tmp_path: Path) -> None:
    with PtyDevice(tmp_path / "adapter-1025") as device:
        slave = device.slave_name
        assert slave is not None
        link = await SerialLink.open(SerialSettings(str(device.link)))
        assert min(int(fd) for fd in open_fds_to(slave)) > 1024
        for line in (b"first frame\n", b"second frame\n"):
            device.write(line)
            assert await read_until(link, len(line)) == line
        device.unplug()
        with pytest.raises(ServomexConnectionError, match="lost"):
            await link.read(5.0)
        await link.close()
        assert open_fds_to(slave) == []
