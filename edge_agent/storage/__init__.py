"""Every table the agent owns, and the one place that writes them.

Owns the SQLite ledger (``ledger``: offers, codes, audit), the campaign
tables (``campaigns``), the push webhook's queue (``delivery``), privacy at
rest (``privacy``: sealed topics, forget, export) and :class:`Store`
(``store``), which applies a step's effects (a batch with offers in two
commits: its rows as one pending record first, then into their tables).  Each owner
declares its own numbered migrations through ``sync.schema.migrate``.
A new table goes in a module here.  It may import :mod:`edge_agent.pipeline`
(the effect rows it applies), :mod:`edge_agent.metrics`, ``sync``,
``store_config`` and ``geometry``; never transport, http, the shell or the
commands.
"""
