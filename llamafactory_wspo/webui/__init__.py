"""LLaMA-Board (``llamafactory-cli webui``): the ``wspo``, ``wpo`` and ``grpo`` stages in the Train tab.

:func:`llamafactory_wspo.host.patches.on_import` calls :func:`check`, then :func:`patch`, right after
LLaMA-Factory has executed one of LLaMA-Board's modules; each is handled by the module of the same name here,
whose ``check`` names every point of the host module that its ``patch`` relies on:

* ``webui.control`` (:mod:`.control`): the stage labels ``WSPO``, ``WPO`` and ``GRPO`` join ``TRAINING_STAGES``
  (after the stock ones), ``wpo`` joins the stages that list pairwise data sets, and WSPO lists data sets of both
  kinds;
* ``webui.components.train`` (:mod:`.components.train`): the Train tab gets one more accordion (after "RLHF
  configurations") with the settings of the selected plugin stage, hidden for every other stage; its elements are
  registered like the stock ones (``train.weak_base_model``, ...), so "Save/Load arguments" and a resumed run keep
  them, and their labels come from :mod:`.locales` in every language LLaMA-Board offers; selecting GRPO unticks
  "Use neat packing" (LLaMA-Factory refuses it there);
* ``webui.runner`` (:mod:`.runner`): the generated arguments (preview, ``training_args.yaml`` of "Start") get the
  stage's fields, and a WSPO run without weak models, or GRPO with a packing box ticked, is refused with a message.
  WSPO and WPO take LLaMA-Board's packing boxes as every stage does (``packing``, ``neat_packing``);
* ``webui.engine`` (:mod:`.engine`): checked only (the language switch and the element manager).

The stages join the "Stage" list only once all four modules are checked and every check holds (the
``LLAMABOARD`` area of :mod:`llamafactory_wspo.host.gate`); otherwise the Train tab is the stock one, with one
warning naming the point. Stock stages build exactly the arguments and the saved configurations that they build
without the plugin. Nothing here is imported before LLaMA-Board itself is.
"""

import importlib


_COUNTERPARTS = {
    "llamafactory.webui.control": ".control",
    "llamafactory.webui.components.train": ".components.train",
    "llamafactory.webui.runner": ".runner",
    "llamafactory.webui.engine": ".engine",
}


def _counterpart(module):
    return importlib.import_module(_COUNTERPARTS[module.__name__], __name__)


def check(module) -> None:
    r"""Raise :class:`~llamafactory_wspo.host.checks.HostMismatch` where ``module`` lacks a point the patch needs."""
    _counterpart(module).check(module)


def patch(module):
    r"""Extend the LLaMA-Board module ``module``; returns what to do once all of LLaMA-Board is checked (or None)."""
    return _counterpart(module).patch(module)
