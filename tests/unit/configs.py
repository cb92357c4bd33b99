"""The config texts the unit tests share: the [bgp] section (one neighbor on 127.0.0.2, never
connected to: the speakers are fakes) and the heads of the controller's and the daemon's
configs. The services are each test file's own."""

from __future__ import annotations

#: The [bgp] section.
BGP = """
[bgp]
router_id = "192.0.2.1"
local_as = 65001
[[bgp.neighbors]]
address = "127.0.0.2"
peer_as = 65000
local_address = "127.0.0.1"
"""

#: A [bgp] section for the planner's configs: without one nothing is announced.
BGP_HEAD = BGP + 'families = ["ipv4 unicast", "ipv6 unicast"]\n'

#: The controller tests' head: node "t", a 30 s reconcile timer, no API.
CONTROLLER_HEAD = """
[global]
node = "t"
reconcile_interval = "30s"
[api]
enabled = false""" + BGP

#: The daemon tests' head, to ``.format(tmp=...)``: state and runtime files in tmp, no API,
#: no metrics endpoint.
DAEMON_HEAD = """
[global]
node = "t"
reconcile_interval = "30s"
state_dir = "{tmp}"
runtime_dir = "{tmp}"
[api]
enabled = false
[metrics]
enabled = false""" + BGP
