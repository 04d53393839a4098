"""The pymodbus client for one Modbus line: a local serial port, raw TCP, or a Modbus TCP gateway.

Which client carries the frames depends only on ``port`` and the framing:

* a device path: ``AsyncModbusSerialClient`` (RTU or ASCII on the serial line);
* ``socket://HOST:PORT`` with RTU or ASCII: ``AsyncModbusTcpClient`` with that framer,
  i.e. the serial frames carried unchanged over TCP by a device server;
* ``socket://HOST:PORT`` with Modbus TCP: ``AsyncModbusTcpClient`` with the socket
  (MBAP) framer; the address becomes the MBAP unit identifier.

pymodbus does the framing for all three; this module only builds the client,
connects it within ``connect_timeout`` (the host is resolved at every connect),
turns keepalive on, and says why a connect failed (pymodbus only logs it).
pymodbus's own reconnect and retries stay off: the supervisor owns both.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerType

from servomexd.errors import ServomexConnectionError
from servomexd.link.endpoint import is_network_port, parse_network_port
from servomexd.link.tcp import CONNECT_TIMEOUT, connect_error, enable_keepalive

__all__ = ["ModbusClient", "connect_modbus_client"]

ModbusClient = AsyncModbusSerialClient | AsyncModbusTcpClient


async def connect_modbus_client(
    port: str,
    framer: FramerType,
    *,
    baudrate: int,
    bytesize: int,
    parity: str,
    stopbits: int,
    response_timeout: float,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> ModbusClient:
    """A connected client; ``ServomexConnectionError`` naming the cause otherwise."""
    if not is_network_port(port):
        client: ModbusClient = AsyncModbusSerialClient(
            port,
            framer=framer,
            baudrate=baudrate,
            bytesize=bytesize,
            parity=parity,
            stopbits=stopbits,
            name=port,
            reconnect_delay=0,  # no pymodbus reconnect: the supervisor owns it
            reconnect_delay_max=0,
            timeout=response_timeout,
            retries=0,  # our retries wait for the idle gap; pymodbus's would not
        )
        await _connect(client, lambda error: _serial_error(port, framer, error))
        return client
    endpoint = parse_network_port(port)
    if endpoint.scheme != "socket":
        raise ServomexConnectionError(
            "Modbus needs socket://HOST:PORT", context={"port": port, "framer": framer.value}
        )
    # pymodbus uses ``timeout`` both to connect and as its response backstop; our own
    # per-request timeout is shorter and fires first.
    client = AsyncModbusTcpClient(
        endpoint.host,
        port=endpoint.port,
        framer=framer,
        name=endpoint.url,
        reconnect_delay=0,
        reconnect_delay_max=0,
        timeout=connect_timeout,
        retries=0,
    )
    await _connect(client, lambda error: connect_error(endpoint, error, connect_timeout))
    enable_keepalive(
        client.ctx.transport.get_extra_info("socket") if client.ctx.transport else None
    )
    return client


async def _connect(client: ModbusClient, failure: Callable[[BaseException], Exception]) -> None:
    # pymodbus catches the connect error and only logs it; record it on the way to say why.
    errors: list[BaseException] = []
    create: Callable[[], Awaitable[Any]] = client.ctx.call_create

    async def recording_create() -> Any:
        try:
            return await create()
        except Exception as error:
            errors.append(error)
            raise

    client.ctx.call_create = recording_create
    try:
        connected = await client.connect()
    except (OSError, ModbusException) as error:
        client.close()
        raise failure(error) from error
    if not connected:
        client.close()
        raise failure(errors[0] if errors else TimeoutError())


def _serial_error(port: str, framer: FramerType, error: BaseException) -> Exception:
    return ServomexConnectionError(
        "cannot open serial port",
        context={"port": port, "framer": framer.value, "error": str(error) or "not connected"},
    )
