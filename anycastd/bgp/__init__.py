"""BGP announcements through ExaBGP: model, pure planning, API client and the speaker.

Public surface is re-exported by :mod:`anycastd.actuators.exabgp`.
"""
