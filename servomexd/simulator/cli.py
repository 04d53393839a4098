"""``servomexd simulate``: run a simulated analyser until its frames are sent or a signal.

``--link PATH`` serves it on a pty; ``--listen HOST:PORT`` as a raw-TCP device server,
``--rfc2217 HOST:PORT`` as an RFC 2217 one (the ready line then names the URL to put
in ``port``).

Prints one ``ready <link> -> <device>`` line on stdout (flushed) once the link exists,
so a parent process knows when to connect; the link itself is created atomically,
so polling for the path works as well. SIGTERM and SIGINT stop it cleanly: the link
is removed and the exit status is 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from servomexd.simulator.continuous import ContinuousSimulator
from servomexd.simulator.tcp import Rfc2217Wire, TcpWire, split_host_port


def run_simulate(args: argparse.Namespace) -> int:
    targets = [t for t in (args.link, args.listen, args.rfc2217) if t is not None]
    if len(targets) != 1:
        print("servomexd simulate: give one of --link, --listen, --rfc2217", file=sys.stderr)
        return 2
    if args.rfc2217 is not None and args.protocol == "modbus_tcp":
        print("servomexd simulate: modbus_tcp is served with --listen only", file=sys.stderr)
        return 2
    if args.protocol == "modbus_tcp" and args.listen is None:
        print("servomexd simulate: modbus_tcp needs --listen HOST:PORT", file=sys.stderr)
        return 2
    if args.protocol != "continuous":
        from servomexd.simulator.modbus import run_modbus_simulator

        return run_modbus_simulator(args)
    if args.replug_after is not None and args.unplug_after is None:
        print("servomexd simulate: --replug-after needs --unplug-after", file=sys.stderr)
        return 2
    try:
        wire = _wire(args)
        simulator = ContinuousSimulator(
            args.link,
            period=args.period,
            frames=args.frames,
            emit_log=args.emit_log,
            corrupt_every=args.corrupt_every,
            noise_every=args.noise_every,
            unplug_after=args.unplug_after,
            replug_after=args.replug_after,
            seed=args.seed,
            wire=wire,
            stall_after=args.stall_after,
        )
    except ValueError as error:
        print(f"servomexd simulate: {error}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_run(simulator))
    except OSError as error:
        print(f"servomexd simulate: {error}", file=sys.stderr)
        return 1
    return 0


def _wire(args: argparse.Namespace) -> TcpWire | None:
    if args.listen is not None or args.rfc2217 is not None:
        # Connections, refusals, stalls and the RFC 2217 settings a client asked for.
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.listen is not None:
        return TcpWire(*split_host_port(args.listen))
    if args.rfc2217 is not None:
        return Rfc2217Wire(*split_host_port(args.rfc2217))
    return None


async def _run(simulator: ContinuousSimulator) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, simulator.stop)
    task = asyncio.create_task(simulator.run())
    ready = asyncio.create_task(simulator.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if ready.done() and not task.done():
        print(f"ready {simulator.link} -> {simulator.device.slave_name}", flush=True)
    else:
        ready.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ready
    await task
