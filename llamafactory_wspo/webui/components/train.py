"""``llamafactory.webui.components.train``: the settings of the selected plugin stage in the Train tab."""

import dataclasses
import functools
from typing import Any

from ...host.checks import HostMismatch, host_attr, host_module, keyword_names
from ...host.gate import LLAMABOARD
from ...hparams import WPO_ALIGNMENTS, WPO_WEIGHTINGS, WSPO_RESPONSES, WSPOArguments
from ..common import ELEM_ID_PREFIX, FIELDS, STAGE_FIELDS, TAB, get_stage, localize
from ..locales import TAB_LABELS, WSPO_PREF_BETA


# The stock Train tab's elements that the plugin reads (runner), relabels (pref_beta) or places its own after.
HOST_ELEMENTS = ("training_stage", "pref_beta", "pref_ftx", "pref_loss", "extra_args", "rlhf_tab")


def check(train) -> None:
    r"""``create_train_tab(engine)``, the elements it registers, its inputs taken from the manager, the templates."""
    create_train_tab = host_attr(train, "create_train_tab", ("engine",))
    missing = sorted(set(HOST_ELEMENTS) - keyword_names(create_train_tab))
    if missing:
        raise HostMismatch(f"{train.__name__}.create_train_tab has no element {', '.join(missing)}")
    if "get_base_elems" not in create_train_tab.__code__.co_names:
        raise HostMismatch(f"{train.__name__}.create_train_tab no longer starts from engine.manager.get_base_elems()")
    host_attr(host_module("llamafactory.data.template"), "TEMPLATES")  # weak_template's list


def patch(train) -> None:
    train.create_train_tab = _wrap_create_train_tab(train.create_train_tab)


def _wrap_create_train_tab(original):
    r"""The stock Train tab, with one more accordion (after "RLHF configurations") holding the plugin's fields.

    Only where all of LLaMA-Board's checks hold; otherwise the stock tab (the failed check has warned).
    """

    @functools.wraps(original)
    def create_train_tab(engine):
        if not LLAMABOARD.active:
            return original(engine)

        plugin_elems = _create_plugin_elems()  # rendered first, moved after the RLHF accordion below
        elem_dict = original(_TrainTabEngine(engine, {plugin_elems[key] for key in FIELDS}))
        _move_after(plugin_elems[TAB], elem_dict.get("rlhf_tab"))
        _connect(engine, elem_dict, plugin_elems)
        elem_dict.update(plugin_elems)  # registered by LLaMA-Board as `train.<name>`, like the stock elements
        return elem_dict

    return create_train_tab


class _TrainTabEngine:
    r"""The engine as the stock ``create_train_tab`` sees it: its manager's base elements include ``inputs``.

    The stock tab starts from ``engine.manager.get_base_elems()`` (the top bar: language, model, template, ...), adds
    its own elements, and hands that set to "Preview command", "Start", "Save/Load arguments" and the output-dir
    check. Registering the plugin's fields with ``Manager.add_elems`` alone would not put them there, and changing
    ``get_base_elems`` on the shared manager would also add them to the Evaluate and Chat tabs. So the stock tab gets
    this view, for the one call: ``manager.get_base_elems()`` returns the top bar plus ``inputs``, and every other
    attribute is the engine's (and its manager's) own.
    """

    def __init__(self, engine, inputs: set[Any]) -> None:
        self._engine = engine
        self.manager = _TrainTabManager(engine.manager, inputs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


class _TrainTabManager:
    r"""``manager`` of :class:`_TrainTabEngine`: the engine's manager, whose base elements include ``inputs``."""

    def __init__(self, manager, inputs: set[Any]) -> None:
        self._manager = manager
        self._inputs = inputs

    def get_base_elems(self) -> set[Any]:
        return self._manager.get_base_elems() | self._inputs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._manager, name)


def _create_plugin_elems() -> dict[str, Any]:
    import gradio as gr
    from llamafactory.data.template import TEMPLATES

    def elem_id(key: str) -> str:
        return ELEM_ID_PREFIX + key

    with gr.Accordion(open=True, visible=False, elem_id=elem_id("settings")) as tab:
        with gr.Row():
            weak_base_model = gr.Textbox(scale=3, visible=False, elem_id=elem_id("weak_base_model"))
            weak_aligned_model = gr.Textbox(scale=3, visible=False, elem_id=elem_id("weak_aligned_model"))
            weak_template = gr.Dropdown(  # empty: the weak models share the strong tokenizer and template
                choices=list(TEMPLATES), value=None, scale=1, visible=False, elem_id=elem_id("weak_template")
            )
            wspo_response = gr.Dropdown(
                choices=list(WSPO_RESPONSES), value="chosen", scale=1, visible=False, elem_id=elem_id("wspo_response")
            )
            wspo_shift_warning = gr.Number(  # nats per token; the default of the argument
                value=WSPOArguments.wspo_shift_warning, scale=1, visible=False, elem_id=elem_id("wspo_shift_warning")
            )
            wpo_alignment = gr.Dropdown(
                choices=list(WPO_ALIGNMENTS), value="sampled", scale=1, visible=False, elem_id=elem_id("wpo_alignment")
            )
            wpo_weighting = gr.Dropdown(
                choices=list(WPO_WEIGHTINGS), value="pair", scale=1, visible=False, elem_id=elem_id("wpo_weighting")
            )
            precompute_logps = gr.Checkbox(value=True, scale=1, elem_id=elem_id("precompute_logps"))
        grpo = _create_grpo_elems(elem_id)

    return {
        TAB: tab,
        "weak_base_model": weak_base_model,
        "weak_aligned_model": weak_aligned_model,
        "weak_template": weak_template,
        "wspo_response": wspo_response,
        "wspo_shift_warning": wspo_shift_warning,
        "wpo_alignment": wpo_alignment,
        "wpo_weighting": wpo_weighting,
        "precompute_logps": precompute_logps,
        **grpo,
    }


def _create_grpo_elems(elem_id) -> dict[str, Any]:
    r"""The ``grpo`` stage's fields (a row of their own), with the defaults of its arguments."""
    import gradio as gr

    from ...hparams import GRPOArguments

    defaults = {field.name: field.default for field in dataclasses.fields(GRPOArguments)}

    def number(key: str, integer: bool) -> Any:
        return gr.Number(
            value=defaults[key], precision=0 if integer else None, scale=1, visible=False, elem_id=elem_id(key)
        )

    with gr.Row():
        elems = {
            "grpo_reward_funcs": gr.Textbox(
                value=defaults["grpo_reward_funcs"], scale=2, visible=False, elem_id=elem_id("grpo_reward_funcs")
            ),
            "length_reward_min": number("length_reward_min", True),
            "length_reward_max": number("length_reward_max", True),
            "grpo_num_generations": number("grpo_num_generations", True),
            "grpo_max_completion_length": number("grpo_max_completion_length", True),
        }
    with gr.Row():
        elems["grpo_temperature"] = gr.Slider(
            minimum=0.01, maximum=2.0, step=0.01, value=defaults["grpo_temperature"], scale=1, visible=False,
            elem_id=elem_id("grpo_temperature"),
        )  # fmt: skip
        elems["grpo_top_p"] = gr.Slider(
            minimum=0.01, maximum=1.0, step=0.01, value=defaults["grpo_top_p"], scale=1, visible=False,
            elem_id=elem_id("grpo_top_p"),
        )  # fmt: skip
        elems["grpo_beta"] = number("grpo_beta", False)
    return elems


def _move_after(block, anchor) -> None:
    r"""Put ``block`` right after ``anchor`` in their common parent's layout (before the page is served)."""
    parent = getattr(anchor, "parent", None)
    if parent is None or getattr(block, "parent", None) is not parent:
        return

    parent.children.remove(block)
    parent.children.insert(parent.children.index(anchor) + 1, block)


def _connect(engine, elem_dict: dict[str, Any], plugin_elems: dict[str, Any]) -> None:
    r"""Show the selected plugin stage's settings, label ``pref_beta`` as γ for WSPO, in every language, and untick
    "Use neat packing" for GRPO."""
    lang = engine.manager.get_elem_by_id("top.lang")
    training_stage, pref_beta = elem_dict["training_stage"], elem_dict["pref_beta"]
    outputs = [plugin_elems[TAB], *(plugin_elems[key] for key in FIELDS), pref_beta]

    def on_stage_change(lang_value: str, stage_label: str):
        return _plugin_updates(outputs, lang_value, stage_label, open_tab=True)

    def on_lang_change(lang_value: str, stage_label: str):
        return _plugin_updates(outputs, lang_value, stage_label, open_tab=False)

    training_stage.change(on_stage_change, [lang, training_stage], outputs, queue=False)
    lang.change(on_lang_change, [lang, training_stage], outputs, queue=False)

    # "Use neat packing" for GRPO: LLaMA-Factory refuses it, so selecting GRPO unticks it, as LLaMA-Board's own
    # stage change unticks "Pack sequences" for every stage but pre-training. Every other stage leaves the box as
    # it is; WSPO and WPO pass both boxes on (`packing`, `neat_packing`). The runner refuses GRPO with either box
    # ticked (a loaded configuration).
    def on_stage_change_packing(stage_label: str):
        import gradio as gr

        return gr.update(value=False) if get_stage(stage_label) == "grpo" else gr.update()

    training_stage.change(on_stage_change_packing, [training_stage], [elem_dict["neat_packing"]], queue=False)

    # LLaMA-Board relabels every element on a language change; the label of `pref_beta` depends on the stage,
    # so it is left to `on_lang_change` (one writer per element: no race between the two listeners). The engine's
    # `change_lang` is wrapped for good, before LLaMA-Board connects it to the language drop-down.
    stock_change_lang = engine.change_lang

    @functools.wraps(stock_change_lang)
    def change_lang(lang_value: str):
        updates = stock_change_lang(lang_value)
        updates.pop(pref_beta, None)
        return updates

    engine.change_lang = change_lang


def _plugin_updates(outputs: list[Any], lang: str | None, stage_label: str | None, open_tab: bool) -> list[Any]:
    r"""Updates of ``outputs`` (the accordion, the plugin's fields, ``pref_beta``) for a stage and a language."""
    from llamafactory.webui.locales import LOCALES as HOST_LOCALES

    tab, *field_elems, pref_beta = outputs
    stage = get_stage(stage_label)
    fields = STAGE_FIELDS.get(stage, ())
    tab_args: dict[str, Any] = {"visible": bool(fields)}
    if fields:
        tab_args["label"] = localize(TAB_LABELS[stage], lang)
        if open_tab:
            tab_args["open"] = True

    updates = [type(tab)(**tab_args)]
    updates += [type(elem)(visible=key in fields) for key, elem in zip(FIELDS, field_elems)]
    beta = WSPO_PREF_BETA if stage == "wspo" else HOST_LOCALES["pref_beta"]
    updates.append(type(pref_beta)(**localize(beta, lang)))
    return updates
