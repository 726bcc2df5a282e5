"""The WPO loss equals the DPO stage's per-pair loss times the WPO weights, for each `pref_loss`."""

import copy

import pytest
import torch
from helpers.train import wpo_config


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
        "args": (training_args, finetuning_args, data_args),
        "model_args": model_args,
        "tokenizer_module": tokenizer_module,
        "policy": policy.eval(),
        "ref": ref.eval(),
        "batch": batch,
    }


@pytest.fixture
def args(setup):
    r"""This test's own copy of the training, fine-tuning and data arguments, which it may change."""
    return copy.deepcopy(setup["args"])


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
def test_loss_is_stock_per_pair_loss_times_weights(setup, args, loss_type, smoothing, alignment, weighting):
    from llamafactory_wspo.train.wpo.trainer import CustomWPOTrainer

    training_args, finetuning_args, _ = args
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


def _rejected_first(kto_loss):
    r"""TRL's ``kto_loss`` with its losses concatenated the other way round: undesirable outputs first."""

    def loss(policy_chosen, policy_rejected, policy_kl, ref_chosen, ref_rejected, ref_kl):
        chosen = kto_loss(policy_chosen, policy_rejected[:0], policy_kl, ref_chosen, ref_rejected[:0], ref_kl)
        rejected = kto_loss(policy_chosen[:0], policy_rejected, policy_kl, ref_chosen[:0], ref_rejected, ref_kl)
        return torch.cat([rejected[0], chosen[0]]), chosen[1], rejected[2], chosen[3]

    return loss


@pytest.mark.parametrize("order", ["trl", "rejected_first"])
@pytest.mark.parametrize("alignment", ["sampled", "none"])
def test_kto_form_is_stock_kto_terms_times_normalised_weights(setup, args, assets, alignment, order):
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer

    from llamafactory_wspo.data import KTODataCollatorWithLogps
    from llamafactory_wspo.losses import wpo_unpaired_weights
    from llamafactory_wspo.train.wpo.kto_trainer import CustomWPOKTOTrainer

    training_args, finetuning_args, data_args = args
    finetuning_args.pref_loss, finetuning_args.wpo_alignment, finetuning_args.use_ref_model = "kto", alignment, True
    finetuning_args.pref_ftx = 0.3
    tokenizer_module = setup["tokenizer_module"]
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    data_args.dataset = ["tiny_kto"]
    dataset = get_dataset(template, setup["model_args"], data_args, training_args, "kto", **tokenizer_module)
    rows = [dataset["train_dataset"][i] for i in (0, 1, 2)]  # desirable, undesirable, desirable
    batch = KTODataCollatorWithLogps(template=template, pad_to_multiple_of=8, **tokenizer_module)(rows)
    policy, ref = setup["policy"], setup["ref"]
    trainer = CustomWPOKTOTrainer(
        model=policy, ref_model=ref, args=training_args, finetuning_args=finetuning_args, **tokenizer_module
    )
    if order == "rejected_first":  # the loss must not depend on how TRL concatenates the two groups
        trainer.kto_loss = _rejected_first(trainer.kto_loss)

    with torch.no_grad():
        loss, metrics = trainer.get_batch_loss_metrics(policy, {k: v.clone() for k, v in batch.items()})

    # KTO (Ethayarajh et al., 2024, Eq. 8) in float64: v = 1 - sigmoid(beta (r - z0)) for a desirable output,
    # 1 - sigmoid(beta (z0 - r)) for an undesirable one, with r the log-ratio and z0 the clamped batch KL.
    kl_batch = {key: batch[f"kl_{key}"] for key in ("input_ids", "attention_mask", "labels")}
    policy_sum, policy_avg, weights = _sequence_logps(policy, batch)
    ref_sum, _, _ = _sequence_logps(ref, batch)
    policy_kl, _, _ = _sequence_logps(policy, kl_batch)
    ref_kl, _, _ = _sequence_logps(ref, kl_batch)
    tags = batch["kto_tags"]
    z0 = (policy_kl - ref_kl).mean().clamp(min=0)
    margin = trainer.beta * (policy_sum - ref_sum - z0)
    terms = torch.where(tags, 1 - torch.sigmoid(margin), 1 - torch.sigmoid(-margin))
    w = wpo_unpaired_weights(weights[alignment], tags).double()
    n, n_desirable = len(tags), int(tags.sum())
    assert 0 < n_desirable < n
    share = torch.where(tags, n_desirable / n, (n - n_desirable) / n)
    sft = -policy_avg[tags].mean() * n / n_desirable
    expected = (w * share * terms).sum() + 0.3 * sft
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert metrics["kl"] == pytest.approx(z0.item(), rel=1e-5, abs=1e-7)
    assert metrics["rewards/chosen_sum"] == pytest.approx((margin + trainer.beta * z0)[tags].sum().item(), rel=1e-5)
    assert metrics["count/rejected"] == n - n_desirable
