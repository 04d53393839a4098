"""A simulated SERVOPRO 4100 in Continuous-ASCII mode, broadcasting over a pty.

It sends frames shaped like the bench captures (I1 Oxygen %, I2 CO %, I3 CO2 %, E1
and E2 unlabelled mA) every ``period`` seconds on an absolute schedule, with the
analyser clock following real time. Values are a deterministic function of the
seed and the frame index, and E1 ramps through 4-20 mA one step per frame, so
every frame's values differ from those of the 15,999 frames around it: tests can
match each stored row to the frame that carried it.

Faults for tests: corrupt checksums, noise lines, and an unplug/replug of the
simulated adapter. ``--emit-log`` records every line sent (one JSON object per
line, flushed at once) so a test can prove what went over the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Self

from servomexd.model import ChannelId, Unit
from servomexd.protocol.continuous import BlockSpec, build_frame, checksum
from servomexd.simulator.pty import PtyDevice
from servomexd.simulator.tcp import TcpWire

__all__ = ["ContinuousSimulator", "simulated_blocks"]

_E1_STEPS = 16_000
"""E1 ramps 4.000 -> 19.999 mA in 0.001 mA steps: 16,000 distinct frames in a row."""


def simulated_blocks(index: int, seed: int = 0, *, period: float = 2.0) -> list[BlockSpec]:
    """The five channels of frame ``index``: deterministic for a given seed."""
    rng = random.Random(seed * 1_000_003 + index)
    phase = (seed % 360) * math.pi / 180
    t = index * period
    o2 = 20.9 + 0.05 * math.sin(2 * math.pi * t / 97 + phase) + rng.uniform(-0.002, 0.002)
    co = 0.084 + 0.010 * math.sin(2 * math.pi * t / 61 + phase) + rng.uniform(-0.001, 0.001)
    co2 = 0.250 + 0.020 * math.sin(2 * math.pi * t / 131 + phase) + rng.uniform(-0.001, 0.001)
    e1 = 4.0 + (index % _E1_STEPS) / 1000
    return [
        BlockSpec(ChannelId.I1, "Oxygen", round(o2, 3), Unit.PERCENT),
        BlockSpec(ChannelId.I2, "CO", round(max(co, 0.0), 3), Unit.PERCENT),
        BlockSpec(ChannelId.I3, "CO2", round(max(co2, 0.0), 3), Unit.PERCENT),
        BlockSpec(ChannelId.E1, None, round(e1, 3), Unit.MA),
        BlockSpec(ChannelId.E2, None, 0.0, Unit.MA, decimals=1),
    ]


def _noise(rng: random.Random) -> bytes:
    """A garbage line: no start space, no terminator inside, some binary bytes."""
    body = bytes(rng.choice(b"\x00\x7f\xff#~?!ABCxyz0123") for _ in range(rng.randint(4, 40)))
    return b"#" + body.replace(b"\n", b"?").replace(b"\r", b"?")


class ContinuousSimulator:
    """The simulated analyser. Use ``async with`` (it runs until ``frames`` are sent or
    the block exits) or ``await run()`` (the CLI)."""

    def __init__(
        self,
        link: str | os.PathLike[str],
        *,
        period: float = 2.0,
        frames: int | None = None,
        emit_log: str | os.PathLike[str] | IO[str] | None = None,
        corrupt_every: int | None = None,
        noise_every: int | None = None,
        unplug_after: float | None = None,
        replug_after: float | None = None,
        seed: int = 0,
        terminator: bytes = b"\n",
        clock: Callable[[], datetime] = datetime.now,
        wire: TcpWire | None = None,
        stall_after: float | None = None,
    ) -> None:
        if period <= 0:
            raise ValueError("period must be > 0")
        for name, value in (("frames", frames), ("corrupt_every", corrupt_every),
                            ("noise_every", noise_every)):  # fmt: skip
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1")
        if replug_after is not None and unplug_after is None:
            raise ValueError("replug_after needs unplug_after")
        if terminator not in (b"\n", b"\r\n"):
            raise ValueError("terminator must be LF or CRLF")
        if stall_after is not None and wire is None:
            raise ValueError("stall_after needs a network wire (--listen or --rfc2217)")
        self.device: PtyDevice | TcpWire = wire if wire is not None else PtyDevice(link)
        self.stall_after = stall_after
        if wire is not None:
            wire.on_event = lambda entry: self._log({**entry, "at": _now()})
        self.period = period
        self.frames = frames
        self.corrupt_every = corrupt_every
        self.noise_every = noise_every
        self.unplug_after = unplug_after
        self.replug_after = replug_after
        self.seed = seed
        self.terminator = terminator
        self._clock = clock
        self._emit_target = emit_log
        self._emit: IO[str] | None = None
        self._owns_emit = False
        self._rng = random.Random(seed)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        """Set once the device link exists (each time it is plugged in)."""
        self.sent = 0
        """Frame lines written so far (corrupt ones included, noise lines not)."""
        self.unplugged_at: float | None = None
        self.missed = 0
        """Broadcast slots skipped because the process was starved of CPU."""

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def link(self) -> Path | str:
        """The path of the pty link, or the URL of the simulated device server."""
        return self.device.link

    def stop(self) -> None:
        """Ask ``run()`` to finish (safe from a signal handler)."""
        self._stop.set()

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self.run(), name=f"simulator {self.link}")
        ready = asyncio.create_task(self.ready.wait())
        done, _ = await asyncio.wait({self._task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            ready.cancel()
            self._task.result()  # re-raise a start-up failure
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop()
        if self._task is not None:
            await self._task

    async def wait_finished(self) -> None:
        """Until the configured number of frames has been sent (or ``stop()``)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    def unplug(self) -> None:
        """Pull the simulated adapter now (the link path vanishes)."""
        self.device.unplug()
        self.ready.clear()
        self.unplugged_at = asyncio.get_running_loop().time()
        self._log({"event": "unplug", "at": _now()})

    def replug(self) -> None:
        """Plug a new adapter in at the same path."""
        self.device.open()
        self.ready.set()
        self._log({"event": "replug", "at": _now(), "device": self.device.slave_name})

    # --- the broadcast loop ----------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._open_emit_log()
        try:
            self.device.open()
            self.ready.set()
            self._log({"event": "plug", "at": _now(), "device": self.device.slave_name})
            start = loop.time()
            unplug_at = None if self.unplug_after is None else start + self.unplug_after
            stall_at = None if self.stall_after is None else start + self.stall_after
            replug_at: float | None = None
            next_tick = start
            while not self._stop.is_set():
                now = loop.time()
                if unplug_at is not None and now >= unplug_at:
                    unplug_at = None
                    self.unplug()
                    if self.replug_after is not None:
                        replug_at = now + self.replug_after
                if replug_at is not None and now >= replug_at:
                    replug_at = None
                    self.replug()
                if stall_at is not None and now >= stall_at and isinstance(self.device, TcpWire):
                    stall_at = None
                    self.device.stall()
                if now >= next_tick:
                    if self.device.plugged:  # an unplugged analyser's frames go nowhere
                        self._send_tick()
                        if self.frames is not None and self.sent >= self.frames:
                            # Let the reader drain the last frame before the master closes.
                            await self._sleep(min(1.0, max(0.2, self.period)))
                            break
                    next_tick += self.period
                    if next_tick <= now:
                        # Starved of CPU: skip the missed slots like a real broadcaster
                        # would, instead of sending a burst to catch up.
                        missed = int((now - next_tick) / self.period) + 1
                        self.missed += missed
                        next_tick += missed * self.period
                wake = next_tick
                for event_at in (unplug_at, replug_at, stall_at):
                    if event_at is not None:
                        wake = min(wake, event_at)
                delay = wake - loop.time()
                if delay > 0:
                    await self._sleep(delay)
                else:
                    await asyncio.sleep(0)  # never starve the loop
        finally:
            self.device.close()
            self.ready.clear()
            self._close_emit_log()

    async def _sleep(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._stop.wait()

    def _send_tick(self) -> None:
        index = self.sent
        if self.noise_every is not None and (index + 1) % self.noise_every == 0:
            noise = _noise(self._rng)
            written = self.device.write(noise + self.terminator)
            entry: dict[str, Any] = {
                "noise": noise.decode("latin-1"),
                "before_index": index,
                "sent_at": _now(),
            }
            if written < len(noise) + len(self.terminator):
                entry["dropped"] = True
            self._log(entry)
        corrupt = self.corrupt_every is not None and (index + 1) % self.corrupt_every == 0
        blocks = simulated_blocks(index, self.seed, period=self.period)
        clock = self._clock().replace(microsecond=0)
        raw = build_frame(blocks, clock=clock)
        if corrupt:
            good = checksum(raw[1:-5])
            raw = build_frame(blocks, clock=clock, checksum_override=good ^ 0x0101)
        written = self.device.write(raw + self.terminator)
        self.sent += 1
        entry = {
            "index": index,
            "frame": raw.decode("ascii"),
            "sent_at": _now(),
            "corrupt": corrupt,
            "values": {block.channel.value: block.value for block in blocks},
        }
        if written < len(raw) + len(self.terminator):
            entry["dropped"] = True  # pty buffer full or no TCP client: nobody is reading
            if isinstance(self.device, TcpWire) and self.device.stalled:
                entry["stalled"] = True
        self._log(entry)

    # --- emit log ------------------------------------------------------------------------------

    def _open_emit_log(self) -> None:
        target = self._emit_target
        if target is None or self._emit is not None:
            return
        if isinstance(target, str | os.PathLike):
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._emit = path.open("a", encoding="utf-8")
            self._owns_emit = True
        else:
            self._emit = target

    def _close_emit_log(self) -> None:
        if self._emit is not None and self._owns_emit:
            self._emit.close()
            self._emit = None

    def _log(self, entry: dict[str, Any]) -> None:
        if self._emit is not None:
            self._emit.write(json.dumps(entry, ensure_ascii=False) + "\n")
            self._emit.flush()


def _now() -> float:
    return time.time()
