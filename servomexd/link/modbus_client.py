"""The pymodbus client for one Modbus line: a local serial port, raw TCP, or a Modbus TCP gateway.

Which client carries the frames depends only on ``port`` and the framing:

* a device path: ``AsyncModbusSerialClient`` (RTU or ASCII on the serial line);
* ``socket://HOST:PORT`` with RTU or ASCII: ``AsyncModbusTcpClient`` with that framer,
  i.e. the serial frames carried unchanged over TCP by a device server;
* ``socket://HOST:PORT`` with Modbus TCP: ``AsyncModbusTcpClient`` with the socket
  (MBAP) framer; the address becomes the MBAP unit identifier;
* ``rfc2217://HOST:PORT`` with RTU or ASCII: ``AsyncModbusSerialClient`` whose
  transport is an ``Rfc2217Link`` (``servomexd.link.transport``): pymodbus cannot open
  RFC 2217 without blocking the loop, but it still frames every request and reply.

pymodbus does the framing for all three; this module only builds the client,
connects it within ``connect_timeout`` (the host is resolved at every connect),
turns keepalive on, and says why a connect failed (pymodbus only logs it).
pymodbus's own reconnect and retries stay off: the supervisor owns both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerType

from servomexd.errors import ServomexConnectionError
from servomexd.link.diagnose import diagnose, probe_open
from servomexd.link.endpoint import NetworkEndpoint, is_network_port, parse_network_port
from servomexd.link.rfc2217 import Rfc2217Link
from servomexd.link.serial import SerialSettings
from servomexd.link.tcp import CONNECT_TIMEOUT, connect_error, enable_keepalive
from servomexd.link.transport import LinkTransport, settle_closes

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
    serial = {"baudrate": baudrate, "bytesize": bytesize, "parity": parity, "stopbits": stopbits}
    if not is_network_port(port):
        client: ModbusClient = _serial_client(port, framer, serial, response_timeout)
        await _connect(client, lambda error: _serial_error(port, error))
        return client
    endpoint = parse_network_port(port)
    if endpoint.scheme == "rfc2217":
        if framer is FramerType.SOCKET:
            raise ServomexConnectionError(
                "Modbus TCP needs socket://HOST:PORT", context={"port": port}
            )
        line = SerialSettings(port, baudrate, bytesize, parity, stopbits)
        client = _serial_client(endpoint.url, framer, serial, response_timeout)
        client.ctx.call_create = partial(
            _create_rfc2217, client, endpoint, line.serial_kwargs(), connect_timeout
        )
        await _connect(client, lambda error: connect_error(endpoint, error, connect_timeout))
        return client
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


def _serial_client(
    target: str, framer: FramerType, serial: dict[str, Any], response_timeout: float
) -> AsyncModbusSerialClient:
    """A pymodbus serial client (a local port or an RFC 2217 URL), not yet connected."""
    return AsyncModbusSerialClient(
        target,
        framer=framer,
        **serial,
        name=target,
        reconnect_delay=0,  # no pymodbus reconnect: the supervisor owns it
        reconnect_delay_max=0,
        timeout=response_timeout,
        retries=0,  # our retries wait for the idle gap; pymodbus's would not
    )


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
    except ServomexConnectionError:
        client.close()
        raise  # already says what failed (the RFC 2217 link)
    except (OSError, ModbusException) as error:
        client.close()
        raise failure(error) from error
    if not connected:
        client.close()
        # Off the loop: a serial failure may open the port once more to learn the errno.
        raise await asyncio.to_thread(failure, errors[0] if errors else TimeoutError())


async def _create_rfc2217(
    client: AsyncModbusSerialClient,
    endpoint: NetworkEndpoint,
    serial_kwargs: dict[str, Any],
    connect_timeout: float,
) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
    """pymodbus's ``call_create`` for RFC 2217: our link (negotiation off the loop) under
    an asyncio transport; pymodbus still does all the Modbus framing."""
    await settle_closes()
    link = await Rfc2217Link.open(endpoint, serial_kwargs, connect_timeout=connect_timeout)
    protocol = client.ctx.handle_new_connection()
    transport = LinkTransport(link, protocol)
    asyncio.get_running_loop().call_soon(transport.start)
    return transport, protocol


def _serial_error(port: str, error: BaseException) -> Exception:
    """Name the OS cause: pymodbus often drops the errno, so open the port once to learn it."""
    cause = error if getattr(error, "errno", None) else probe_open(port)
    return ServomexConnectionError(
        f"cannot open serial port: {diagnose(port, cause)}", context={"port": port}
    )
