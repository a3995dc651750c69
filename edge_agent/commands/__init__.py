"""The ``edge-agent`` command line: thin commands over the rest.

Owns argument parsing (``cli``), the demo (``demo``), the self-contained
simulator run (``simulate``), the MQTT tools (``tools``: watch, publish,
ping), the campaign report (``report``) and the audit trail (``audit``).
It sits on top and may import every room and the shell; nothing imports it.
"""
