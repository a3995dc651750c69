"""The pure batch core: messages and state in, effects out (see ``core``)."""

from .core import Pipeline, topic_device
from .effects import Effects
from .state import Runtime, State, build_runtime

__all__ = ["Pipeline", "Effects", "State", "Runtime", "build_runtime", "topic_device"]
