"""LLaMA-Board (``llamafactory-cli webui``): the ``wspo`` and ``wpo`` stages in the Train tab.

:func:`llamafactory_wspo.integration.on_import` calls :func:`patch` right after LLaMA-Factory (a supported
release only) has executed one of LLaMA-Board's modules:

* ``webui.control``: the stage labels ``WSPO`` and ``WPO`` join ``TRAINING_STAGES`` (after the stock ones),
  ``wpo`` joins the stages that list pairwise data sets, and WSPO lists data sets of both kinds;
* ``webui.components.train``: the Train tab gets one more accordion (after "RLHF configurations") with the
  settings of the selected plugin stage, hidden for every other stage; its elements are registered like the
  stock ones (``train.weak_base_model``, ...), so "Save/Load arguments" and a resumed run keep them, and their
  labels come from ``LOCALES`` in every language LLaMA-Board offers;
* ``webui.runner``: the generated arguments (preview, ``training_args.yaml`` of "Start") get the stage's
  fields, and a WSPO run without weak models is refused with a message.

Stock stages build exactly the arguments and the saved configurations that they build without the plugin.
Nothing here is imported before LLaMA-Board itself is.
"""

import functools
import json
from typing import Any

from .hparams import WPO_ALIGNMENTS, WPO_WEIGHTINGS, WSPO_RESPONSES


# Stage labels of the "Stage" drop-down (like LLaMA-Board's own "DPO", "KTO") -> stage.
UI_STAGES = {"WSPO": "wspo", "WPO": "wpo"}
STAGE_FIELDS = {
    "wspo": ("weak_base_model", "weak_aligned_model", "wspo_response", "precompute_logps"),
    "wpo": ("wpo_alignment", "wpo_weighting", "precompute_logps"),
}
FIELDS = tuple(dict.fromkeys(name for names in STAGE_FIELDS.values() for name in names))
TAB = "wspo_tab"  # the accordion; its label depends on the stage, so it is not in LOCALES
ELEM_ID_PREFIX = "llamafactory_wspo_"  # HTML ids of the plugin's elements

LOCALES: dict[str, dict[str, dict[str, str]]] = {
    "weak_base_model": {
        "en": {"label": "Weak base model", "info": "Path or hub id of the weak model before its alignment (π_w⁰)."},
        "ru": {
            "label": "Слабая базовая модель",
            "info": "Путь или ID на хабе слабой модели до её выравнивания (π_w⁰).",
        },
        "zh": {"label": "弱模型（对齐前）", "info": "对齐前的弱模型的路径或 Hub ID（π_w⁰）。"},
        "ko": {"label": "약한 기본 모델", "info": "정렬 전 약한 모델의 경로 또는 허브 ID (π_w⁰)."},
        "ja": {"label": "弱いベースモデル", "info": "アライメント前の弱いモデルのパスまたは Hub ID（π_w⁰）。"},
    },
    "weak_aligned_model": {
        "en": {
            "label": "Weak aligned model",
            "info": "Path or hub id of the weak model after its alignment, e.g. by DPO (π_w*).",
        },
        "ru": {
            "label": "Слабая выровненная модель",
            "info": "Путь или ID на хабе слабой модели после выравнивания, например DPO (π_w*).",
        },
        "zh": {"label": "弱模型（对齐后）", "info": "对齐后（例如经过 DPO）的弱模型的路径或 Hub ID（π_w*）。"},
        "ko": {"label": "정렬된 약한 모델", "info": "정렬 후(예: DPO) 약한 모델의 경로 또는 허브 ID (π_w*)."},
        "ja": {
            "label": "アライメント済みの弱いモデル",
            "info": "アライメント後（DPO など）の弱いモデルのパスまたは Hub ID（π_w*）。",
        },
    },
    "wspo_response": {
        "en": {"label": "Responses", "info": "Responses of a pairwise data set to train on (SFT data: its response)."},
        "ru": {
            "label": "Ответы",
            "info": "Какие ответы попарного набора данных использовать (SFT-данные: их ответ).",
        },
        "zh": {"label": "训练回复", "info": "使用偏好数据集中的哪些回复训练（SFT 数据集使用其回复）。"},
        "ko": {"label": "응답", "info": "쌍 데이터셋에서 학습할 응답 (SFT 데이터: 해당 응답)."},
        "ja": {"label": "応答", "info": "ペアワイズデータセットのどの応答で学習するか（SFT データはその応答）。"},
    },
    "wpo_alignment": {
        "en": {"label": "WPO alignment", "info": "How the weight aligns log-probs with the policy's outputs."},
        "ru": {"label": "Выравнивание WPO", "info": "Как вес согласует log-вероятности с выходами политики."},
        "zh": {"label": "WPO 对齐方式", "info": "权重如何将对数概率与策略的输出对齐。"},
        "ko": {"label": "WPO 정렬 방식", "info": "가중치가 로그 확률을 정책의 출력에 맞추는 방식."},
        "ja": {"label": "WPO アライメント", "info": "重みが対数確率をポリシーの出力に合わせる方法。"},
    },
    "wpo_weighting": {
        "en": {"label": "WPO weighting", "info": "Weights of a pair: pair (WPO), chosen (WPO_w), rejected (WPO_l)."},
        "ru": {"label": "Взвешивание WPO", "info": "Веса пары: pair (WPO), chosen (WPO_w), rejected (WPO_l)."},
        "zh": {"label": "WPO 加权方式", "info": "偏好对的权重：pair（WPO）、chosen（WPO_w）、rejected（WPO_l）。"},
        "ko": {"label": "WPO 가중 방식", "info": "쌍의 가중치: pair (WPO), chosen (WPO_w), rejected (WPO_l)."},
        "ja": {"label": "WPO 重み付け", "info": "ペアの重み：pair（WPO）、chosen（WPO_w）、rejected（WPO_l）。"},
    },
    "precompute_logps": {
        "en": {"label": "Precompute log-probs", "info": "Score the frozen models once before training (cached)."},
        "ru": {
            "label": "Предвычислить log-вероятности",
            "info": "Один раз оценить замороженные модели до обучения (кэш).",
        },
        "zh": {"label": "预计算对数概率", "info": "训练前一次性计算冻结模型的对数概率（缓存）。"},
        "ko": {"label": "로그 확률 사전 계산", "info": "학습 전에 고정 모델을 한 번 계산합니다 (캐시)."},
        "ja": {"label": "対数確率を事前計算", "info": "学習前に固定モデルを一度だけ計算します（キャッシュ）。"},
    },
}
TAB_LABELS = {
    "wspo": {"en": "WSPO configurations", "ru": "Конфигурации WSPO", "zh": "WSPO 参数设置", "ko": "WSPO 구성", "ja": "WSPO 設定"},
    "wpo": {"en": "WPO configurations", "ru": "Конфигурации WPO", "zh": "WPO 参数设置", "ko": "WPO 구성", "ja": "WPO 設定"},
}  # fmt: skip
# WSPO's gamma is LLaMA-Factory's `pref_beta`: the field says so while WSPO is selected.
WSPO_PREF_BETA = {
    "en": {"label": "Beta value (γ of WSPO)", "info": "γ of WSPO: a smaller γ amplifies the weak model's alignment."},
    "ru": {
        "label": "Бета значение (γ для WSPO)",
        "info": "γ в WSPO: чем меньше γ, тем сильнее выравнивание слабой модели.",
    },
    "zh": {"label": "Beta 参数（WSPO 的 γ）", "info": "WSPO 的 γ：γ 越小，弱模型的对齐效果放大越多。"},
    "ko": {"label": "베타 값 (WSPO의 γ)", "info": "WSPO의 γ: γ가 작을수록 약한 모델의 정렬이 증폭됩니다."},
    "ja": {
        "label": "Beta 値（WSPO の γ）",
        "info": "WSPO の γ：γ が小さいほど弱いモデルのアライメントが増幅されます。",
    },
}
ERR_NO_WEAK_MODEL = {
    "en": "Please set the weak base model and the weak aligned model.",
    "ru": "Пожалуйста, укажите слабую базовую и слабую выровненную модели.",
    "zh": "请填写弱模型（对齐前）和弱模型（对齐后）。",
    "ko": "약한 기본 모델과 정렬된 약한 모델을 입력해 주세요.",
    "ja": "弱いベースモデルとアライメント済みの弱いモデルを指定してください。",
}


def patch(module) -> None:
    name = module.__name__
    if name == "llamafactory.webui.control":
        _patch_control(module)
    elif name == "llamafactory.webui.components.train":
        _patch_train_tab(module)
    elif name == "llamafactory.webui.runner":
        _patch_runner(module)


def _localized(table: dict[str, Any], lang: str | None) -> Any:
    return table.get(lang) or table["en"]


def _stage(training_stage: str | None) -> str | None:
    from llamafactory.extras.constants import TRAINING_STAGES

    return TRAINING_STAGES.get(training_stage)


# ---------------------------------------------------------------- webui.control: stages and data sets


def _patch_control(control) -> None:
    from llamafactory.extras import constants
    from llamafactory.webui import locales

    for label, stage in UI_STAGES.items():  # the same dict objects that the Train tab and the runner read
        constants.TRAINING_STAGES.setdefault(label, stage)

    constants.STAGES_USE_PAIR_DATA.add("wpo")
    for key, table in LOCALES.items():
        locales.LOCALES.setdefault(key, table)

    control.list_datasets = _wrap_list_datasets(control, control.list_datasets)


def _wrap_list_datasets(control, original):
    r"""WSPO trains on SFT-format and on pairwise data sets: list both; other stages list what they did."""

    @functools.wraps(original)
    def list_datasets(dataset_dir: str | None = None, training_stage: str | None = None):
        if training_stage is None:
            return original(dataset_dir)

        if _stage(training_stage) != "wspo":
            return original(dataset_dir, training_stage)

        import gradio as gr

        dataset_info = control.load_dataset_info(dataset_dir if dataset_dir is not None else control.DEFAULT_DATA_DIR)
        return gr.Dropdown(choices=list(dataset_info))

    return list_datasets


# ---------------------------------------------------------------- webui.components.train: the settings


def _patch_train_tab(train) -> None:
    train.create_train_tab = _wrap_create_train_tab(train.create_train_tab)


def _wrap_create_train_tab(original):
    @functools.wraps(original)
    def create_train_tab(engine):
        plugin_elems = _create_plugin_elems()  # rendered first, moved after the RLHF accordion below
        inputs = {plugin_elems[key] for key in FIELDS}
        manager = engine.manager
        stock_base_elems = manager.get_base_elems
        # The stock tab passes the set from `get_base_elems` (plus its own elements) to "Preview", "Start",
        # "Save/Load arguments" and the output-dir check: the plugin's fields join them there.
        manager.get_base_elems = lambda: stock_base_elems() | inputs
        try:
            elem_dict = original(engine)
        finally:
            del manager.get_base_elems

        _move_after(plugin_elems[TAB], elem_dict.get("rlhf_tab"))
        _connect(engine, elem_dict, plugin_elems)
        elem_dict.update(plugin_elems)
        return elem_dict

    return create_train_tab


def _create_plugin_elems() -> dict[str, Any]:
    import gradio as gr

    def elem_id(key: str) -> str:
        return ELEM_ID_PREFIX + key

    with gr.Accordion(open=True, visible=False, elem_id=elem_id("settings")) as tab:
        with gr.Row():
            weak_base_model = gr.Textbox(scale=3, visible=False, elem_id=elem_id("weak_base_model"))
            weak_aligned_model = gr.Textbox(scale=3, visible=False, elem_id=elem_id("weak_aligned_model"))
            wspo_response = gr.Dropdown(
                choices=list(WSPO_RESPONSES), value="chosen", scale=1, visible=False, elem_id=elem_id("wspo_response")
            )
            wpo_alignment = gr.Dropdown(
                choices=list(WPO_ALIGNMENTS), value="sampled", scale=1, visible=False, elem_id=elem_id("wpo_alignment")
            )
            wpo_weighting = gr.Dropdown(
                choices=list(WPO_WEIGHTINGS), value="pair", scale=1, visible=False, elem_id=elem_id("wpo_weighting")
            )
            precompute_logps = gr.Checkbox(value=True, scale=1, elem_id=elem_id("precompute_logps"))

    return {
        TAB: tab,
        "weak_base_model": weak_base_model,
        "weak_aligned_model": weak_aligned_model,
        "wspo_response": wspo_response,
        "wpo_alignment": wpo_alignment,
        "wpo_weighting": wpo_weighting,
        "precompute_logps": precompute_logps,
    }


def _move_after(block, anchor) -> None:
    r"""Put ``block`` right after ``anchor`` in their common parent's layout (before the page is served)."""
    parent = getattr(anchor, "parent", None)
    if parent is None or getattr(block, "parent", None) is not parent:
        return

    parent.children.remove(block)
    parent.children.insert(parent.children.index(anchor) + 1, block)


def _connect(engine, elem_dict: dict[str, Any], plugin_elems: dict[str, Any]) -> None:
    r"""Show the selected plugin stage's settings, and label ``pref_beta`` as γ for WSPO, in every language."""
    lang = engine.manager.get_elem_by_id("top.lang")
    training_stage, pref_beta = elem_dict["training_stage"], elem_dict["pref_beta"]
    outputs = [plugin_elems[TAB], *(plugin_elems[key] for key in FIELDS), pref_beta]

    def on_stage_change(lang_value: str, stage_label: str):
        return _plugin_updates(outputs, lang_value, stage_label, open_tab=True)

    def on_lang_change(lang_value: str, stage_label: str):
        return _plugin_updates(outputs, lang_value, stage_label, open_tab=False)

    training_stage.change(on_stage_change, [lang, training_stage], outputs, queue=False)
    lang.change(on_lang_change, [lang, training_stage], outputs, queue=False)

    # LLaMA-Board relabels every element on a language change; the label of `pref_beta` depends on the stage,
    # so it is left to `on_lang_change` (one writer per element: no race between the two listeners).
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
    stage = _stage(stage_label)
    fields = STAGE_FIELDS.get(stage, ())
    tab_args: dict[str, Any] = {"visible": bool(fields)}
    if fields:
        tab_args["label"] = _localized(TAB_LABELS[stage], lang)
        if open_tab:
            tab_args["open"] = True

    updates = [type(tab)(**tab_args)]
    updates += [type(elem)(visible=key in fields) for key, elem in zip(FIELDS, field_elems)]
    beta = WSPO_PREF_BETA if stage == "wspo" else HOST_LOCALES["pref_beta"]
    updates.append(type(pref_beta)(**_localized(beta, lang)))
    return updates


# ---------------------------------------------------------------- webui.runner: the arguments


def _patch_runner(runner) -> None:
    from llamafactory.webui import common

    cls = runner.Runner
    cls._initialize = _wrap_initialize(cls._initialize)
    cls._parse_train_args = _wrap_parse_train_args(cls._parse_train_args)
    cls._build_config_dict = _wrap_build_config_dict(cls._build_config_dict)
    common._clean_cmd = _wrap_clean_cmd(common._clean_cmd)


def _getter(runner, data: dict[Any, Any]):
    return lambda elem_id: data[runner.manager.get_elem_by_id(elem_id)]


def _wrap_initialize(original):
    @functools.wraps(original)
    def _initialize(self, data, do_train: bool, from_preview: bool) -> str:
        error = original(self, data, do_train, from_preview)
        if error or not do_train:
            return error

        get = _getter(self, data)
        if _stage(get("train.training_stage")) == "wspo" and not (
            get("train.weak_base_model") and get("train.weak_aligned_model")
        ):
            return _localized(ERR_NO_WEAK_MODEL, get("top.lang"))

        return error

    return _initialize


def _wrap_parse_train_args(original):
    @functools.wraps(original)
    def _parse_train_args(self, data) -> dict[str, Any]:
        args = original(self, data)
        stage = args.get("stage")
        if stage not in STAGE_FIELDS:
            return args

        get = _getter(self, data)
        keys = ("pref_beta", "pref_ftx") + (("pref_loss",) if stage == "wpo" else ()) + STAGE_FIELDS[stage]
        extra_args = json.loads(get("train.extra_args"))  # valid: checked by `_initialize`
        for key in keys:  # pref_beta: gamma for WSPO, beta of the preference loss for WPO
            if key not in extra_args:  # "Extra arguments" win, e.g. {"pref_loss": "robust"} for WPO
                value = get(f"train.{key}")
                args[key] = value.strip() if isinstance(value, str) else value

        return args

    return _parse_train_args


def _wrap_build_config_dict(original):
    r"""Stock stages save the configuration they saved without the plugin (loadable by stock LLaMA-Board)."""

    @functools.wraps(original)
    def _build_config_dict(self, data) -> dict[str, Any]:
        config = original(self, data)
        if _stage(config.get("train.training_stage")) not in STAGE_FIELDS:
            for key in FIELDS:
                config.pop(f"train.{key}", None)

        return config

    return _build_config_dict


def _wrap_clean_cmd(original):
    r"""LLaMA-Board drops every ``False`` argument; ``precompute_logps: false`` must reach the trainer."""

    @functools.wraps(original)
    def _clean_cmd(args: dict[str, Any]) -> dict[str, Any]:
        cleaned = original(args)
        if args.get("stage") in STAGE_FIELDS and isinstance(args.get("precompute_logps"), bool):
            cleaned["precompute_logps"] = args["precompute_logps"]

        return cleaned

    return _clean_cmd
