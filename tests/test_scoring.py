"""Response-only logits: the same log-probs, WPO weights, losses and gradients as the full-logits path.

For each architecture in ``RESPONSE_ONLY_MODEL_TYPES`` (tiny random configurations, float32) the output layer
must see only the scored positions, and every number must equal what full logits give (``policy_logps_and_
alignment`` over ``model(...).logits``, the path every stock stage takes) within 1e-5 relative.
"""

import math

import pytest
import torch
from helpers.train import DS_Z3_CONFIG, run_train, train_logs, wpo_config

from llamafactory_wspo.losses import IGNORE_INDEX, policy_logps_and_alignment, wpo_sequence_weight
from llamafactory_wspo.scoring import RESPONSE_ONLY_MODEL_TYPES, score_tokens


VOCAB = 97


def _config(model_type: str):
    from transformers import AutoConfig

    common = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    if model_type == "gemma2":  # soft-capped logits: the model's own post-processing must be kept
        common.update(head_dim=8, final_logit_softcapping=0.5, query_pre_attn_scalar=8)
    return AutoConfig.for_model(model_type, **common)


def _model(model_type: str, seed: int = 0) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(_config(model_type)).float()


def _batch() -> dict[str, torch.Tensor]:
    r"""Three rows, right-padded, with prompts of different lengths (one row scores a single token)."""
    generator = torch.Generator().manual_seed(1)
    lengths, prompts = (12, 9, 6), (4, 7, 2)
    input_ids = torch.zeros(3, 12, dtype=torch.long)
    labels = torch.full((3, 12), IGNORE_INDEX)
    attention_mask = torch.zeros(3, 12, dtype=torch.long)
    for row, (length, prompt) in enumerate(zip(lengths, prompts)):
        ids = torch.randint(1, VOCAB, (length,), generator=generator)
        input_ids[row, :length], attention_mask[row, :length] = ids, 1
        labels[row, prompt:length] = ids[prompt:]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _full_logits_reference(model, batch, alignment):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return policy_logps_and_alignment(logits, batch["labels"], alignment)


def _objective(logps, aligned, mask) -> torch.Tensor:
    r"""A loss that weighs every token differently (so a misplaced token changes the gradient)."""
    position_weights = torch.linspace(0.5, 1.5, logps.size(1))
    return (logps * position_weights).sum() + wpo_sequence_weight(aligned, mask).sum() * 0.0


def _grads(model) -> dict[str, torch.Tensor]:
    return {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}


def _compare(model, batch, alignment="sampled") -> None:
    rows_seen = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, args, out: rows_seen.append(args[0].shape))

    model.zero_grad()
    scores = score_tokens(model, batch, alignment)
    _objective(scores.logps, scores.aligned, scores.mask).backward()
    fast_grads = _grads(model)

    model.zero_grad()
    logps, aligned, mask = _full_logits_reference(model, batch, alignment)
    _objective(logps, aligned, mask).backward()
    full_grads = _grads(model)
    hook.remove()

    scored = int(mask.sum())
    assert rows_seen[0] == (1, scored, 32), rows_seen  # the output layer saw the scored positions only
    assert rows_seen[1][:2] == batch["input_ids"].shape  # (the reference computed every position)
    assert torch.equal(scores.mask, mask)
    torch.testing.assert_close(scores.logps, logps, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scores.aligned, aligned, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        wpo_sequence_weight(scores.aligned, mask), wpo_sequence_weight(aligned, mask), rtol=1e-5, atol=0
    )
    assert fast_grads.keys() == full_grads.keys() and fast_grads
    for name, grad in fast_grads.items():
        torch.testing.assert_close(grad, full_grads[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.host_compat
@pytest.mark.parametrize("model_type", sorted(RESPONSE_ONLY_MODEL_TYPES))
def test_response_only_logits_equal_full_logits(model_type):
    model = _model(model_type).train()
    _compare(model, _batch(), "sampled")
    _compare(model, _batch(), "greedy")


@pytest.mark.host_compat
def test_gemma2_soft_capping_is_kept():
    model = _model("gemma2").eval()
    batch = _batch()
    scores = score_tokens(model, batch)
    with torch.no_grad():
        raw = model.lm_head(model.model(input_ids=batch["input_ids"]).last_hidden_state)
    uncapped, _, _ = policy_logps_and_alignment(raw, batch["labels"])
    assert (scores.logps - uncapped).abs().max() > 1e-3  # capping changes the numbers; they equal the capped ones
    torch.testing.assert_close(scores.logps, _full_logits_reference(model, batch, "none")[0], rtol=1e-5, atol=1e-6)


@pytest.mark.host_compat
def test_lora_including_the_output_layer():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        _model("qwen2"),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj", "lm_head"], init_lora_weights=False),
    ).train()
    _compare(model, _batch())


def test_other_architectures_fall_back_to_full_logits():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=4, n_positions=64)).eval()
    rows_seen = []
    model.get_output_embeddings().register_forward_hook(lambda m, args, out: rows_seen.append(args[0].shape))
    batch = _batch()
    scores = score_tokens(model, batch)
    assert rows_seen == [(3, 12, 32)]
    torch.testing.assert_close(scores.logps, _full_logits_reference(model, batch, "none")[0])


@pytest.mark.slow
def test_zero3_two_processes_response_only_equals_full_logits(assets, tmp_path):
    r"""WPO under ZeRO-3 with two processes: the same two losses (the second follows a gradient step)."""
    losses = {}
    for response_only in (True, False):
        workdir = tmp_path / str(response_only)
        config = wpo_config(
            assets,
            workdir,
            deepspeed=str(DS_Z3_CONFIG),
            max_steps=2,
            per_device_train_batch_size=2,
            response_only_logits=response_only,
            precompute_logps=False,  # the reference runs per step, sharded, through the same path
            learning_rate=1e-2,
        )
        run_train(config, workdir, nproc=2)
        losses[response_only] = [entry["loss"] for entry in train_logs(workdir / "out")]

    assert len(losses[True]) == 2 and all(math.isfinite(loss) for loss in losses[True])
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
