"""How much a /metrics scrape and observe_frame cost on the daemon's event loop.

The scrape is served on the acquisition loop (generate_latest is CPU-bound), so its
duration is how long every device waits once per scrape. Run:

    .venv/bin/python bench/bench_metrics.py [--devices 32] [--scrapes 200]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import statistics
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from servomexd.http import MetricsServer
from servomexd.metrics import Metrics
from servomexd.model import Frame, Rejection
from servomexd.protocol.continuous import ContinuousFramer

CAPTURE = Path(__file__).resolve().parents[1] / "tests/fixtures/continuous_4100_live_5ch.bin"


class Ready:
    def readiness(self) -> tuple[bool, dict[str, object]]:
        return True, {}


def frames() -> list[Frame]:
    events = ContinuousFramer().feed(CAPTURE.read_bytes())
    return [e for e in events if not isinstance(e, Rejection)]


async def scrape(port: int, gzip_ok: bool) -> tuple[float, int]:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    extra = "Accept-Encoding: gzip\r\n" if gzip_ok else ""
    writer.write(f"GET /metrics HTTP/1.1\r\nHost: b\r\n{extra}\r\n".encode())
    raw = await reader.read()
    writer.close()
    return time.perf_counter() - started, len(raw)


async def main(devices: int, scrapes: int) -> None:
    metrics = Metrics(CollectorRegistry())
    sample_frames = frames()
    names = [f"analyser-{i:02d}" for i in range(devices)]
    for name in names:
        metrics.register_device(name)
    metrics.register_sink("sqlite")

    observations = 20_000
    started = time.perf_counter()
    for i in range(observations):
        metrics.observe_frame(names[i % devices], sample_frames[i % len(sample_frames)])
    per_frame_us = (time.perf_counter() - started) / observations * 1e6

    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        # How late a 1 ms sleep wakes up: what a device reader waits during scrapes.
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            started = loop.time()
            await asyncio.sleep(0.001)
            lags.append(loop.time() - started - 0.001)

    async with MetricsServer("127.0.0.1", 0, metrics.registry, Ready()) as server:
        tick = asyncio.create_task(ticker())
        for gzip_ok in (False, True):
            timings: list[float] = []
            size = 0
            for _ in range(scrapes):
                elapsed, size = await scrape(server.bound_port, gzip_ok)
                timings.append(elapsed)
            timings.sort()
            print(
                f"scrape {'gzip' if gzip_ok else 'text'}: {devices} devices, {size} bytes, "
                f"p50 {statistics.median(timings) * 1e3:.2f} ms, "
                f"p99 {timings[int(len(timings) * 0.99) - 1] * 1e3:.2f} ms"
            )
        stop.set()
        await tick
    print(f"event-loop lag during scrapes: max {max(lags) * 1e3:.1f} ms, "
          f"p99 {sorted(lags)[int(len(lags) * 0.99) - 1] * 1e3:.1f} ms")
    text = generate_latest(metrics.registry)
    series = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
    print(f"series exported: {series}; gzip ratio {len(gzip.compress(text, 1)) / len(text):.2f}")
    print(f"observe_frame (5 channels): {per_frame_us:.1f} us per frame")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=32)
    parser.add_argument("--scrapes", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.devices, args.scrapes))
