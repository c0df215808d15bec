"""EAT policy: simulator, schedulers (heuristic and learned), evaluation and the planning service."""

__version__ = "0.1.0"
