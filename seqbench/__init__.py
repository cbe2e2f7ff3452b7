"""seqbench: a benchmark suite for recurrent and sequence architectures.

The package's modules, from the ground of the import graph up:

- ground: ``errors``, ``registry`` (models, tasks, strategies), ``config`` (settings, presets, identity),
  ``files`` (atomic writes), ``faults`` (crash-test points);
- building blocks: ``model`` (what a backbone declares), ``resnet``, ``iss``, ``ema``, ``strategy``,
  ``measure``, ``data`` (data root, checksummed files, loaders);
- the kinds: ``task`` (the contract; sequence and token tasks), ``series``, ``image``, ``dense``, ``qa``;
- the engine: ``build`` (config -> ``Setup``), ``rundir`` (a run's folder), ``records`` (the record
  schema), ``runner`` (the loop);
- the commands: ``cli`` (run, list), ``report``, ``bench``, ``sweep``.

Models and tasks live in ``seqbench.models`` and ``seqbench.tasks`` (the repository's models/ and tasks/).
"""
from .registry import register_model, register_strategy, register_task  # noqa: F401

__version__ = "0.1.0"
