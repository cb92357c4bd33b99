"""BGP announcements through ExaBGP: the ExaBGP text (commands), API client and the speaker.

The values are in :mod:`anycastd.model`; the RIB resolution is :mod:`anycastd.core.rib`.

Public surface is re-exported by :mod:`anycastd.actuators.exabgp`.
"""
