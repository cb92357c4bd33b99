"""The namespace lab: network namespaces, veth pairs and FRR peers on this host.

Rule: every namespace and process it makes is its own (``acdt-*`` names, ended by PID) and
is removed again. Used by ``anycastd demo`` and by the integration tests; the daemon itself
never imports it. ``netns`` (namespaces, veth, commands inside them), ``frr`` (a bgpd peer).
"""
