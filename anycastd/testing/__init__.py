"""Fakes and a fake clock for tests of anycastd and of code built on it.

Each fake behaves like its real counterpart, error cases included (``FakeLoopback``,
``FakeIpvs``, ``FakeSpeaker``, ``FakeClock``); import them from their modules.
``FakeLoopback`` and ``FakeIpvs`` are the actuators' in-memory twins
(``anycastd.actuators.memory``, which the dry run uses too) under their test names.
Production code never imports this package.
"""
