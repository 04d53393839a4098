"""Simulated analysers on pseudo-terminals, for tests, benchmarks and ``servomexd demo``.

``ContinuousSimulator`` (continuous.py) broadcasts Continuous-ASCII frames;
``PtyDevice`` (pty.py) is the simulated USB-serial adapter both simulators use or
can use; modbus.py answers as a Modbus slave; cli.py is ``servomexd simulate``.
"""
