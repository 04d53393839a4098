"""Rejected frames in the journal: the first one, then a summary a minute, then "clean".

Rejections are counted in metrics and stored as error rows, but an operator reading
``journalctl -p warning`` must see them too, without one line per bad frame (a wrong baud
rate rejects every frame). Per device:

* the first rejection (since start, or since the device was last clean) is a warning
  with its reason, the error and a hint at the usual cause;
* while rejections continue, at most one summary per ``interval`` (counts by reason and
  their share of all frames in that window);
* once a whole ``interval`` has passed with frames and no rejection, one info line says
  the device is clean again (the next rejection is a "first" again).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

SUMMARY_INTERVAL = 60.0

HINTS = {
    "noise": "bytes that are not frames: usually a wrong baudrate, parity, bytesize or "
    "stopbits (compare them with the analyser's communications menu)",
    "overlong": "a line with no frame end: usually a wrong baudrate or parity",
    "parse": "frames that do not decode: a wrong baudrate or parity, or another protocol "
    "on the line (try protocol = \"auto\")",
    "checksum": "corrupted frames: check the cabling, its shield and ground (EMI), and the "
    "cable length for the baud rate",
    "timeout": "the analyser did not answer: check its Modbus address, the RS485 wiring "
    "(A/B swapped?) and inter_request_delay",
    "modbus_exception": "the analyser refused a request (see error)",
}


class RejectionLog:
    """Rate-limited journal lines about one device's rejected frames."""

    def __init__(
        self,
        logger: Any,
        clock: Callable[[], float],
        interval: float = SUMMARY_INTERVAL,
    ) -> None:
        self._log = logger
        self._clock = clock
        self.interval = interval
        self._rejecting = False
        self._window_start = 0.0
        self._last_rejection = 0.0
        self._counts: Counter[str] = Counter()
        self._frames = 0
        self._total: Counter[str] = Counter()

    def frame(self) -> None:
        """A valid frame arrived."""
        if not self._rejecting:
            return
        self._frames += 1
        now = self._clock()
        if now - self._last_rejection >= self.interval:
            self._log.info(
                "device.rejections_stopped",
                clean_for_s=round(now - self._last_rejection, 1),
                rejected=self._describe(self._total),
            )
            self._rejecting = False
            self._total.clear()
            self._counts.clear()
            self._frames = 0

    def rejected(self, reason: str, error: str) -> bool:
        """A frame (or a poll) was rejected for ``reason``; True when a line was logged."""
        now = self._clock()
        self._last_rejection = now
        self._total[reason] += 1
        if not self._rejecting:
            self._rejecting = True
            self._window_start = now
            self._counts = Counter({reason: 1})
            self._frames = 0
            self._log.warning(
                "device.frame_rejected",
                reason=reason,
                error=error,
                hint=HINTS.get(reason, "see the error"),
                next_summary_in_s=self.interval,
            )
            return True
        self._counts[reason] += 1
        if now - self._window_start >= self.interval:
            rejected = sum(self._counts.values())
            share = rejected / (rejected + self._frames)
            self._log.warning(
                "device.frames_rejected_summary",
                window_s=round(now - self._window_start, 1),
                rejected=self._describe(self._counts),
                frames_ok=self._frames,
                rejected_share=f"{share:.0%}",
                hint=HINTS.get(self._counts.most_common(1)[0][0], "see the error"),
            )
            self._window_start = now
            self._counts.clear()
            self._frames = 0
            return True
        return False

    @staticmethod
    def _describe(counts: Counter[str]) -> str:
        return ",".join(f"{reason}:{n}" for reason, n in counts.most_common())
