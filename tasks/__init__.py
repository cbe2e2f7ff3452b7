"""Tasks, each one file registering itself with ``@register_task`` (shipped as seqbench.tasks)."""
