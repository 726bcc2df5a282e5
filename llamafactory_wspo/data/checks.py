"""The checks of the WSPO and WPO data sets against their settings, from dataset_info.json alone (before any load)."""

from typing import TYPE_CHECKING

from llamafactory.data.parser import get_dataset_list

from ..hparams import PluginInputError


if TYPE_CHECKING:
    from llamafactory.hparams import DataArguments

    from ..hparams import WSPOArguments


def _is_ranking(dataset_names: list[str] | None, data_args: "DataArguments") -> bool | None:
    if not dataset_names:
        return None

    kinds = {attr.ranking for attr in get_dataset_list(dataset_names, data_args.dataset_dir)}
    if len(kinds) > 1:
        raise PluginInputError(
            f"`dataset`/`eval_dataset` mix pairwise and SFT-format data sets ({', '.join(dataset_names)}): "
            "use data sets of one kind in a WSPO run."
        )

    return kinds.pop()


def check_wspo_data(data_args: "DataArguments", finetuning_args: "WSPOArguments") -> bool:
    r"""Check the data sets against ``wspo_response`` before anything loads; return whether they are pairwise."""
    ranking = _is_ranking(data_args.dataset, data_args)
    eval_ranking = _is_ranking(data_args.eval_dataset, data_args)
    if ranking is not None and eval_ranking is not None and ranking != eval_ranking:
        raise PluginInputError("`dataset` and `eval_dataset` must both be pairwise or both be SFT-format for WSPO.")

    pairwise = bool(ranking if ranking is not None else eval_ranking)
    if not pairwise and finetuning_args.wspo_response != "chosen":
        names = ", ".join((data_args.dataset or []) + (data_args.eval_dataset or []))
        raise PluginInputError(
            f"`wspo_response: {finetuning_args.wspo_response}` needs a pairwise (ranking) data set, but {names} has "
            "no pairs: use `wspo_response: chosen` (the default) to train on its responses."
        )

    return pairwise


def check_wpo_data(data_args: "DataArguments", kto: bool) -> None:
    r"""WPO re-weights preference pairs (``"ranking": true``); its KTO form takes KTO data (a ``kto_tag`` column),
    unpacked."""
    names = (data_args.dataset or []) + (data_args.eval_dataset or [])
    attrs = get_dataset_list(names, data_args.dataset_dir)
    if kto:
        if data_args.packing:
            raise PluginInputError(
                "`packing` does not apply to `pref_loss: kto`: the KTO form scores each output and its KL row "
                "unpacked. Set `packing: false` (and `neat_packing: false`), or use a per-pair `pref_loss` "
                "with pairwise data."
            )

        untagged = [name for name, attr in zip(names, attrs) if attr.ranking or not attr.kto_tag]
        if untagged:
            raise PluginInputError(
                "`pref_loss: kto` needs KTO-format data sets (a `kto_tag` column in dataset_info.json), but "
                f"{', '.join(untagged)} has none: use LLaMA-Factory's KTO format, or a per-pair `pref_loss`."
            )

        return

    unpaired = [name for name, attr in zip(names, attrs) if not attr.ranking]
    if unpaired:
        raise PluginInputError(
            '`stage: wpo` needs pairwise data sets (`"ranking": true` in dataset_info.json), but '
            f"{', '.join(unpaired)} has no pairs: use a preference data set such as ultrafeedback_binarized, "
            "or `pref_loss: kto` with KTO-format data."
        )


def check_grpo_data(data_args: "DataArguments") -> None:
    r"""GRPO samples its completions from prompts: packed rows have no meaning there (LLaMA-Factory refuses
    ``neat_packing`` for it already; plain ``packing`` would be ignored without a word)."""
    if data_args.packing:
        raise PluginInputError(
            "`packing` does not apply to `stage: grpo`: it generates completions from each prompt. Remove `packing` "
            "(or set it to false)."
        )
