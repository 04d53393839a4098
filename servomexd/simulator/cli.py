"""``servomexd simulate``: run a simulated analyser until its frames are sent or a signal.

Prints one ``ready <link> -> <device>`` line on stdout (flushed) once the link exists,
so a parent process knows when to connect; the link itself is created atomically,
so polling for the path works as well. SIGTERM and SIGINT stop it cleanly: the link
is removed and the exit status is 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from servomexd.simulator.continuous import ContinuousSimulator


def run_simulate(args: argparse.Namespace) -> int:
    if args.protocol != "continuous":
        from servomexd.simulator.modbus import run_modbus_simulator

        return run_modbus_simulator(args)
    if args.replug_after is not None and args.unplug_after is None:
        print("servomexd simulate: --replug-after needs --unplug-after", file=sys.stderr)
        return 2
    try:
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
