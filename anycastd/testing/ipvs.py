"""``FakeIpvs`` for tests: the in-memory twin of the IPVS actuator
(:class:`anycastd.actuators.memory.MemoryIpvs`, also the dry run's), under its test name."""

from anycastd.actuators.memory import MemoryIpvs as FakeIpvs

__all__ = ["FakeIpvs"]
