"""``stage: wpo`` with ``packing``: several pairs' chosen and rejected sequences in one row, each attending only to
itself, give what the unpacked pairs give (per-sequence log-probs, WPO weights, losses, gradients)."""

import copy
import json

import pytest
import torch
from helpers.train import train_logs, wpo_config

from llamafactory_wspo.hparams import PluginInputError


CUTOFF = 256  # the tiny pairs are 70-90 tokens, chosen and rejected together: three pairs to a row
NUM_PAIRS = 8


@pytest.fixture(scope="module")
def setup(assets, tmp_path_factory):
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_model, load_tokenizer

    from llamafactory_wspo.data import drop_unscored, pack_pairs

    workdir = tmp_path_factory.mktemp("wpo_packing")
    config = wpo_config(
        assets, workdir, max_samples=NUM_PAIRS, cutoff_len=CUTOFF, packing=True, ref_model=str(assets / "weak")
    )
    model_args, data_args, training_args, finetuning_args, _ = get_train_args(config)
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    dataset_module = get_dataset(template, model_args, data_args, training_args, stage="rm", **tokenizer_module)
    dataset_module = drop_unscored(dataset_module, ("chosen_labels", "rejected_labels"), CUTOFF)
    pairs = dataset_module["train_dataset"]
    packed = pack_pairs(pairs, CUTOFF)
    policy = load_model(tokenizer_module["tokenizer"], model_args, finetuning_args, is_trainable=True)
    from llamafactory.hparams import FinetuningArguments, ModelArguments

    ref = load_model(
        tokenizer_module["tokenizer"],
        ModelArguments.copyfrom(model_args, model_name_or_path=str(assets / "weak")),
        FinetuningArguments(),
    )
    assert policy.dtype == ref.dtype == torch.float32 and policy.config._attn_implementation == "sdpa"
    return {
        "args": (model_args, data_args, training_args, finetuning_args),
        "tokenizer_module": tokenizer_module,
        "template": template,
        "pairs": pairs,
        "packed": packed,
        "policy": policy.eval(),  # no dropout: the two layouts must see the same function
        "ref": ref.eval(),
    }


def _collator_args(setup) -> dict:
    return dict(template=setup["template"], pad_to_multiple_of=8, label_pad_token_id=-100, **setup["tokenizer_module"])


def _segments(row: dict) -> list[tuple[list[int], list[int]]]:
    r"""A packed row's sequences (input ids, labels), split where ``position_ids`` restart, read here on its own."""
    starts = [i for i, position in enumerate(row["position_ids"]) if position == 0] + [len(row["input_ids"])]
    return [(row["input_ids"][a:b], row["labels"][a:b]) for a, b in zip(starts, starts[1:])]


def _pair_order(setup) -> list[int]:
    r"""The index of each pair of the packed rows in the unpacked data set, in packed order (found by the tokens)."""
    by_tokens = {
        (tuple(row["chosen_input_ids"]), tuple(row["rejected_input_ids"])): index
        for index, row in enumerate(setup["pairs"])
    }
    assert len(by_tokens) == len(setup["pairs"])
    order = []
    for row in setup["packed"]:
        segments = _segments(row)
        for (chosen, _), (rejected, _) in zip(segments[0::2], segments[1::2]):
            order.append(by_tokens[tuple(chosen), tuple(rejected)])

    return order


def _one_at_a_time(model, input_ids: list[int], labels: list[int]) -> tuple[float, float, int]:
    r"""One sequence alone, in float64 from its logits: summed log-prob, sampled-alignment weight, length."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([input_ids])).logits[0, :-1].double()

    targets = torch.tensor(labels[1:])
    mask = targets != -100
    log_p = logits.log_softmax(-1)[mask]
    token = log_p.gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1)
    aligned = token - (log_p.exp() ** 2).sum(-1).log()
    return token.sum().item(), aligned.mean().exp().item(), int(mask.sum())


def test_pairs_are_packed_whole_in_rows_of_cutoff_len(setup) -> None:
    pairs, packed = setup["pairs"], setup["packed"]
    assert len(packed) < len(pairs)  # several pairs to a row
    for row in packed:
        assert len(row["input_ids"]) <= CUTOFF
        assert len({len(row[name]) for name in ("input_ids", "attention_mask", "position_ids", "labels")}) == 1
        segments = _segments(row)
        assert len(segments) % 2 == 0
        assert row["attention_mask"] == [number for number, (ids, _) in enumerate(segments, start=1) for _ in ids]

    order = _pair_order(setup)  # chosen then rejected, a pair's two sequences side by side in one row
    assert sorted(order) == list(range(len(pairs)))  # every pair once
    sequences = [segment for row in packed for segment in _segments(row)]
    for index, (chosen, rejected) in zip(order, zip(sequences[0::2], sequences[1::2])):
        for side, (_, labels) in (("chosen", chosen), ("rejected", rejected)):
            assert labels[0] == -100  # never predicted from the previous sequence of the row
            assert labels[1:] == pairs[index][f"{side}_labels"][1:]


def test_a_pair_longer_than_cutoff_len_gets_a_row_of_its_own(setup) -> None:
    from llamafactory_wspo.data import pack_pairs

    pairs = setup["pairs"]
    lengths = [len(row["chosen_input_ids"]) + len(row["rejected_input_ids"]) for row in pairs]
    cutoff = sorted(lengths)[len(lengths) // 2] - 1  # half the pairs are longer than this
    packed = pack_pairs(pairs, cutoff)
    long = [row for row in packed if len(row["input_ids"]) > cutoff]
    assert len(long) == sum(length > cutoff for length in lengths)
    assert all(len(_segments(row)) == 2 for row in long)  # one pair each, kept whole
    assert sum(len(_segments(row)) for row in packed) == 2 * len(pairs)


def _trainer(setup, finetuning_args, training_args, packed: bool, ref_model):
    from llamafactory_wspo.train.wpo.trainer import CustomWPOTrainer

    return CustomWPOTrainer(
        model=setup["policy"],
        ref_model=ref_model,
        packed=packed,
        args=training_args,
        finetuning_args=finetuning_args,
        data_collator=None,
        **setup["tokenizer_module"],
    )


def _loss_and_gradients(trainer, batch) -> tuple[torch.Tensor, dict, dict[str, torch.Tensor]]:
    model = trainer.model
    model.zero_grad(set_to_none=True)
    loss, metrics = trainer.get_batch_loss_metrics(model, {key: value.clone() for key, value in batch.items()})
    loss.backward()
    gradients = {name: param.grad.detach().clone() for name, param in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return loss.detach(), metrics, gradients


def _precomputed_store(setup, args, tmp_path):
    from llamafactory_wspo.frozen import frozen_models
    from llamafactory_wspo.train.wpo.workflow import precompute_reference

    model_args, data_args, training_args, finetuning_args = args
    finetuning_args.logps_cache_dir = str(tmp_path / "cache")
    return precompute_reference(
        {"train_dataset": setup["packed"]},
        frozen_models(model_args, finetuning_args),
        _collator_args(setup),
        model_args,
        data_args,
        training_args,
        finetuning_args,
    )


@pytest.mark.parametrize("reference", ["precomputed", "per_step"])
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_packed_pairs_give_the_unpacked_values(setup, tmp_path, loss_type, reference) -> None:
    r"""Per-sequence log-probs and weights against each sequence run alone; the loss, metrics and gradients against
    the unpacked path on the same pairs (its reference model per step), all within 1e-5 in float32."""
    from llamafactory_wspo.data import PackedPairsCollatorWithLogps, PairwiseDataCollatorWithLogps
    from llamafactory_wspo.logps.store import REF_LOGPS

    args = copy.deepcopy(setup["args"])
    _, _, training_args, finetuning_args = args
    finetuning_args.pref_loss, finetuning_args.wpo_alignment, finetuning_args.wpo_weighting = (
        loss_type,
        "sampled",
        "pair",
    )
    store = _precomputed_store(setup, args, tmp_path) if reference == "precomputed" else None
    packed_batch = PackedPairsCollatorWithLogps(
        store=store, attn_implementation="sdpa", compute_dtype=torch.float32, **_collator_args(setup)
    )(list(setup["packed"]))
    assert packed_batch["attention_mask"].dim() == 4 and (REF_LOGPS in packed_batch) == (store is not None)
    order = _pair_order(setup)
    unpacked_batch = PairwiseDataCollatorWithLogps(**_collator_args(setup))([setup["pairs"][i] for i in order])
    assert packed_batch["input_ids"].numel() < unpacked_batch["input_ids"].numel()

    packed = _trainer(setup, finetuning_args, training_args, True, None if store else setup["ref"])
    unpacked = _trainer(setup, finetuning_args, training_args, False, setup["ref"])
    tolerance = {"rtol": 1e-5, "atol": 1e-5}

    # Each sequence alone: summed log-prob (averaged for ipo), sampled-alignment weight, reference log-prob.
    expected = {"chosen": [], "rejected": []}
    for index in order:
        for side in expected:
            ids, labels = setup["pairs"][index][f"{side}_input_ids"], setup["pairs"][index][f"{side}_labels"]
            logp, weight, length = _one_at_a_time(setup["policy"], ids, labels)
            ref_logp, _, _ = _one_at_a_time(setup["ref"], ids, labels)
            scale = length if loss_type == "ipo" else 1
            expected[side].append((logp / scale, weight, ref_logp / scale))

    with torch.no_grad():
        output = packed.concatenated_forward(setup["policy"], {k: v.clone() for k, v in packed_batch.items()})
        if store is not None:
            ref = packed._precomputed_reference(
                packed_batch[REF_LOGPS], packed_batch["labels"], packed_batch["position_ids"]
            )
        else:
            ref = packed.compute_reference_log_probs(setup["policy"], {k: v.clone() for k, v in packed_batch.items()})

    weights = output["weights"].chunk(2)
    for i, side in enumerate(("chosen", "rejected")):
        want = torch.tensor(expected[side], dtype=torch.float32)
        torch.testing.assert_close(output[f"{side}_logps"], want[:, 0], **tolerance)
        torch.testing.assert_close(weights[i], want[:, 1], **tolerance)
        torch.testing.assert_close(ref[i], want[:, 2], **tolerance)

    packed_loss, packed_metrics, packed_gradients = _loss_and_gradients(packed, packed_batch)
    unpacked_loss, unpacked_metrics, unpacked_gradients = _loss_and_gradients(unpacked, unpacked_batch)
    torch.testing.assert_close(packed_loss, unpacked_loss, **tolerance)
    assert packed_metrics.keys() == unpacked_metrics.keys()
    for key, value in unpacked_metrics.items():
        assert packed_metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-5), key
    assert packed_gradients.keys() == unpacked_gradients.keys()
    for name, gradient in unpacked_gradients.items():
        assert gradient.abs().max() > 0, name  # a gradient that could differ
        torch.testing.assert_close(packed_gradients[name], gradient, **tolerance, msg=name)


@pytest.mark.parametrize(
    "loss_type, alignment, weighting",
    [("hinge", "greedy", "chosen"), ("orpo", "none", "rejected"), ("simpo", "greedy", "pair")]
    + [("robust", "none", "chosen"), ("exo_pair", "greedy", "rejected"), ("nca_pair", "none", "pair")]
    + [("sppo_hard", "greedy", "chosen"), ("apo_zero", "none", "rejected"), ("apo_down", "greedy", "pair")]
    + [("bco_pair", "none", "chosen"), ("sigmoid", "greedy", "rejected"), ("ipo", "none", "chosen")],
)
def test_every_loss_alignment_and_weighting_packed_as_unpacked(setup, loss_type, alignment, weighting) -> None:
    r"""The other losses, alignments and weightings (per-step reference): the packed loss and metrics equal the
    unpacked ones. With ``alignment: none`` the model returns full logits (``response_only_logits: false``)."""
    from llamafactory_wspo.data import PackedPairsCollatorWithLogps, PairwiseDataCollatorWithLogps

    _, _, training_args, finetuning_args = copy.deepcopy(setup["args"])
    finetuning_args.pref_loss, finetuning_args.wpo_alignment, finetuning_args.wpo_weighting = (
        loss_type,
        alignment,
        weighting,
    )
    finetuning_args.dpo_label_smoothing = 0.1 if loss_type in ("robust", "exo_pair") else 0.0
    finetuning_args.use_ref_model = loss_type not in ("orpo", "simpo")
    finetuning_args.response_only_logits = alignment != "none"
    ref = setup["ref"] if finetuning_args.use_ref_model else None
    packed_batch = PackedPairsCollatorWithLogps(
        attn_implementation="sdpa", compute_dtype=torch.float32, **_collator_args(setup)
    )(list(setup["packed"]))
    unpacked_batch = PairwiseDataCollatorWithLogps(**_collator_args(setup))(
        [setup["pairs"][i] for i in _pair_order(setup)]
    )
    with torch.no_grad():
        results = [
            _trainer(setup, finetuning_args, training_args, packed, ref).get_batch_loss_metrics(
                setup["policy"], {key: value.clone() for key, value in batch.items()}
            )
            for packed, batch in ((True, packed_batch), (False, unpacked_batch))
        ]

    (packed_loss, packed_metrics), (unpacked_loss, unpacked_metrics) = results
    torch.testing.assert_close(packed_loss, unpacked_loss, rtol=1e-5, atol=1e-5)
    assert packed_metrics == pytest.approx(unpacked_metrics, rel=1e-5, abs=1e-5)


def test_a_sequence_never_attends_across_a_boundary(setup) -> None:
    r"""Changing one sequence's tokens leaves every other sequence's log-probs in its packed row bit-identical."""
    from llamafactory_wspo.data import PackedPairsCollatorWithLogps
    from llamafactory_wspo.scoring import score_tokens

    collate = PackedPairsCollatorWithLogps(
        attn_implementation="sdpa", compute_dtype=torch.float32, **_collator_args(setup)
    )
    row = dict(setup["packed"][0])
    starts = [i for i, position in enumerate(row["position_ids"]) if position == 0] + [len(row["input_ids"])]
    assert len(starts) - 1 >= 4  # two pairs or more
    changed = dict(row, input_ids=list(row["input_ids"]))
    target = 1  # the first pair's rejected sequence: sequences before and after it
    for position in range(starts[target] + 1, starts[target + 1]):
        changed["input_ids"][position] = (changed["input_ids"][position] + 7) % len(
            setup["tokenizer_module"]["tokenizer"]
        )

    with torch.no_grad():
        before = score_tokens(setup["policy"], collate([row])).logps[0]
        after = score_tokens(setup["policy"], collate([changed])).logps[0]

    for number, (start, end) in enumerate(zip(starts, starts[1:])):
        span = slice(start, end - 1)  # position t predicts token t + 1 of the same sequence
        if number == target:
            assert not torch.equal(before[span], after[span])
        else:
            assert torch.equal(before[span], after[span]), number


def test_kto_form_refuses_packing_before_any_model_loads(assets, tmp_path, run_in_process) -> None:
    config = wpo_config(assets, tmp_path, dataset="tiny_kto", pref_loss="kto", neat_packing=True)
    run = run_in_process(config)
    assert isinstance(run.error, PluginInputError), run.error_text()
    assert str(run.error).startswith("`packing` does not apply to `pref_loss: kto`")
    assert "`packing: false`" in str(run.error) and "\n" not in str(run.error)
    assert run.loaded_models == []


def test_flash_attention_takes_one_packed_row_per_batch(assets, tmp_path, run_in_process) -> None:
    config = wpo_config(assets, tmp_path, packing=True, flash_attn="fa2", per_device_train_batch_size=2)
    run = run_in_process(config)
    assert isinstance(run.error, PluginInputError), run.error_text()
    message = str(run.error)
    assert message.startswith("`packing` with `flash_attn: fa2` takes one packed row per batch, but ")
    assert "`per_device_train_batch_size: 2`" in message and "`precompute_batch_size: 4`" in message
    assert run.loaded_models == []


def test_packed_run_trains_as_the_unpacked_run(assets, tmp_path, run_in_process) -> None:
    r"""``neat_packing: true`` through ``run_exp``: every pair in one optimiser step (and one evaluation batch), both
    layouts, the same losses; the pass scores the packed rows, under a cache key of their own."""
    common = {"max_samples": NUM_PAIRS, "cutoff_len": CUTOFF, "max_steps": 2, "learning_rate": 1e-2}
    common.update(eval_dataset="tiny_pairs_eval", do_eval=True, per_device_eval_batch_size=NUM_PAIRS)
    run_in_process(wpo_config(assets, tmp_path / "unpacked", per_device_train_batch_size=NUM_PAIRS, **common)).check()
    run_in_process(
        wpo_config(assets, tmp_path / "packed", neat_packing=True, per_device_train_batch_size=NUM_PAIRS, **common)
    ).check()
    unpacked, packed = train_logs(tmp_path / "unpacked" / "out"), train_logs(tmp_path / "packed" / "out")
    for key in ("loss", "wpo/weight_mean", "rewards/margins", "logps/chosen", "logits/rejected"):
        assert [entry[key] for entry in packed] == pytest.approx([entry[key] for entry in unpacked], rel=1e-4), key
    unpacked_eval, packed_eval = (
        json.loads((tmp_path / name / "out" / "eval_results.json").read_text()) for name in ("unpacked", "packed")
    )
    for key in ("eval_loss", "eval_rewards/margins", "eval_wpo/weight_mean"):
        assert packed_eval[key] == pytest.approx(unpacked_eval[key], rel=1e-4), key
    (manifest,) = (tmp_path / "packed" / "cache").glob("*/manifest.json")
    manifest = json.loads(manifest.read_text())
    assert manifest["extra"]["packing"] is True and manifest["extra"]["neat_packing"] is True
    assert manifest["examples"] < 2 * NUM_PAIRS  # packed rows of the two splits, several pairs each
