"""BGP through ExaBGP, the one home of everything that talks to it.

Rule: this package imports nothing (the relay starts under it). ``protocol`` (the Speaker
Protocol, PeerState, NullSpeaker), ``speaker`` (ExabgpSpeaker: routes, read-back, the relay
socket), ``supervisor`` (the managed ExaBGP process), ``client`` (one API connection),
``commands`` (ExaBGP's text, pure), ``relay`` (ExaBGP's API helper: stdlib only).
The values are in :mod:`anycastd.model`; the RIB resolution is :mod:`anycastd.core.rib`.
"""
