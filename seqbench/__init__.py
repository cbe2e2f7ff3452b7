"""seqbench: a benchmark suite for recurrent and sequence architectures."""
from .registry import register_model, register_task  # noqa: F401

__version__ = "0.1.0"
