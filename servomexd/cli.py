"""Command-line parsing only: each sub-command hands off to the module that does the work.

Sub-command modules are imported lazily so that ``servomexd --version`` and
``check-config`` stay fast and never pull in drivers they do not need.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from servomexd import __version__

DEFAULT_CONFIG_PATH = "/etc/servomexd/servomexd.toml"


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0 or value == float("inf"):  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number > 0, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="servomexd",
        description="Data-acquisition daemon for Servomex SERVOPRO 4000-series gas analysers.",
    )
    parser.add_argument("--version", action="version", version=f"servomexd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon (what systemd starts)")
    run.add_argument(
        "--config",
        help=f"TOML configuration (default: $SERVOMEXD_CONFIG or {DEFAULT_CONFIG_PATH})",
    )

    check = commands.add_parser(
        "check-config", help="validate the configuration and print it with secrets masked"
    )
    check.add_argument(
        "--config",
        help=f"TOML configuration (default: $SERVOMEXD_CONFIG or {DEFAULT_CONFIG_PATH})",
    )
    check.add_argument(
        "--no-port-check",
        action="store_true",
        help="do not look at the serial ports (when building an image without adapters)",
    )

    demo = commands.add_parser(
        "demo", help="simulated analyser + daemon recording into SQLite in ./servomexd-demo"
    )
    demo.add_argument("--dir", default="servomexd-demo", help="where the demo keeps its files")
    demo.add_argument(
        "--duration", type=_positive_float, help="stop after this many seconds (default: Ctrl-C)"
    )
    demo.add_argument("--period", type=_positive_float, default=1.0, help="frame period, s")
    demo.add_argument(
        "--metrics-listen", default="127.0.0.1:9723", help="metrics endpoint (host:port)"
    )
    demo.add_argument(
        "--protocol",
        default="continuous",
        choices=["continuous", "modbus_rtu", "modbus_ascii"],
        help="wire protocol of the simulated analyser",
    )

    decode = commands.add_parser(
        "decode", help="decode a Continuous-ASCII capture into long-format rows"
    )
    decode.add_argument("source", nargs="?", default="-", help="capture file, or - for stdin")
    decode.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    decode.add_argument("--device", default="capture", help="value of the device column")

    simulate = commands.add_parser(
        "simulate", help="a simulated analyser on a pseudo-terminal linked at --link"
    )
    simulate.add_argument("--link", help="path of the symlink to create (a pty)")
    simulate.add_argument(
        "--listen", help="serve over raw TCP on HOST:PORT instead (port 0: any free port)"
    )
    simulate.add_argument(
        "--rfc2217", help="serve as an RFC 2217 device server on HOST:PORT (continuous)"
    )
    simulate.add_argument(
        "--protocol",
        default="continuous",
        choices=["continuous", "modbus_rtu", "modbus_ascii", "modbus_tcp"],
    )
    simulate.add_argument(
        "--address",
        type=int,
        action="append",
        help="Modbus slave address (repeat for a multidrop bus; default 1)",
    )
    simulate.add_argument("--period", type=_positive_float, default=2.0, help="frame period, s")
    simulate.add_argument("--frames", type=_positive_int, help="stop after N frames")
    simulate.add_argument("--emit-log", help="write one JSON line per frame sent")
    simulate.add_argument(
        "--corrupt-every", type=_positive_int, help="send a bad checksum every Nth frame"
    )
    simulate.add_argument(
        "--noise-every", type=_positive_int, help="send a noise line before every Nth frame"
    )
    simulate.add_argument(
        "--unplug-after", type=_positive_float, help="remove the device after S seconds"
    )
    simulate.add_argument(
        "--replug-after", type=_positive_float, help="bring it back S seconds after unplugging"
    )
    simulate.add_argument(
        "--stall-after",
        type=_positive_float,
        help="network only: stop sending after S seconds but keep the connection (half-open)",
    )
    simulate.add_argument("--seed", type=int, default=0, help="seed for the simulated values")

    from servomexd.spool_cli import add_spool_parser  # argparse only: cheap to import

    add_spool_parser(
        commands, f"TOML configuration (default: $SERVOMEXD_CONFIG or {DEFAULT_CONFIG_PATH})"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command: str = args.command
    if command == "decode":
        from servomexd.decode import run_decode

        return run_decode(args.source, fmt=args.format, device=args.device)
    if command == "simulate":
        from servomexd.simulator.cli import run_simulate

        return run_simulate(args)
    if command == "run":
        return _run(args.config)
    if command == "check-config":
        from servomexd.check import check_config

        return check_config(args.config, port_check=not args.no_port_check)
    if command == "spool":
        from servomexd.spool_cli import run_spool

        return run_spool(args)
    if command == "demo":
        from servomexd.demo import run_demo

        return run_demo(args)
    print(f"servomexd: unknown command {command}", file=sys.stderr)
    return 2


def _run(config: str | None) -> int:
    """``servomexd run``: an invalid configuration is reported with journald priority
    ``<3>`` (logging is not configured yet) and exit 78, by ``run_daemon``."""
    from servomexd.daemon import run_daemon

    return run_daemon(config)
