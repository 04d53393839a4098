"""AUTO: find out which mode the analyser is in, then hand over to that mode's session.

The three modes exclude each other and a unit in one mode ignores the others, so
the ladder (docs/protocol.md#auto-detection) is: flush input; probe Modbus RTU (FC08
loopback echoing AB CD, then a 1-register FC04 read as fallback); the same in
Modbus ASCII; then listen passively for one checksum-valid continuous frame for
``max(3 * expected_frame_period + 2, 5)`` seconds (longer than the operator-set
broadcast period, which the published driver's 2 s window was not). Modbus goes
first because a probe costs about a second and the listen may cost a broadcast
period. Only read-only requests are ever sent: nothing on the wire can switch
the analyser's mode, and we would not if it could.

The factory remembers what it found. Running the ladder on every reconnect cost a
continuous analyser about 4 s of unanswered Modbus probes after each unplug/replug
or silence timeout, and sent it probes it has no use for; so the next ``open()``
goes straight to the remembered mode's session (same port, same line settings).
The memory is dropped, and the full ladder runs again, only when the previous
session in the remembered mode produced no valid frame at all (the operator
switched the mode at the front panel, say): a wrong memory costs at most one
``silence_timeout``. A Modbus slave that no longer identifies is re-detected in
the same ``open()``, since its failed identify already proved the memory wrong.
A port that cannot be opened (adapter unplugged) keeps the memory: the unit did
not change, only the cable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from time import monotonic
from typing import TYPE_CHECKING

import structlog

from servomexd.acquisition.base import DeviceSession
from servomexd.acquisition.modbus import ModbusSession, describe_target
from servomexd.acquisition.modbus_bus import BusSettings, LoopbackRequest, ModbusBusRegistry
from servomexd.acquisition.settings import DeviceSettings
from servomexd.errors import (
    ServomexConfigError,
    ServomexConnectionError,
    ServomexError,
    ServomexModbusError,
)
from servomexd.model import AcquisitionEvent, Frame, ProtocolKind
from servomexd.protocol import modbus as mb

if TYPE_CHECKING:
    from servomexd.acquisition.continuous import ContinuousSessionFactory

log = structlog.get_logger("servomexd.auto")

PROBE_TIMEOUT = 0.5
"""Per try; a 4100 answers a single read in 20-40 ms."""
PROBE_TRIES = 2
PROBE_READ = mb.ReadRequest(mb.FC_READ_INPUT_REGISTERS, 0, 1)
MODBUS_ORDER = (ProtocolKind.MODBUS_RTU, ProtocolKind.MODBUS_ASCII)


def listen_window(expected_frame_period: float) -> float:
    """How long to wait for a continuous frame: three periods plus slack, at least 5 s."""
    return max(3 * expected_frame_period + 2, 5.0)


class AutoSessionFactory:
    """A ``SessionFactory`` whose ``open()`` runs the AUTO ladder, then reuses its answer.

    ``detected`` is the mode the last ladder found; ``remembered`` is the mode the
    next ``open()`` will go straight to (``None``: run the ladder).
    """

    def __init__(self, device: DeviceSettings, buses: ModbusBusRegistry) -> None:
        self.device = device
        self.buses = buses
        self.detected: ProtocolKind | None = None
        self.remembered: ProtocolKind | None = None
        self._last: AutoSession | None = None

    @property
    def description(self) -> str:
        return describe_target(self.device, "auto")

    async def open(self) -> AutoSession:
        if self.remembered is not None:
            reused = await self._reuse(self.remembered)
            if reused is not None:
                return self._track(reused)
        return self._track(await self._detect())

    def _track(self, session: DeviceSession) -> AutoSession:
        self._last = AutoSession(session)
        return self._last

    async def _detect(self) -> DeviceSession:
        tried: list[str] = []
        for protocol in MODBUS_ORDER:
            session = await self._probe_modbus(protocol, tried)
            if session is not None:
                return self._found(protocol, session, tried)
        session_c = await self._listen_continuous(tried)
        if session_c is not None:
            return self._found(ProtocolKind.CONTINUOUS, session_c, tried)
        log.warning("auto.nothing_recognised", device=self.device.name, tried="; ".join(tried))
        raise ServomexConnectionError(
            "no recognised protocol",
            context={
                "port": self.device.port,
                "address": self.device.address,
                "tried": "; ".join(tried),
            },
        )

    def _found(
        self, protocol: ProtocolKind, session: DeviceSession, tried: list[str]
    ) -> DeviceSession:
        self.detected = protocol
        self.remembered = protocol
        self._log_mode("auto.detected", protocol, tried="; ".join(tried))
        return session

    def _log_mode(self, event: str, protocol: ProtocolKind, **details: object) -> None:
        """An event about the mode of this device, naming the device, mode and line."""
        log.info(
            event,
            device=self.device.name,
            protocol=protocol.value,
            port=self.device.port,
            address=self.device.address,
            **details,
        )

    # --- remembered mode ---------------------------------------------------------------

    async def _reuse(self, protocol: ProtocolKind) -> DeviceSession | None:
        """The remembered mode's session without probing; ``None`` after forgetting it."""
        last = self._last
        if last is not None and last.frames == 0:
            self._forget(protocol, "the last session in this mode produced no valid frame")
            return None
        self._log_mode(
            "auto.reusing_mode", protocol, previous_frames=0 if last is None else last.frames
        )
        if protocol is ProtocolKind.CONTINUOUS:
            if self.buses.users_on(self.device.port):
                self._forget(protocol, "port now shared with Modbus devices")
                return None
            # A port that cannot be opened raises here and keeps the memory.
            return await self._continuous().open()
        try:
            bus = self.buses.bus(BusSettings.of(self.device, protocol))
        except ServomexConfigError as exc:
            self._forget(protocol, exc.message)
            return None
        session = ModbusSession(self.device, bus, metrics=self.buses.metrics)
        await session.attach()  # the port cannot be opened: raise, keep the memory
        try:
            await session.identify()
        except ServomexError as exc:
            await session.aclose()
            if isinstance(exc, ServomexConnectionError) and not bus.is_open:
                raise
            self._forget(protocol, f"identify failed ({exc.reason})")
            return None
        except BaseException:
            await session.aclose()
            raise
        return session

    def _forget(self, protocol: ProtocolKind, why: str) -> None:
        self._log_mode("auto.forgetting_mode", protocol, why=why, action="re-detecting")
        self.remembered = None

    def _continuous(self) -> ContinuousSessionFactory:
        # Imported here: the continuous stack is only needed when AUTO gets this far.
        from servomexd.acquisition.continuous import ContinuousSessionFactory

        return ContinuousSessionFactory.for_device(self.device)

    # --- Modbus ------------------------------------------------------------------------

    async def _probe_modbus(self, protocol: ProtocolKind, tried: list[str]) -> ModbusSession | None:
        in_use = self.buses.active_protocol(self.device.port)
        if in_use is not None and in_use is not protocol:
            tried.append(f"{protocol.value}: skipped, port in use by {in_use.value} devices")
            return None
        try:
            bus = self.buses.bus(BusSettings.of(self.device, protocol))
        except ServomexConfigError as exc:
            tried.append(f"{protocol.value}: skipped ({exc.message})")
            return None
        session = ModbusSession(self.device, bus, metrics=self.buses.metrics)
        try:
            await session.attach()
        except ServomexConnectionError as exc:
            # The port itself cannot be opened: no later step can succeed either. (The
            # message without its context: the log line names the port once, as target.)
            tried.append(f"{protocol.value}: {exc.message}")
            raise ServomexConnectionError(
                "AUTO cannot open the port",
                context={"port": self.device.port, "tried": "; ".join(tried)},
            ) from exc
        keep = False
        try:
            bus.flush_input()
            answer = await self._probe(session, protocol)
            tried.append(f"{protocol.value}: {answer}")
            if answer.startswith("answered"):
                await session.identify()
                keep = True
                return session
            return None
        except ServomexError as exc:
            if isinstance(exc, ServomexConnectionError) and not bus.is_open:
                raise
            tried.append(f"{protocol.value}: identify failed ({exc.reason})")
            return None
        finally:
            if not keep:
                await session.aclose()

    async def _probe(self, session: ModbusSession, protocol: ProtocolKind) -> str:
        """``answered ...`` when a slave at our address speaks this framing."""
        for attempt in range(PROBE_TRIES):
            try:
                echo = await session.execute(
                    LoopbackRequest(), request_timeout=PROBE_TIMEOUT, retries=0
                )
            except ServomexModbusError as exc:
                # A well-formed exception reply also proves the framing, but check the
                # fallback read before trusting it (docs/protocol.md#auto-detection).
                log.debug("auto.loopback_exception", protocol=protocol.value, error=str(exc))
                break
            except ServomexError:
                continue
            if echo == mb.LOOPBACK_DATA:
                return f"answered FC08 loopback (try {attempt + 1})"
            log.debug("auto.loopback_mismatch", protocol=protocol.value, echo=repr(echo))
            break
        try:
            await session.execute(
                PROBE_READ, request_timeout=PROBE_TIMEOUT, retries=PROBE_TRIES - 1
            )
        except ServomexModbusError as exc:
            return f"answered FC04 probe with exception {exc.exception_code:02d}"
        except ServomexError:
            return "no reply to FC08 loopback or FC04 probe"
        return "answered FC04 probe"

    # --- continuous --------------------------------------------------------------------

    async def _listen_continuous(self, tried: list[str]) -> DeviceSession | None:
        if self.buses.users_on(self.device.port):
            tried.append("continuous: skipped, port shared with Modbus devices")
            return None
        from servomexd.link.connect import open_link
        from servomexd.protocol.continuous import ContinuousFramer

        continuous = self._continuous()
        window = listen_window(self.device.expected_frame_period)
        framer = ContinuousFramer()
        frame: Frame | None = None
        after: list[AcquisitionEvent] = []  # what came in the same read after the frame
        rejected = 0
        link = await open_link(continuous.settings, connect_timeout=continuous.connect_timeout)
        try:
            link.reset_input()
            deadline = monotonic() + window
            while frame is None:
                remaining = deadline - monotonic()
                if remaining <= 0:
                    break
                data = await link.read(remaining)
                for event in framer.feed(data):
                    if frame is not None:
                        after.append(event)
                    elif isinstance(event, Frame):
                        frame = event
                    else:
                        rejected += 1  # a partial first line, noise: keep listening
        except BaseException:
            await link.close()
            raise
        if frame is None:
            await link.close()
            tried.append(f"continuous: no valid frame in {window:g} s ({rejected} rejected lines)")
            return None
        tried.append(f"continuous: valid frame with {len(frame.readings)} channels")
        # The session keeps the link the frame came on: a device server that takes one
        # client at a time may not have freed its slot for a reconnect yet.
        return PrimedSession(continuous.session_on(link, framer), frame, *after)


class PrimedSession:
    """A continuous session that first yields the frame AUTO detected it with, and what
    arrived in the same read after it."""

    def __init__(self, session: DeviceSession, first: Frame, *rest: AcquisitionEvent) -> None:
        self._session = session
        self._first: list[AcquisitionEvent] = [first, *rest]

    @property
    def protocol(self) -> ProtocolKind:
        return self._session.protocol

    async def events(self) -> AsyncIterator[AcquisitionEvent]:
        first, self._first = self._first, []
        for event in first:
            yield event
        async for event in self._session.events():
            yield event

    async def aclose(self) -> None:
        await self._session.aclose()


class AutoSession:
    """The session AUTO hands over, counting its valid frames.

    The count decides whether the next ``open()`` may trust the remembered mode:
    a session that never produced a frame means the unit no longer speaks it.
    """

    def __init__(self, inner: DeviceSession) -> None:
        self.inner = inner
        self.frames = 0

    @property
    def protocol(self) -> ProtocolKind:
        return self.inner.protocol

    async def events(self) -> AsyncIterator[AcquisitionEvent]:
        events = self.inner.events()
        try:
            async for event in events:
                if isinstance(event, Frame):
                    self.frames += 1
                yield event
        finally:
            closer = getattr(events, "aclose", None)  # end the inner generator now, not at GC
            if closer is not None:
                await closer()

    async def aclose(self) -> None:
        await self.inner.aclose()


__all__ = ["AutoSession", "AutoSessionFactory", "PrimedSession", "listen_window"]
