"""LLaMA-Factory as the plugin meets it: every point it relies on (:mod:`.checks`), the gate (:mod:`.gate`), and
what it changes in the host or its libraries: :mod:`.patches` (the parser, the tuner, and LLaMA-Board through
:mod:`llamafactory_wspo.webui`), :mod:`.dataset_pass` and :mod:`.compat`. Outside this package, only
:mod:`llamafactory_wspo.train.teardown` reaches into a library: it releases DeepSpeed's process groups when a stage
ends.

Nothing here is imported at interpreter start-up: :mod:`llamafactory_wspo._autoload` imports :mod:`.patches` only
once LLaMA-Factory has executed one of the modules it patches.
"""
