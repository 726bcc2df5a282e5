"""One factory for the frozen models: the precompute pass scores with the weights that the per-step mode uses.

The per-step references are built by LLaMA-Factory itself (``create_ref_model``, or the policy with its LoRA
adapters disabled); the factory's models must give the same logits, QLoRA and merged adapters included. Loading a
frozen model leaves no auto-class registration behind, and the per-step frozen models are prepared for DeepSpeed
as LLaMA-Factory's DPO trainer prepares its reference.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers.in_process import _restored_process_state
from helpers.train import free_port, log_history, wpo_config, wspo_config


def _parse(config: dict):
    from llamafactory.hparams import get_train_args

    return get_train_args(config)


def _logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids, use_cache=False).logits.float()


@pytest.fixture(scope="module")
def adapters(assets, tmp_path_factory) -> list[Path]:
    r"""Two LoRA adapters of the strong model with non-zero weights (a LoRA starts as the identity otherwise)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(assets / "strong")
        model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        path = tmp_path_factory.mktemp(f"adapter{seed}")
        model.save_pretrained(path)
        out.append(path)

    return out


@pytest.fixture(scope="module")
def input_ids() -> torch.Tensor:
    return torch.tensor([[5, 17, 42, 8, 99, 23, 61, 7], [3, 14, 15, 92, 65, 35, 89, 79]])


def _lora_case(assets, tmp_path, **overrides):
    from llamafactory.model import load_model, load_tokenizer

    from llamafactory_wspo.frozen import frozen_models

    config = wspo_config(assets, tmp_path, finetuning_type="lora", lora_rank=4, lora_target="all", **overrides)
    model_args, _, _, finetuning_args, _ = _parse(config)
    tokenizer = load_tokenizer(model_args)["tokenizer"]
    policy = load_model(tokenizer, model_args, finetuning_args, is_trainable=True)
    # Eval mode: bitsandbytes computes 4-bit layers by another kernel in training mode (rounding differs).
    return policy.eval(), frozen_models(model_args, finetuning_args)


def test_qlora_reference_is_the_quantised_base(assets, tmp_path, input_ids):
    policy, frozen = _lora_case(assets, tmp_path, quantization_bit=4)
    assert frozen.ref.is_policy and frozen.ref.model_args.quantization_bit == 4
    with policy.disable_adapter():
        per_step = _logits(policy, input_ids)

    precomputed = _logits(frozen.ref.load(), input_ids)
    torch.testing.assert_close(precomputed, per_step, rtol=0, atol=0)
    # The unquantised base (what the precompute pass used to score) is measurably another model.
    from transformers import AutoModelForCausalLM

    unquantised = _logits(AutoModelForCausalLM.from_pretrained(assets / "strong"), input_ids)
    assert (unquantised - per_step).abs().max() > 1e-3


def test_lora_reference_keeps_the_merged_adapters(assets, tmp_path, adapters, input_ids):
    # LLaMA-Factory merges every adapter but the last, which it resumes training: disabling LoRA keeps the merged.
    policy, frozen = _lora_case(assets, tmp_path, adapter_name_or_path=",".join(map(str, adapters)))
    assert frozen.ref.model_args.adapter_name_or_path == [str(adapters[0])]
    with policy.disable_adapter():
        per_step = _logits(policy, input_ids)

    precomputed = _logits(frozen.ref.load(), input_ids)
    torch.testing.assert_close(precomputed, per_step, rtol=1e-5, atol=1e-6)
    from transformers import AutoModelForCausalLM

    assert (_logits(AutoModelForCausalLM.from_pretrained(assets / "strong"), input_ids) - per_step).abs().max() > 1e-4


def test_separate_reference_is_built_as_the_host_builds_it(assets, tmp_path, adapters, input_ids):
    from llamafactory.train.trainer_utils import create_ref_model

    from llamafactory_wspo.frozen import frozen_models

    config = wspo_config(
        assets,
        tmp_path,
        ref_model=str(assets / "strong"),
        ref_model_adapters=str(adapters[1]),
        ref_model_quantization_bit=4,
    )
    model_args, _, _, finetuning_args, _ = _parse(config)
    frozen = frozen_models(model_args, finetuning_args)
    assert frozen.ref.model_args.quantization_bit == 4 and not frozen.ref.is_policy
    host = _logits(create_ref_model(model_args, finetuning_args), input_ids)
    torch.testing.assert_close(_logits(frozen.ref.load(), input_ids), host, rtol=0, atol=0)


def test_weak_models_take_only_the_documented_loader_options(assets, tmp_path):
    from llamafactory_wspo.frozen import WEAK_MODEL_OPTIONS, frozen_models
    from llamafactory_wspo.logps.fingerprint import FileHashes

    config = wspo_config(
        assets,
        tmp_path,
        train_from_scratch=True,
        rope_scaling="linear",
        model_revision="v1",
        trust_remote_code=False,
        finetuning_type="lora",
        quantization_bit=4,
    )
    model_args, _, _, finetuning_args, _ = _parse(config)
    frozen = frozen_models(model_args, finetuning_args)
    for weak in (frozen.weak_base, frozen.weak_aligned):
        args = weak.model_args
        assert not args.train_from_scratch and args.rope_scaling is None and args.model_revision == "main"
        assert args.quantization_bit is None and args.adapter_name_or_path is None
        assert all(getattr(args, option) == getattr(model_args, option) for option in WEAK_MODEL_OPTIONS)
        assert args.compute_dtype == model_args.compute_dtype

    # The policy's options reach the reference, and the cache key of every frozen model covers its options.
    assert frozen.ref.model_args.train_from_scratch and frozen.ref.model_args.rope_scaling is not None
    hashes = FileHashes(None)
    assert frozen.ref.identity(hashes)["loader"]["train_from_scratch"] == "True"
    other = frozen_models(_parse({**config, "train_from_scratch": False})[0], finetuning_args)
    assert other.ref.identity(hashes) != frozen.ref.identity(hashes)
    assert other.weak_base.identity(hashes) == frozen.weak_base.identity(hashes)


@pytest.mark.slow
def test_precompute_and_per_step_give_the_same_loss_with_qlora(assets, tmp_path, run_in_process):
    r"""A whole run in each mode (in-process): the precomputed reference is the quantised base, as per step."""
    losses = {}
    for precompute in (True, False):
        workdir = tmp_path / str(precompute)
        config = wspo_config(
            assets,
            workdir,
            finetuning_type="lora",
            lora_rank=4,
            lora_target="all",
            quantization_bit=4,
            precompute_logps=precompute,
            max_samples=16,
            max_steps=2,
            learning_rate=1e-2,
        )
        run_in_process(config).check()
        losses[precompute] = [entry["loss"] for entry in log_history(workdir / "out") if "loss" in entry]

    # Per step the reference runs in training mode, where bitsandbytes' 4-bit kernel rounds differently (about
    # 1.5e-4 relative here); scoring the unquantised base instead, as the pass once did, is 3.5e-3 off.
    assert len(losses[True]) == 2 and losses[True] == pytest.approx(losses[False], rel=1e-3)


# A frozen model whose config has an `auto_map` ---------------------------------------------------------------------


def _auto_map_model(assets: Path, folder: Path, own_classes: bool, tokenizer_code: bool = True) -> Path:
    r"""The tiny weak model with an ``auto_map`` for its config, model and tokenizer, pointing at code in its folder.

    The code either re-exports transformers' own classes (as many hub models' code does: the classes are the
    policy's), or defines its own subclasses under a model type of its own. Importing it writes ``code-ran``.
    The tokenizer's code (a re-export) is left out with ``tokenizer_code=False``.
    """
    shutil.copytree(assets / "weak", folder)
    marker = f"open({str(folder / 'code-ran')!r}, 'w').close()\n"
    if own_classes:
        config_code = (
            "from transformers import Qwen2Config\n"
            "class WSPOCustomConfig(Qwen2Config):\n    model_type = 'wspo_custom'\n"
        )
        model_code = (
            "from transformers import Qwen2ForCausalLM\nfrom .configuration_custom import WSPOCustomConfig\n"
            "class WSPOCustomForCausalLM(Qwen2ForCausalLM):\n    config_class = WSPOCustomConfig\n"
        )
        names = ("WSPOCustomConfig", "WSPOCustomForCausalLM")
    else:
        config_code, model_code = (
            "from transformers import Qwen2Config\n",
            "from transformers import Qwen2ForCausalLM\n",
        )
        names = ("Qwen2Config", "Qwen2ForCausalLM")

    (folder / "configuration_custom.py").write_text(marker + config_code)
    (folder / "modeling_custom.py").write_text(model_code)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": f"configuration_custom.{names[0]}",
        "AutoModelForCausalLM": f"modeling_custom.{names[1]}",
    }
    if own_classes:
        config["model_type"] = "wspo_custom"
    (folder / "config.json").write_text(json.dumps(config))
    if tokenizer_code:
        (folder / "tokenization_custom.py").write_text("from transformers import TokenizersBackend\n")
        tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
        tokenizer_config["auto_map"] = {"AutoTokenizer": [None, "tokenization_custom.TokenizersBackend"]}
        (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return folder


@pytest.fixture
def library_classes_unregistered():
    r"""The classes that the test models share with every Qwen2 model, as they were (and the auto model mapping).

    A safety net for this process when the code under test leaves a registration behind (the test then fails).
    """
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM, TokenizersBackend

    classes = (Qwen2Config, Qwen2ForCausalLM, TokenizersBackend)
    before = {cls: vars(cls).get("_auto_class") for cls in classes}
    mapping = dict(AutoModelForCausalLM._model_mapping._extra_content)
    assert not any(before.values())
    yield classes
    for cls, value in before.items():
        if vars(cls).get("_auto_class") != value:
            del cls._auto_class
    AutoModelForCausalLM._model_mapping._extra_content.clear()
    AutoModelForCausalLM._model_mapping._extra_content.update(mapping)


@pytest.mark.parametrize("own_classes", [False, True], ids=["library-classes", "own-classes"])
def test_frozen_models_with_auto_map_leave_no_registration(
    assets, tmp_path, library_classes_unregistered, own_classes
):
    from transformers import AutoModelForCausalLM, PretrainedConfig

    from llamafactory_wspo.frozen import frozen_models
    from llamafactory_wspo.vocab import check_embedding_sizes

    class LoadedBefore(PretrainedConfig):  # e.g. the policy's own class, loaded (and registered) before
        pass

    LoadedBefore.register_for_auto_class()
    folder = _auto_map_model(assets, tmp_path / "auto_map_model", own_classes)
    config = wspo_config(assets, tmp_path, ref_model=str(folder), weak_base_model=str(folder), trust_remote_code=True)
    model_args, _, _, finetuning_args, _ = _parse(config)
    frozen = frozen_models(model_args, finetuning_args)
    check_embedding_sizes(frozen, max_token_id=10, tokenizer_size=183)  # reads each frozen model's config
    models = [model.load() for model in frozen]
    assert (folder / "code-ran").exists()  # the folder's code was loaded (trust_remote_code)
    assert type(models[0]).__name__ == ("WSPOCustomForCausalLM" if own_classes else "Qwen2ForCausalLM")

    registered = [cls.__name__ for cls in library_classes_unregistered if "_auto_class" in vars(cls)]
    loaded = [type(models[0]), type(models[0].config)]
    registered += [cls.__name__ for cls in loaded if "_auto_class" in vars(cls)]
    assert not registered, f"left registered for auto classes: {registered}"
    assert type(models[0].config) not in AutoModelForCausalLM._model_mapping._extra_content
    assert LoadedBefore._auto_class == "AutoConfig"  # registrations made before are kept


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["wspo", "wpo"])
def test_policy_saves_as_usual_beside_a_frozen_model_with_auto_map(
    assets, tmp_path, run_in_process, library_classes_unregistered, stage
):
    r"""Per step (WSPO: loaded after the policy) and precomputed (WPO: before), as reference and as weak model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2ForCausalLM

    folder = _auto_map_model(assets, tmp_path / "auto_map_model", own_classes=False)
    if stage == "wspo":
        config = wspo_config(
            assets, tmp_path, weak_base_model=str(folder), precompute_logps=False, max_steps=1, max_samples=8
        )
    else:
        config = wpo_config(assets, tmp_path, precompute_logps=True, max_steps=1, max_samples=8)
    run = run_in_process({**config, "ref_model": str(folder), "trust_remote_code": True}).check()
    assert str(folder) in " ".join(run.loaded_models)

    out = tmp_path / "out"
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.py"))
    assert "auto_map" not in json.loads((out / "config.json").read_text())
    assert "auto_map" not in json.loads((out / "tokenizer_config.json").read_text())
    assert type(AutoModelForCausalLM.from_pretrained(out)) is Qwen2ForCausalLM
    assert AutoTokenizer.from_pretrained(out)("a b")["input_ids"]


@pytest.mark.slow
def test_a_policy_with_its_own_code_still_saves_it(assets, tmp_path, run_in_process, library_classes_unregistered):
    r"""The policy's own registrations stay: WPO's precomputed reference, the policy's checkpoint, loads first."""
    folder = _auto_map_model(assets, tmp_path / "auto_map_model", own_classes=True, tokenizer_code=False)
    config = wpo_config(
        assets, tmp_path, model_name_or_path=str(folder), trust_remote_code=True, max_steps=1, max_samples=8
    )
    run_in_process({**config, "precompute_logps": True}).check()
    out = tmp_path / "out"
    assert sorted(path.name for path in out.glob("*.py")) == ["configuration_custom.py", "modeling_custom.py"]
    auto_map = json.loads((out / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForCausalLM"] == "modeling_custom.WSPOCustomForCausalLM"


# Per-step frozen models under DeepSpeed -------------------------------------------------------------------------


@pytest.mark.slow  # DeepSpeed on the CPU: its first use in an environment builds a shared-memory op (about 90 s)
def test_quantised_frozen_models_are_left_to_bitsandbytes_under_deepspeed(assets, tmp_path, monkeypatch):
    r"""LLaMA-Factory's DPO trainer leaves a 4-bit reference where bitsandbytes placed it and hands any other frozen
    model to TRL's ``prepare_deepspeed`` (ZeRO off for the copy under ZeRO-2); WSPO's per-step models and WPO's
    reference are prepared so, by one function (one process, ZeRO-2, a Gloo group on the CPU; the process state
    restored after)."""
    from deepspeed import DeepSpeedEngine
    from llamafactory.model import load_model, load_tokenizer
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from llamafactory_wspo.frozen import frozen_models
    from llamafactory_wspo.train.wspo.trainer import CustomWSPOTrainer

    ds_config = tmp_path / "ds_z2_config.json"
    batch = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto"}
    ds_config.write_text(json.dumps({**batch, "zero_optimization": {"stage": 2}}))
    distributed = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}
    for key, value in {**distributed, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(key, value)

    with _restored_process_state():
        try:
            config = wspo_config(
                assets,
                tmp_path,
                deepspeed=str(ds_config),
                precompute_logps=False,
                ref_model=str(assets / "strong"),
                ref_model_quantization_bit=4,
            )
            model_args, _, training_args, finetuning_args, _ = _parse(config)
            tokenizer_module = load_tokenizer(model_args)
            policy = load_model(tokenizer_module["tokenizer"], model_args, finetuning_args, is_trainable=True)
            ref, weak_base, weak_aligned = (model.load() for model in frozen_models(model_args, finetuning_args))
            assert ref.is_loaded_in_4bit and not getattr(weak_base, "is_loaded_in_4bit", False)
            trainer = CustomWSPOTrainer(
                model=policy,
                args=training_args,
                finetuning_args=finetuning_args,
                ref_model=ref,
                weak_base_model=weak_base,
                weak_aligned_model=weak_aligned,
                **tokenizer_module,
            )
            assert trainer.is_deepspeed_enabled
            assert trainer.frozen_models["ref"] is ref, type(trainer.frozen_models["ref"])
            for name, model in (("weak_base", weak_base), ("weak_aligned", weak_aligned)):
                engine = trainer.frozen_models[name]
                assert isinstance(engine, DeepSpeedEngine) and engine.module is model
                assert engine.zero_optimization_stage() == 0 and not engine.module.training

            # The function itself, which WPO's trainers call on their reference (one DeepSpeed accelerator a process).
            from llamafactory_wspo.train.trainer_utils import prepare_frozen_model

            assert prepare_frozen_model(ref, trainer.accelerator) is ref
        finally:
            unset_hf_deepspeed_config()
