"""The aiohttp application and every HTTP route.

Owns the app (``app``), the shared key and token checks (``base``), and
the routes: admin and privacy (``app``, ``privacy``), the tills
(``pos``), the associates (``associates``, ``floor``), the shop page and
its WebSocket (``shop/``), the push webhook's admin routes (``delivery``)
and the vendor receivers (``sources/``: Meraki, Aruba).  A new route goes in
the module of its audience.  Handlers reach the agent through the
:class:`~edge_agent.http.base.AgentPort` protocol (what they use of it), not
the service.  It may import :mod:`edge_agent.pipeline`,
:mod:`edge_agent.storage`, :mod:`edge_agent.transport` and
:mod:`edge_agent.metrics`; never the shell or the commands.
"""
