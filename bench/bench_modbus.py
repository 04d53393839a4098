"""Modbus multidrop throughput: achieved poll cycles per second vs the wire-time limit.

Setup: one simulated RS485 port at 19200 baud (8N1, 10 bits per character) with four
4100 slaves; four ``ModbusSession``s share one ``ModbusBus`` exactly as the daemon
runs them, each sweeping (FC04 0..69, FC02 0..79, FC02 1000..1015) back to back.
One *poll cycle* is one sweep of every slave.

Honest timing: a pseudo-terminal moves bytes instantly, so the simulator's relay paces
the line. Each chunk occupies a half-duplex line for ``len * 10 / baud`` seconds once
the line is free, and is delivered when its last bit would have arrived. The simulated
slave answers at once (a real 4100 takes 20-40 ms, which belongs to the device, not to
the daemon, and is left out of both figures).

Wire-time limit of the same transactions, per cycle:
    sum over transactions of (request bytes + reply bytes) * 10 / baud + idle gap
The ratio achieved / limit shows what the daemon's own overhead costs; target >= 80%.

Run: ``.venv/bin/python bench/bench_modbus.py [--duration 10] [--protocol modbus_rtu]``
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path

from servomexd.acquisition.modbus import ModbusBusRegistry, ModbusSession, build_modbus_factory
from servomexd.config import DeviceConfig
from servomexd.model import Frame, ProtocolKind
from servomexd.protocol import modbus as mb
from servomexd.simulator.modbus import ModbusSimulator

ADDRESSES = (1, 2, 3, 4)


def wire_limit(protocol: ProtocolKind, baud: int, gap: float, slaves: int) -> float:
    """Poll cycles per second the line allows for these transactions and this idle gap."""
    seconds = 0.0
    for read in mb.broad_plan(mb.ChannelId).reads:
        request = mb.adu_length(protocol, len(read.pdu()))
        reply = mb.adu_length(protocol, read.response_pdu_length())
        seconds += (request + reply) * 10 / baud + gap
    return 1.0 / (seconds * slaves)


async def run(protocol: ProtocolKind, baud: int, gap: float, duration: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        link = Path(tmp) / "ttyBENCH"
        async with ModbusSimulator(
            protocol=protocol, addresses=ADDRESSES, link=link, pace_baud=baud
        ) as sim:
            buses = ModbusBusRegistry()
            sessions = []
            for address in ADDRESSES:
                device = DeviceConfig(
                    name=f"ox{address}",
                    port=str(link),
                    protocol=protocol.value,
                    baudrate=baud,
                    address=address,
                    inter_request_delay=gap,
                    request_timeout=1.0,
                )
                session = await build_modbus_factory(device, buses).open()
                assert isinstance(session, ModbusSession)
                sessions.append(session)
            sweeps = {address: 0 for address in ADDRESSES}
            failures = 0
            latencies: list[float] = []
            sim.relay.chunks.clear()
            started = time.monotonic()
            deadline = started + duration

            async def poll(session: ModbusSession) -> None:
                nonlocal failures
                while time.monotonic() < deadline:
                    event = await session.sweep()
                    if isinstance(event, Frame):
                        sweeps[session.device.address] += 1
                        if event.latency_s is not None:
                            latencies.append(event.latency_s)
                    else:
                        failures += 1

            async with asyncio.TaskGroup() as group:
                for session in sessions:
                    group.create_task(poll(session))
            elapsed = time.monotonic() - started
            wire = sim.wire_transactions()
            for session in sessions:
                await session.aclose()
            await buses.aclose()

    cycles = min(sweeps.values()) / elapsed
    limit = wire_limit(protocol, baud, gap, len(ADDRESSES))
    idles = [t.idle_before_s for t in wire[1:] if t.idle_before_s is not None]
    print(f"protocol            {protocol.value} @ {baud} baud, {len(ADDRESSES)} slaves, "
          f"idle gap {gap * 1000:.0f} ms, {elapsed:.1f} s")  # fmt: skip
    print(f"sweeps per slave    {', '.join(f'{a}:{n}' for a, n in sweeps.items())}")
    print(f"failed sweeps       {failures}")
    print(f"achieved            {cycles:.3f} poll cycles/s")
    print(f"wire-time limit     {limit:.3f} poll cycles/s")
    print(f"ratio               {cycles / limit * 100:.1f} % (target >= 80 %)")
    if latencies:
        median, worst = statistics.median(latencies) * 1000, max(latencies) * 1000
        print(f"sweep latency       median {median:.0f} ms, max {worst:.0f} ms "
              "(includes waiting for the shared line)")  # fmt: skip
    if idles:
        low, typical = min(idles) * 1000, statistics.median(idles) * 1000
        print(f"idle before request min {low:.1f} ms, median {typical:.1f} ms "
              f"over {len(wire)} transactions")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--baud", type=int, default=19200)
    parser.add_argument("--gap", type=float, default=0.05, help="inter_request_delay, s")
    parser.add_argument(
        "--protocol", choices=["modbus_rtu", "modbus_ascii"], default="modbus_rtu"
    )
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.WARNING)
    asyncio.run(run(ProtocolKind(args.protocol), args.baud, args.gap, args.duration))


if __name__ == "__main__":
    main()
