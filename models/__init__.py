"""Backbones, each one file registering itself with ``@register_model`` (shipped as seqbench.models)."""
