"""WSPO and WPO training stages for LLaMA-Factory.

Importing this package does nothing heavy: the stages are wired into LLaMA-Factory lazily by
:mod:`llamafactory_wspo._autoload` when LLaMA-Factory itself is imported.
"""

__version__ = "0.1.0"
