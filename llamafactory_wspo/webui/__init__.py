"""LLaMA-Board (``llamafactory-cli webui``): the ``wspo`` and ``wpo`` stages in the Train tab.

:func:`llamafactory_wspo.integration.on_import` calls :func:`patch` right after LLaMA-Factory (a supported
release only) has executed one of LLaMA-Board's modules; each is extended by the module of the same name here:

* ``webui.control`` (:mod:`.control`): the stage labels ``WSPO`` and ``WPO`` join ``TRAINING_STAGES`` (after the
  stock ones), ``wpo`` joins the stages that list pairwise data sets, and WSPO lists data sets of both kinds;
* ``webui.components.train`` (:mod:`.components.train`): the Train tab gets one more accordion (after "RLHF
  configurations") with the settings of the selected plugin stage, hidden for every other stage; its elements are
  registered like the stock ones (``train.weak_base_model``, ...), so "Save/Load arguments" and a resumed run keep
  them, and their labels come from :mod:`.locales` in every language LLaMA-Board offers;
* ``webui.runner`` (:mod:`.runner`): the generated arguments (preview, ``training_args.yaml`` of "Start") get the
  stage's fields, and a WSPO run without weak models is refused with a message.

Stock stages build exactly the arguments and the saved configurations that they build without the plugin.
Nothing here is imported before LLaMA-Board itself is.
"""


def patch(module) -> None:
    r"""Extend the LLaMA-Board module ``module``, which LLaMA-Factory has just executed, if it is one we extend."""
    name = module.__name__
    if name == "llamafactory.webui.control":
        from . import control

        control.patch(module)
    elif name == "llamafactory.webui.components.train":
        from .components import train

        train.patch(module)
    elif name == "llamafactory.webui.runner":
        from . import runner

        runner.patch(module)
