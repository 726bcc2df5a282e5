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
    "weak_template": {
        "en": {
            "label": "Weak template",
            "info": "Chat template of the weak models' family when their tokenizer differs (cross-tokenizer WSPO).",
        },
        "ru": {
            "label": "Шаблон слабой модели",
            "info": "Шаблон чата семейства слабых моделей, если их токенизатор другой (кросс-токенизаторный WSPO).",
        },
        "zh": {"label": "弱模型模板", "info": "弱模型分词器不同时（跨分词器 WSPO）所用的弱模型系列对话模板。"},
        "ko": {
            "label": "약한 모델 템플릿",
            "info": "약한 모델의 토크나이저가 다를 때(교차 토크나이저 WSPO) 사용할 약한 모델 계열의 채팅 템플릿.",
        },
        "ja": {
            "label": "弱いモデルのテンプレート",
            "info": "弱いモデルのトークナイザーが異なる場合（クロストークナイザー WSPO）の、その系列のチャットテンプレート。",
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
    "wspo_shift_warning": {
        "en": {
            "label": "Weak shift warning",
            "info": "Warn when the weak shift's mean |w_t| exceeds this many nats per response token.",
        },
        "ru": {
            "label": "Порог сдвига слабой модели",
            "info": "Предупреждать, если среднее |w_t| сдвига слабой модели больше стольких нат на токен ответа.",
        },
        "zh": {
            "label": "弱模型偏移警告阈值",
            "info": "当弱模型偏移的平均 |w_t| 超过每个回复词元这么多奈特时发出警告。",
        },
        "ko": {
            "label": "약한 모델 이동 경고",
            "info": "약한 모델 이동의 평균 |w_t|가 응답 토큰당 이 값(nat)을 넘으면 경고합니다.",
        },
        "ja": {
            "label": "弱いモデルのシフト警告",
            "info": "弱いモデルのシフトの平均 |w_t| が応答トークンあたりこの値（nat）を超えると警告します。",
        },
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
    "grpo_reward_funcs": {
        "en": {
            "label": "Reward functions",
            "info": "Comma-separated: length, a module:function, or a reward model path.",
        },
        "ru": {
            "label": "Функции награды",
            "info": "Через запятую: length, module:function или путь к модели награды.",
        },
        "zh": {"label": "奖励函数", "info": "逗号分隔：length、module:function 或奖励模型路径。"},
        "ko": {"label": "보상 함수", "info": "쉼표로 구분: length, module:function 또는 보상 모델 경로."},
        "ja": {"label": "報酬関数", "info": "カンマ区切り：length、module:function、または報酬モデルのパス。"},
    },
    "length_reward_min": {
        "en": {"label": "Length reward min", "info": "Shortest in-range output of the length reward, in words."},
        "ru": {"label": "Мин. длина награды", "info": "Самый короткий ответ в диапазоне награды за длину, в словах."},
        "zh": {"label": "长度奖励下限", "info": "长度奖励范围内最短的输出（词数）。"},
        "ko": {"label": "길이 보상 최소", "info": "길이 보상 범위의 가장 짧은 출력(단어 수)."},
        "ja": {"label": "長さ報酬の最小", "info": "長さ報酬の範囲内で最も短い出力（単語数）。"},
    },
    "length_reward_max": {
        "en": {"label": "Length reward max", "info": "Longest in-range output of the length reward, in words."},
        "ru": {"label": "Макс. длина награды", "info": "Самый длинный ответ в диапазоне награды за длину, в словах."},
        "zh": {"label": "长度奖励上限", "info": "长度奖励范围内最长的输出（词数）。"},
        "ko": {"label": "길이 보상 최대", "info": "길이 보상 범위의 가장 긴 출력(단어 수)."},
        "ja": {"label": "長さ報酬の最大", "info": "長さ報酬の範囲内で最も長い出力（単語数）。"},
    },
    "grpo_num_generations": {
        "en": {
            "label": "Generations per prompt",
            "info": "Outputs sampled per prompt (the group); must divide the batch.",
        },
        "ru": {"label": "Генераций на запрос", "info": "Ответов на запрос (группа); должно делить размер батча."},
        "zh": {"label": "每个提示的生成数", "info": "每个提示采样的输出数（组），必须整除批大小。"},
        "ko": {
            "label": "프롬프트당 생성 수",
            "info": "프롬프트마다 샘플링하는 출력 수(그룹); 배치를 나누어야 합니다.",
        },
        "ja": {
            "label": "プロンプトごとの生成数",
            "info": "プロンプトごとにサンプルする出力数（グループ）。バッチを割り切ること。",
        },
    },
    "grpo_max_completion_length": {
        "en": {"label": "Max completion length", "info": "Longest sampled output, in tokens."},
        "ru": {"label": "Макс. длина ответа", "info": "Самый длинный сэмплируемый ответ, в токенах."},
        "zh": {"label": "最大生成长度", "info": "采样输出的最大 token 数。"},
        "ko": {"label": "최대 생성 길이", "info": "샘플링된 출력의 최대 토큰 수."},
        "ja": {"label": "最大生成長", "info": "サンプルする出力の最大トークン数。"},
    },
    "grpo_temperature": {
        "en": {"label": "Sampling temperature", "info": "Temperature of the sampled outputs."},
        "ru": {"label": "Температура сэмплирования", "info": "Температура сэмплируемых ответов."},
        "zh": {"label": "采样温度", "info": "采样输出的温度。"},
        "ko": {"label": "샘플링 온도", "info": "샘플링되는 출력의 온도."},
        "ja": {"label": "サンプリング温度", "info": "サンプルする出力の温度。"},
    },
    "grpo_top_p": {
        "en": {"label": "Sampling top-p", "info": "Nucleus threshold of the sampled outputs."},
        "ru": {"label": "Top-p сэмплирования", "info": "Порог nucleus-сэмплирования ответов."},
        "zh": {"label": "采样 Top-p", "info": "采样输出的核采样阈值。"},
        "ko": {"label": "샘플링 Top-p", "info": "샘플링되는 출력의 누클리어스 임계값."},
        "ja": {"label": "サンプリング Top-p", "info": "サンプルする出力の nucleus しきい値。"},
    },
    "grpo_beta": {
        "en": {
            "label": "KL coefficient (β of GRPO)",
            "info": "Weight of the KL term towards the initial model; 0 loads no reference.",
        },
        "ru": {
            "label": "Коэффициент KL (β GRPO)",
            "info": "Вес KL-члена к исходной модели; 0 не загружает эталонную модель.",
        },
        "zh": {"label": "KL 系数（GRPO 的 β）", "info": "朝向初始模型的 KL 项权重；0 表示不加载参考模型。"},
        "ko": {
            "label": "KL 계수 (GRPO의 β)",
            "info": "초기 모델에 대한 KL 항의 가중치; 0이면 참조 모델을 불러오지 않습니다.",
        },
        "ja": {
            "label": "KL 係数（GRPO の β）",
            "info": "初期モデルへの KL 項の重み。0 なら参照モデルを読み込まない。",
        },
    },
}

# Titles of the settings accordion, per stage (its label depends on the stage, so it is not in LOCALES).
TAB_LABELS = {
    "wspo": {"en": "WSPO configurations", "ru": "Конфигурации WSPO", "zh": "WSPO 参数设置", "ko": "WSPO 구성", "ja": "WSPO 設定"},
    "wpo": {"en": "WPO configurations", "ru": "Конфигурации WPO", "zh": "WPO 参数设置", "ko": "WPO 구성", "ja": "WPO 設定"},
    "grpo": {"en": "GRPO configurations", "ru": "Конфигурации GRPO", "zh": "GRPO 参数设置", "ko": "GRPO 구성", "ja": "GRPO 設定"},
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

# The message of "Preview command" and "Start" for GRPO with a packing box ticked: GRPO samples its outputs, it
# packs nothing, and LLaMA-Factory refuses `neat_packing` for it. {packing} and {neat_packing} are LLaMA-Board's
# own labels of the two boxes in the same language.
ERR_GRPO_PACKING = {
    "en": "GRPO does not pack sequences: untick “{packing}” and “{neat_packing}”.",
    "ru": "GRPO не упаковывает последовательности: снимите флажки «{packing}» и «{neat_packing}».",
    "zh": "GRPO 不支持序列打包：请取消勾选“{packing}”和“{neat_packing}”。",
    "ko": "GRPO는 시퀀스를 패킹하지 않습니다: “{packing}” 및 “{neat_packing}”의 선택을 해제하세요.",
    "ja": "GRPO はシーケンスをパッキングしません：「{packing}」と「{neat_packing}」のチェックを外してください。",
}
