"""The pure batch core: messages and state in, effects out.

Owns decoding (``codecs``: bytes to :class:`Ping`, with reasons), the step
(``core``: position, classify, track, decide), the control messages
(``control``: actions, consent, inventory), the rules that pick an offer
(``decisions``, ``campaigns``, ``guard``), the associates' alerts
(``alerts``), the store floor (``floor``), and the effect rows the shell
applies (``effects``).  It does no I/O and reads no clock: time is a
parameter.  It may import ``geometry``, ``store_config``, ``sync``'s pure
helpers and :mod:`edge_agent.metrics`; never storage, transport, http, the
shell or the commands (``tests/test_layers.py``).
"""

from .core import Pipeline, topic_device
from .effects import Effects
from .state import Runtime, State, build_runtime

__all__ = ["Pipeline", "Effects", "State", "Runtime", "build_runtime", "topic_device"]
