"""``FakeLoopback`` for tests: the in-memory twin of the loopback actuator
(:class:`anycastd.actuators.memory.MemoryLoopback`, also the dry run's), under its test name."""

from anycastd.actuators.memory import MemoryLoopback as FakeLoopback

__all__ = ["FakeLoopback"]
