"""The WPO loss equals the DPO stage's per-pair loss times the WPO weights, for each `pref_loss`."""

import pytest
import torch
from conftest import wpo_config


@pytest.fixture(scope="module")
def setup(assets, tmp_path_factory):
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_model, load_tokenizer

    workdir = tmp_path_factory.mktemp("wpo_loss")
    config = wpo_config(assets, workdir, max_samples=4)

    model_args, data_args, training_args, finetuning_args, _ = get_train_args(config)
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    dataset = get_dataset(template, model_args, data_args, training_args, stage="rm", **tokenizer_module)
    policy = load_model(tokenizer_module["tokenizer"], model_args, finetuning_args, is_trainable=True)
    from llamafactory.hparams import FinetuningArguments, ModelArguments

    ref = load_model(
        tokenizer_module["tokenizer"],
        ModelArguments.copyfrom(model_args, model_name_or_path=str(assets / "weak")),  # any model of this vocabulary
        FinetuningArguments(),
    )
    from llamafactory_wspo.data import PairwiseDataCollatorWithLogps

    collator = PairwiseDataCollatorWithLogps(template=template, pad_to_multiple_of=8, **tokenizer_module)
    batch = collator([dataset["train_dataset"][i] for i in range(4)])
    return {
        "args": (training_args, finetuning_args),
        "model_args": model_args,
        "data_args": data_args,
        "tokenizer_module": tokenizer_module,
        "policy": policy.eval(),
        "ref": ref.eval(),
        "batch": batch,
    }


def _sequence_logps(model, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Per sequence: summed log-probs, mean log-prob and the three alignment means, in float64."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()

    labels = batch["labels"][:, 1:]
    mask = labels != -100
    log_p = logits[:, :-1].log_softmax(-1)
    token = log_p.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    p = log_p.exp()
    align = {
        "sampled": token - (p**2).sum(-1).log(),
        "greedy": token - p.max(-1).values.log(),
        "none": token,
    }
    count = mask.sum(-1)
    weights = {key: ((value * mask).sum(-1) / count).exp() for key, value in align.items()}
    return (token * mask).sum(-1), (token * mask).sum(-1) / count, weights


def _per_pair_loss(trainer, loss_type, policy, ref, avg_policy):
    n = policy.size(0) // 2
    if loss_type in ("orpo", "simpo"):
        chosen, rejected = avg_policy[:n].float(), avg_policy[n:].float()
        return (
            trainer.odds_ratio_loss(chosen, rejected) if loss_type == "orpo" else trainer.simpo_loss(chosen, rejected)
        )

    if loss_type == "ipo":
        policy = avg_policy  # the DPO stage averages log-probs for ipo
    losses, _, _ = trainer.dpo_loss(
        policy[:n].float(), policy[n:].float(), ref[:n].float(), ref[n:].float(), loss_type=loss_type
    )
    return losses


@pytest.mark.parametrize(
    "loss_type, smoothing",
    [("sigmoid", 0.0), ("sigmoid", 0.2), ("hinge", 0.0), ("ipo", 0.0), ("orpo", 0.0), ("simpo", 0.0)]
    + [("robust", 0.1), ("exo_pair", 0.1), ("nca_pair", 0.0), ("sppo_hard", 0.0), ("apo_zero", 0.0)]
    + [("apo_down", 0.0), ("bco_pair", 0.0)],
)
@pytest.mark.parametrize("alignment, weighting", [("sampled", "pair"), ("greedy", "chosen"), ("none", "rejected")])
def test_loss_is_stock_per_pair_loss_times_weights(setup, loss_type, smoothing, alignment, weighting):
    from llamafactory_wspo.train.wpo.trainer import CustomWPOTrainer

    training_args, finetuning_args = setup["args"]
    finetuning_args.dpo_label_smoothing = smoothing
    finetuning_args.pref_loss, finetuning_args.wpo_alignment, finetuning_args.wpo_weighting = (
        loss_type,
        alignment,
        weighting,
    )
    finetuning_args.use_ref_model = loss_type not in ("orpo", "simpo")
    policy, ref, batch = setup["policy"], setup["ref"], setup["batch"]
    trainer = CustomWPOTrainer(
        model=policy,
        ref_model=ref if finetuning_args.use_ref_model else None,
        args=training_args,
        finetuning_args=finetuning_args,
        data_collator=None,
        **setup["tokenizer_module"],
    )
    with torch.no_grad():
        loss, metrics = trainer.get_batch_loss_metrics(policy, {k: v.clone() for k, v in batch.items()})

    policy_sum, policy_avg, weights = _sequence_logps(policy, batch)
    ref_sum, ref_avg, _ = _sequence_logps(ref, batch)
    n = policy_sum.size(0) // 2
    chosen_w, rejected_w = weights[alignment][:n], weights[alignment][n:]
    pair_w = {"pair": chosen_w * rejected_w, "chosen": chosen_w, "rejected": rejected_w}[weighting].clamp(max=1)
    ref_logps = ref_avg if loss_type == "ipo" else ref_sum
    expected = (pair_w.float() * _per_pair_loss(trainer, loss_type, policy_sum, ref_logps, policy_avg)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert metrics["wpo/weight_mean"] == pytest.approx(pair_w.mean().item(), rel=1e-4)
    assert metrics["wpo/weight_min"] == pytest.approx(pair_w.min().item(), rel=1e-4)


@pytest.mark.parametrize("alignment", ["sampled", "none"])
def test_kto_form_is_stock_kto_terms_times_normalised_weights(setup, assets, alignment):
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer

    from llamafactory_wspo.data import KTODataCollatorWithLogps
    from llamafactory_wspo.losses import wpo_unpaired_weights
    from llamafactory_wspo.train.wpo.trainer import CustomWPOKTOTrainer

    training_args, finetuning_args = setup["args"]
    finetuning_args.pref_loss, finetuning_args.wpo_alignment, finetuning_args.use_ref_model = "kto", alignment, True
    tokenizer_module = setup["tokenizer_module"]
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], setup["data_args"])
    setup["data_args"].dataset = ["tiny_kto"]
    dataset = get_dataset(template, setup["model_args"], setup["data_args"], training_args, "kto", **tokenizer_module)
    rows = [dataset["train_dataset"][i] for i in (0, 1, 2)]  # desirable, undesirable, desirable
    batch = KTODataCollatorWithLogps(template=template, pad_to_multiple_of=8, **tokenizer_module)(rows)
    policy, ref = setup["policy"], setup["ref"]
    trainer = CustomWPOKTOTrainer(
        model=policy, ref_model=ref, args=training_args, finetuning_args=finetuning_args, **tokenizer_module
    )
    with torch.no_grad():
        loss, _ = trainer.get_batch_loss_metrics(policy, {k: v.clone() for k, v in batch.items()})

    kl_batch = {key: batch[f"kl_{key}"] for key in ("input_ids", "attention_mask", "labels")}
    policy_sum, _, weights = _sequence_logps(policy, batch)
    ref_sum, _, _ = _sequence_logps(ref, batch)
    policy_kl, _, _ = _sequence_logps(policy, kl_batch)
    ref_kl, _, _ = _sequence_logps(ref, kl_batch)
    tags = batch["kto_tags"]
    terms, _, _, _ = trainer.kto_loss(
        *(x.float() for x in (policy_sum[tags], policy_sum[~tags], policy_kl, ref_sum[tags], ref_sum[~tags], ref_kl))
    )
    w = wpo_unpaired_weights(weights[alignment], tags)
    n, n_desirable = len(tags), int(tags.sum())
    assert 0 < n_desirable < n
    desirable = (w[tags] * terms[:n_desirable]).sum() * n_desirable / n
    undesirable = (w[~tags] * terms[n_desirable:]).sum() * (n - n_desirable) / n
    expected = desirable + undesirable
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
