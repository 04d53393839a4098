"""The delivery side: memory buffer -> spool -> sink, exactly once where the sink can.

``flusher`` (buffer to spool), ``deliverer`` (spool to sink with checkpoints; the
exactly-once argument is its docstring), ``health`` (the sink's state, logs, metrics
and the readiness snapshot); ``writer`` runs them together.
"""

from servomexd.delivery.health import DeliveryHealth
from servomexd.delivery.writer import Writer

__all__ = ["DeliveryHealth", "Writer"]
