"""A simulated serial device server: the analyser's line served over TCP.

``TcpWire`` stands where ``PtyDevice`` stands for a local adapter (same ``open``,
``unplug``, ``write``, ``plugged``), so the continuous simulator does not care
which one it writes to. It behaves like a device server in "TCP server" mode:

* one client at a time (the usual default): a second connection while one is
  held is closed at once, as a real device server resets it;
* ``unplug()`` closes the listening socket and the client (the server is gone:
  connects are refused); ``open()`` listens again on the same port;
* ``stall()`` keeps the connection open but sends nothing more (a half-open
  connection: the serial side lost the analyser, or a firewall dropped the state);
  a new connection is served normally again.

``Rfc2217Wire`` adds RFC 2217 through pyserial's ``rfc2217.PortManager`` (the
server half of the protocol): the settings the client asks for are logged and
applied to the pace of the simulated line (a frame takes ``len * bits / baud`` s).

Non-blocking sockets driven by the event loop's reader callbacks; a write that
does not fit the socket buffer is dropped, as a UART with nobody reading drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any, Self

import serial
import serial.rfc2217

__all__ = ["Rfc2217Bridge", "Rfc2217Wire", "TcpWire", "split_host_port"]

log = logging.getLogger(__name__)


def split_host_port(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[v6]:PORT`` (port 0: any free port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class TcpWire:
    """One listening socket and at most one client."""

    scheme = "socket"

    def __init__(
        self, host: str, port: int, *, on_event: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.on_event = on_event
        """Called with each connection event (the simulator writes them to its emit log)."""
        self._listener: socket.socket | None = None
        self._client: socket.socket | None = None
        self._stalled = False
        self.connections = 0
        self.refused = 0

    @property
    def link(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def slave_name(self) -> str:
        return self.link

    @property
    def plugged(self) -> bool:
        return self._listener is not None

    @property
    def connected(self) -> bool:
        return self._client is not None

    @property
    def stalled(self) -> bool:
        return self._stalled

    def open(self) -> Self:
        if self._listener is not None:
            return self
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(4)
        listener.setblocking(False)
        self.port = listener.getsockname()[1]  # port 0: keep the one we got, for replug
        self._listener = listener
        asyncio.get_running_loop().add_reader(listener.fileno(), self._accept)
        return self

    def unplug(self) -> None:
        """The device server goes away: no listener, the client's connection closes."""
        self._drop_client("unplugged")
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().remove_reader(listener.fileno())
            listener.close()

    def close(self) -> None:
        self.unplug()

    def stall(self) -> None:
        """Keep the connection, stop sending (half-open)."""
        self._stalled = True
        self._event({"event": "stall", "client": self._client is not None})

    def write(self, data: bytes) -> int:
        """Send ``data`` to the client; 0 when nobody is connected or the link stalled."""
        client = self._client
        if client is None or self._stalled:
            return 0
        return self._send(client, self._encode(data))

    # --- internals ---------------------------------------------------------------------

    def _event(self, entry: dict[str, Any]) -> None:
        log.info("%s %s", self.link, entry)
        if self.on_event is not None:
            self.on_event(entry)

    def _send(self, client: socket.socket, data: bytes) -> int:
        try:
            return client.send(data)
        except BlockingIOError:
            return 0
        except OSError:
            self._drop_client("send failed")
            return 0

    def _encode(self, data: bytes) -> bytes:
        return data

    def _accept(self) -> None:
        listener = self._listener
        if listener is None:
            return
        try:
            client, peer = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if self._client is not None and self._client_gone():
            self._drop_client("client closed")
        if self._client is not None:
            # One client only, as a device server's default: refuse the newcomer.
            self.refused += 1
            self._event({"event": "refused", "peer": str(peer[0])})
            client.close()
            return
        client.setblocking(False)
        self._client = client
        self._stalled = False
        self.connections += 1
        self._event({"event": "connect", "peer": str(peer[0])})
        asyncio.get_running_loop().add_reader(client.fileno(), self._readable)
        self._connected(client)

    def _client_gone(self) -> bool:
        """The held client already closed (its FIN not yet handled by ``_readable``):
        a real device server frees the slot on the FIN, before a new SYN can arrive."""
        client = self._client
        assert client is not None
        try:
            return client.recv(1, socket.MSG_PEEK) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True

    def _connected(self, client: socket.socket) -> None:
        """Hook for the RFC 2217 subclass."""

    def _readable(self) -> None:
        client = self._client
        if client is None:
            return
        try:
            data = client.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop_client("client closed")
            return
        self._received(data)

    def _received(self, data: bytes) -> None:
        """Bytes from the client: a broadcasting analyser ignores them."""

    def _drop_client(self, why: str) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        with contextlib.suppress(RuntimeError, ValueError):
            asyncio.get_running_loop().remove_reader(client.fileno())
        client.close()
        self._event({"event": "disconnect", "why": why})


class _Connection:
    """What ``PortManager`` writes its negotiation replies to."""

    def __init__(self, wire: Rfc2217Wire) -> None:
        self.wire = wire

    def write(self, data: bytes) -> None:
        client = self.wire._client
        if client is not None:
            self.wire._send(client, bytes(data))


class Rfc2217Wire(TcpWire):
    """A device server speaking RFC 2217 (pyserial's ``PortManager``)."""

    scheme = "rfc2217"

    def __init__(
        self, host: str, port: int, *, on_event: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        super().__init__(host, port, on_event=on_event)
        # The "serial port" the manager configures: pyserial's loop:// stands in for the
        # UART, so the client's settings land somewhere we can read them back.
        self.line = serial.serial_for_url("loop://", baudrate=9600)
        self._manager: serial.rfc2217.PortManager | None = None
        self._applied: tuple[Any, ...] = ()
        self.settings_log: list[dict[str, Any]] = []
        self._line_free = 0.0

    @property
    def bits_per_char(self) -> int:
        line = self.line
        parity = 0 if line.parity == serial.PARITY_NONE else 1
        return 1 + int(line.bytesize) + parity + round(float(line.stopbits))

    def _connected(self, client: socket.socket) -> None:
        self._applied = ()
        self._manager = serial.rfc2217.PortManager(self.line, _Connection(self))

    def _received(self, data: bytes) -> None:
        manager = self._manager
        if manager is None:
            return
        for _ in manager.filter(data):
            pass  # bytes for the analyser: a broadcasting analyser ignores them
        self._note_settings()

    def _note_settings(self) -> None:
        line = self.line
        current = (line.baudrate, line.bytesize, line.parity, line.stopbits)
        if current == self._applied:
            return
        self._applied = current
        entry = {
            "event": "rfc2217_settings",
            "baudrate": line.baudrate,
            "bytesize": line.bytesize,
            "parity": line.parity,
            "stopbits": line.stopbits,
        }
        self.settings_log.append(entry)
        self._event(entry)

    def write(self, data: bytes) -> int:
        """Deliver ``data`` when its last bit would have left a line at the client's baud."""
        client = self._client
        if client is None or self._stalled or self._manager is None:
            return 0
        loop = asyncio.get_running_loop()
        now = loop.time()
        start = max(now, self._line_free)
        self._line_free = start + len(data) * self.bits_per_char / self.line.baudrate
        encoded = b"".join(self._manager.escape(data))
        loop.call_at(self._line_free, self._deliver, client, encoded)
        return len(data)

    def _deliver(self, client: socket.socket, data: bytes) -> None:
        if client is self._client and not self._stalled:
            self._send(client, data)


class Rfc2217Bridge(Rfc2217Wire):
    """An RFC 2217 device server in front of a real serial line (a simulator's pty): what
    the client sends goes to the line, what the line answers goes back. Used to put the
    Modbus simulator behind RFC 2217; the client's settings are logged, not paced (the
    Modbus simulator's relay does its own pacing)."""

    def __init__(
        self,
        host: str,
        port: int,
        serial_path: str,
        *,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        super().__init__(host, port, on_event=on_event)
        # Settings and modem lines stay on ``line`` (loop://: a pty has no modem lines);
        # the bytes go through the pty.
        self.pty = serial.Serial(serial_path, timeout=0)
        asyncio.get_running_loop().add_reader(self.pty.fileno(), self._from_line)

    def _from_line(self) -> None:
        try:
            data = self.pty.read(4096)
        except serial.SerialException:
            return
        client = self._client
        if data and client is not None and self._manager is not None and not self._stalled:
            self._send(client, b"".join(self._manager.escape(data)))

    def _received(self, data: bytes) -> None:
        manager = self._manager
        if manager is None:
            return
        payload = b"".join(manager.filter(data))
        self._note_settings()
        if payload:
            self.pty.write(payload)

    def close(self) -> None:
        super().close()
        with contextlib.suppress(RuntimeError, ValueError, serial.SerialException):
            asyncio.get_running_loop().remove_reader(self.pty.fileno())
            self.pty.close()
