"""How bytes enter and leave the agent, other than HTTP requests.

Owns the paho-mqtt client driven by the asyncio loop (``mqtt``), the
embedded amqtt broker for ``demo`` and ``simulate`` (``embedded``) and the
retailer's push webhook sender (``webhook``).  It may import
:mod:`edge_agent.pipeline` (effect types), :mod:`edge_agent.storage` (the
webhook's queue) and :mod:`edge_agent.metrics`; never http, the shell or the
commands.
"""
