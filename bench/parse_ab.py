"""Interleaved A/B of parse_frame: this checkout against another checkout's
``servomexd/protocol/continuous.py`` (same process, same frames, alternating runs,
best of ``--rounds``), with the reference parser of bench_parse.py in the same runs.

    .venv/bin/python bench/parse_ab.py /path/to/other/checkout [--rounds 7]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_parse import all_new, capture_frames, live_like, reference_parse

from servomexd.protocol import continuous as ours


def load_other(tree: Path) -> object:
    path = tree / "servomexd" / "protocol" / "continuous.py"
    spec = importlib.util.spec_from_file_location("other_continuous", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def once(frames: Sequence[bytes], parse: Callable[[bytes], object]) -> float:
    started = time.perf_counter()
    for raw in frames:
        parse(raw)
    return (time.perf_counter() - started) / len(frames)


def main(args: argparse.Namespace) -> int:
    other = load_other(Path(args.other).resolve())
    now = datetime.now(UTC)
    workloads = {
        "captures": capture_frames() * 400,
        "live-like": live_like(5000),
        "all-new": all_new(5000),
    }
    parsers: dict[str, Callable[[bytes], object]] = {
        "this": lambda raw: ours.parse_frame(raw, received_at=now, monotonic_ns=1),
        "other": lambda raw: other.parse_frame(  # type: ignore[attr-defined]
            raw, received_at=now, monotonic_ns=1
        ),
        "reference": lambda raw: reference_parse(raw, now, 1),
    }
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.rounds):
        for workload, frames in workloads.items():
            for name, parse in parsers.items():
                if name == "reference" and workload != "all-new":
                    continue
                key = (workload, name)
                best[key] = min(best.get(key, float("inf")), once(frames, parse))
    ref = best[("all-new", "reference")]
    print(f"best of {args.rounds} interleaved rounds, us per frame "
          f"(reference parser on all-new: {ref * 1e6:.2f} us)")
    for workload in workloads:
        this, that = best[(workload, "this")], best[(workload, "other")]
        print(f"{workload:<10} this {this * 1e6:6.2f}  other {that * 1e6:6.2f}  "
              f"this/other speed {that / this:4.2f}x  vs reference: this {ref / this:4.1f}x, "
              f"other {ref / that:4.1f}x")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other")
    parser.add_argument("--rounds", type=int, default=7)
    sys.exit(main(parser.parse_args()))
