"""The ``wspo``, ``wpo`` and ``grpo`` training stages for LLaMA-Factory, and the ``llamafactory-wspo`` command.

Importing this package does nothing heavy: the stages are wired into LLaMA-Factory lazily by
:mod:`llamafactory_wspo._autoload` when LLaMA-Factory itself is imported (:mod:`llamafactory_wspo.host`).
"""

__version__ = "0.1.0"
