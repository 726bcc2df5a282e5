"""Labels of the plugin's LLaMA-Board elements, in every language LLaMA-Board offers (data only).

``LOCALES`` has the layout of LLaMA-Board's own ``llamafactory.webui.locales.LOCALES`` (element name -> language ->
``label``/``info``) and is merged into it, so that LLaMA-Board's language switch relabels the plugin's fields too.
The other tables are read by :mod:`llamafactory_wspo.webui.components.train` and :mod:`llamafactory_wspo.webui.runner`.
"""

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

# Titles of the settings accordion, per stage (its label depends on the stage, so it is not in LOCALES).
TAB_LABELS = {
    "wspo": {"en": "WSPO configurations", "ru": "Конфигурации WSPO", "zh": "WSPO 参数设置", "ko": "WSPO 구성", "ja": "WSPO 設定"},
    "wpo": {"en": "WPO configurations", "ru": "Конфигурации WPO", "zh": "WPO 参数设置", "ko": "WPO 구성", "ja": "WPO 設定"},
}  # fmt: skip

# WSPO's γ is LLaMA-Factory's `pref_beta`: the field says so while WSPO is selected.
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

# The message of "Preview command" and "Start" for a WSPO run without its weak models.
ERR_NO_WEAK_MODEL = {
    "en": "Please set the weak base model and the weak aligned model.",
    "ru": "Пожалуйста, укажите слабую базовую и слабую выровненную модели.",
    "zh": "请填写弱模型（对齐前）和弱模型（对齐后）。",
    "ko": "약한 기본 모델과 정렬된 약한 모델을 입력해 주세요.",
    "ja": "弱いベースモデルとアライメント済みの弱いモデルを指定してください。",
}
