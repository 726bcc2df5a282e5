"""The weak-shift statistics (``llamafactory_wspo/shift_stats.py``), checked against numpy and hand counts; the
manifest's version field; the ``wspo_shift_warning`` option."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from llamafactory_wspo.logps import shift_stats
from llamafactory_wspo.logps.shift_stats import (
    BIN_WIDTH,
    SHIFT,
    STATISTICS_KEY,
    WEAK_TOKENS,
    ShiftSummary,
    cache_statistics,
    merge_summaries,
    pass_summaries,
    statistics,
    token_mean,
)
from llamafactory_wspo.logps.store import MANIFEST_VERSION, REF_LOGPS, WEAK_SHIFT, manifest_version
from llamafactory_wspo.projection import WEAK_PROJECTION


def _values(seed: int, n: int) -> torch.Tensor:
    r"""A displaced-looking shift: most tokens near 0, a fifth pushed down by several nats, a few up."""
    rng = np.random.default_rng(seed)
    values = rng.normal(-0.2, 0.5, n)
    pushed = rng.random(n) < 0.2
    values[pushed] -= rng.uniform(3.0, 9.0, int(pushed.sum()))
    return torch.tensor(values, dtype=torch.float32)


def test_statistics_match_numpy():
    values = _values(0, 5000)
    stats = statistics(ShiftSummary.of(values))
    x = values.double().numpy()
    assert stats["tokens"] == 5000
    assert stats["mean"] == pytest.approx(x.mean(), rel=1e-12)
    assert stats["mean_abs"] == pytest.approx(np.abs(x).mean(), rel=1e-12)
    assert stats["share_above_2"] == np.count_nonzero(np.abs(x) > 2.0) / 5000
    assert (stats["min"], stats["max"]) == (x.min(), x.max())
    assert list(stats["quantiles"]) == ["0.01", "0.05", "0.25", "0.5", "0.75", "0.95", "0.99"]
    for q, value in stats["quantiles"].items():  # the order statistic of rank floor(q (n - 1)), to half a bin
        assert abs(value - np.quantile(x, float(q), method="lower")) <= BIN_WIDTH / 2, q


def test_summaries_add_up_across_ranks():
    values = _values(1, 3001)
    whole = ShiftSummary.of(values)
    parts = [ShiftSummary.of(part) for part in (values[:1000], values[1000:1001], values[1001:], values[:0])]
    merged = parts[0].merge(parts[1]).merge(parts[2]).merge(parts[3])
    assert (merged.tokens, merged.large, merged.minimum, merged.maximum) == (
        whole.tokens,
        whole.large,
        whole.minimum,
        whole.maximum,
    )
    assert torch.equal(merged.histogram, whole.histogram)
    assert merged.total == pytest.approx(whole.total, rel=1e-12)
    assert statistics(merged)["quantiles"] == statistics(whole)["quantiles"]


def test_hand_counted_values():
    stats = statistics(ShiftSummary.of(torch.tensor([-6.0, -3.0, -0.5, 0.0, 0.5, 1.0, 2.0, 2.5])))
    assert stats["mean"] == -3.5 / 8 and stats["mean_abs"] == 15.5 / 8
    assert stats["share_above_2"] == 3 / 8  # -6, -3 and 2.5; exactly 2 is not above
    assert stats["quantiles"]["0.5"] == pytest.approx(0.0, abs=BIN_WIDTH / 2)  # rank floor(0.5 * 7) = 3: the 0
    assert stats["quantiles"]["0.01"] == -6.0 and stats["quantiles"]["0.99"] == pytest.approx(2.0, abs=BIN_WIDTH / 2)


def test_extremes_outside_the_histogram_and_no_values():
    stats = statistics(ShiftSummary.of(torch.tensor([-1000.0, 0.25, 1000.0])))
    assert stats["min"] == -1000.0 and stats["max"] == 1000.0 and stats["mean_abs"] == pytest.approx(2000.25 / 3)
    assert stats["quantiles"]["0.5"] == pytest.approx(0.25, abs=BIN_WIDTH / 2)
    assert statistics(ShiftSummary()) == {"tokens": 0}
    assert statistics(ShiftSummary.of(torch.zeros(0))) == {"tokens": 0}
    zeros = statistics(ShiftSummary.of(torch.zeros(4)))
    assert set(zeros["quantiles"].values()) == {0.0}  # clamped to the exact extremes


def test_token_mean_over_the_mask():
    values = torch.tensor([[1.0, -3.0, 9.0], [2.0, 0.0, 4.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert token_mean(values, mask) == 0.0  # (1 - 3 + 2) / 3
    assert token_mean(values, torch.zeros_like(mask)) == 0.0


def test_pass_summaries_same_and_cross_tokenizer():
    rows = {
        7: {REF_LOGPS: torch.zeros(2), WEAK_SHIFT: torch.tensor([-1.0, 3.0])},
        9: {WEAK_SHIFT: torch.tensor([0.5])},
    }
    same = pass_summaries(rows, [REF_LOGPS, WEAK_SHIFT], {}, {7: {}, 9: {}})
    assert list(same) == [SHIFT] and same[SHIFT].tokens == 3 and same[SHIFT].total == 2.5

    # cross-tokenizer: three weak tokens project onto the two strong tokens of row 7, two onto row 9's one
    scores = {
        "weak_base": {7: torch.tensor([-1.0, -2.0, -0.5]), 9: torch.tensor([-1.0, -1.0])},
        "weak_aligned": {7: torch.tensor([-1.5, -1.5, 2.0]), 9: torch.tensor([-0.75, -1.25])},
    }
    columns = {7: {WEAK_PROJECTION: torch.tensor([0, 1, 1])}, 9: {WEAK_PROJECTION: torch.tensor([0, 0])}}
    cross = pass_summaries(rows, [REF_LOGPS, WEAK_SHIFT], scores, columns)
    weak = statistics(cross[WEAK_TOKENS])
    assert weak["tokens"] == 5 and weak["mean"] == pytest.approx((-0.5 + 0.5 + 2.5 + 0.25 - 0.25) / 5)
    assert weak["mean_abs"] == pytest.approx((0.5 + 0.5 + 2.5 + 0.25 + 0.25) / 5) and weak["share_above_2"] == 0.2

    assert pass_summaries(rows, [REF_LOGPS], scores, columns) == {}  # WPO: no weak shift
    empty = pass_summaries({}, [REF_LOGPS, WEAK_SHIFT], {}, {})  # a rank without examples
    assert merge_summaries([empty, same]) == {SHIFT: statistics(same[SHIFT])}


def test_old_manifest_statistics_from_cached_values():
    column = _values(2, 300)
    old = {"format": 2, "fingerprint": "x", "shards": []}  # written before manifest_version and the statistics
    assert manifest_version(old) == 1 and MANIFEST_VERSION == 2
    computed = cache_statistics(old, {REF_LOGPS: torch.zeros(300), WEAK_SHIFT: column})
    assert computed == {SHIFT: statistics(ShiftSummary.of(column)), "from_cached_values": True}
    assert cache_statistics(old, {REF_LOGPS: torch.zeros(3)}) == {}  # WPO

    stored = {SHIFT: {"tokens": 1, "mean_abs": 5.0}}
    new = {**old, "manifest_version": 2, STATISTICS_KEY: stored}
    assert manifest_version(json.loads(json.dumps(new))) == 2
    assert cache_statistics(new, {WEAK_SHIFT: column}) == stored


def test_warning_fires_above_the_threshold_only(caplog):
    mild = {SHIFT: {"tokens": 10, "mean_abs": 1.9}}
    assert shift_stats.exceeding(mild, 2.0) == {}
    cross = {SHIFT: {"tokens": 4, "mean_abs": 5.7}, WEAK_TOKENS: {"tokens": 10, "mean_abs": 1.5}}
    assert shift_stats.exceeding(cross, 2.0) == {SHIFT: 5.7}
    assert shift_stats.exceeding(cross, math.inf) == {}
    text = shift_stats.warning_text({SHIFT: 5.7, WEAK_TOKENS: 2.5}, 2.0, 1.0, cross=True)
    assert (
        "`wspo_shift_warning: 2` nats per token (5.70 on the strong tokens, after the projection; 2.50 on the " in text
    )
    assert "(3.00 on the response tokens)" in shift_stats.warning_text({SHIFT: 3.0}, 2.0)
    assert "likelihood displacement" in text and "milder weak alignment" in text and "`pref_beta` (now 1)" in text


# End to end: LLaMA-Factory's run_exp in this process, with a mild and an extreme weak pair made from the tiny weak
# model by scaling its final norm (the logits of the "aligned" model are the base's times the factor).
WARNING_HEAD = "The weak shift w_t = log π_w*(y_t) - log π_w⁰(y_t) is large"
SCALES = {"mild": 1.5, "extreme": 40.0}


@pytest.fixture(scope="module")
def weak_pairs(assets, tmp_path_factory) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("weak_pairs")
    for name, scale in SCALES.items():
        model = AutoModelForCausalLM.from_pretrained(assets / "weak")
        with torch.no_grad():
            model.model.norm.weight.mul_(scale)
        model.save_pretrained(out / name)
        AutoTokenizer.from_pretrained(assets / "weak").save_pretrained(out / name)
    return out


def _independent_shifts(assets: Path, aligned: Path, num_examples: int) -> list[list[float]]:
    r"""``w_t`` of each response token of the first examples, from the models run here in float64 on LLaMA-Factory's
    rendering of the tiny task (one unpadded example at a time)."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(assets / "strong")
    template = get_template_and_fix_tokenizer(tokenizer, DataArguments(template="qwen"))
    models = [AutoModelForCausalLM.from_pretrained(path).eval() for path in (assets / "weak", aligned)]
    shifts = []
    for row in json.loads((assets / "data" / "tiny_sft.json").read_text())[:num_examples]:
        messages = [{"role": "user", "content": row["instruction"]}, {"role": "assistant", "content": row["output"]}]
        prompt, response = template.encode_oneturn(tokenizer, messages)
        with torch.no_grad():
            base, tuned = (m(torch.tensor([prompt + response])).logits[0].double().log_softmax(-1) for m in models)
        positions = range(len(prompt) - 1, len(prompt) + len(response) - 1)
        shifts.append([(tuned[p, token] - base[p, token]).item() for p, token in zip(positions, response)])
    return shifts


@pytest.mark.slow
def test_warning_fires_only_for_the_extreme_weak_pair(assets, weak_pairs, tmp_path, run_in_process):
    from helpers.train import train_logs, wspo_config

    runs, manifests = {}, {}
    for name in SCALES:
        config = wspo_config(
            assets, tmp_path / name, weak_aligned_model=str(weak_pairs / name), max_steps=1, max_samples=16
        )
        runs[name] = run_in_process(config).check()
        (path,) = (tmp_path / name / "cache").glob("*/manifest.json")
        manifests[name] = json.loads(path.read_text())

        shifts = _independent_shifts(assets, weak_pairs / name, 16)
        flat = np.array([w for row in shifts for w in row])
        stored = manifests[name]["weak_shift_statistics"]
        assert manifests[name]["manifest_version"] == 2 and list(stored) == ["shift"]  # same tokenizer: one
        assert stored["shift"]["tokens"] == flat.size
        assert stored["shift"]["mean"] == pytest.approx(flat.mean(), rel=1e-4, abs=1e-6)
        assert stored["shift"]["mean_abs"] == pytest.approx(np.abs(flat).mean(), rel=1e-4)
        assert stored["shift"]["share_above_2"] == pytest.approx(np.mean(np.abs(flat) > 2), abs=1 / flat.size)
        first_batch = [w for row in shifts[:4] for w in row]  # disable_shuffling, batch size 4
        logged = train_logs(tmp_path / name / "out")[0]["wspo/weak_shift_mean"]
        assert logged == pytest.approx(sum(first_batch) / len(first_batch), rel=1e-4, abs=1e-6)
        assert f"Weak shift over the response tokens: mean {stored['shift']['mean']:+.3f}" in runs[name].log

    assert manifests["mild"]["weak_shift_statistics"]["shift"]["mean_abs"] < 2.0  # the pairs are what they claim
    assert manifests["extreme"]["weak_shift_statistics"]["shift"]["mean_abs"] > 2.0
    assert WARNING_HEAD not in runs["mild"].log
    assert runs["extreme"].log.count(WARNING_HEAD) == 1 and "`wspo_shift_warning: 2` nats" in runs["extreme"].log


def _parse(assets: Path, tmp_path: Path, **overrides):
    import llamafactory.train.tuner  # noqa: F401 (the plugin's training arguments are active once it is imported)
    from helpers.train import wspo_config
    from llamafactory.hparams.parser import _parse_train_args

    argv = [f"--{key}={value}" for key, value in wspo_config(assets, tmp_path, **overrides).items()]
    return _parse_train_args(argv)[3]


def test_wspo_shift_warning_option(assets, tmp_path):
    assert _parse(assets, tmp_path).wspo_shift_warning == 2.0
    assert _parse(assets, tmp_path, wspo_shift_warning=5).wspo_shift_warning == 5.0
    assert _parse(assets, tmp_path, wspo_shift_warning="inf").wspo_shift_warning == math.inf  # never warns
    for bad in (0, -1, "nan"):
        with pytest.raises(ValueError, match=r"^`wspo_shift_warning` must be a positive number of nats per token"):
            _parse(assets, tmp_path, wspo_shift_warning=bad)


def _tiny_pass(cache: Path):
    from datasets import Dataset
    from helpers.tiny_lm import TinyFrozen, collate, examples

    from llamafactory_wspo.logps import precompute

    models = [TinyFrozen("ref", 2), TinyFrozen("weak_base", 0), TinyFrozen("weak_aligned", 1)]
    store = precompute.precompute_logps(
        [Dataset.from_dict(examples())],
        models,
        lambda logps: {REF_LOGPS: logps["ref"], WEAK_SHIFT: logps["weak_aligned"] - logps["weak_base"]},
        collate,
        str(cache),
        {},
        batch_size=4,
        show_progress=False,
    )
    return store, sum(model.loads for model in models)


def test_pass_stores_statistics_and_an_old_cache_gets_them_from_its_values(tmp_path):
    from helpers.tiny_lm import TinyLM, examples

    store, loads = _tiny_pass(tmp_path)
    (path,) = tmp_path.glob("*/manifest.json")
    manifest = json.loads(path.read_text())
    assert loads == 3 and manifest["manifest_version"] == MANIFEST_VERSION == 2
    assert store.statistics == manifest[STATISTICS_KEY] and list(store.statistics) == [SHIFT]

    # independently: w_t from the tiny models' tables (logits = table[token]), in float64
    tables = [TinyLM(seed).table.detach().double().log_softmax(-1) for seed in (0, 1)]
    shifts = []
    for ids, labels in zip(*examples().values()):
        for position in range(1, len(ids)):
            if labels[position] != -100:
                base, aligned = (table[ids[position - 1], ids[position]].item() for table in tables)
                shifts.append(aligned - base)
    flat = np.array(shifts)
    stats = store.statistics[SHIFT]
    assert stats["tokens"] == flat.size and stats["mean_abs"] == pytest.approx(np.abs(flat).mean(), rel=1e-6)
    assert stats["mean"] == pytest.approx(flat.mean(), rel=1e-6)
    assert stats["share_above_2"] == np.count_nonzero(np.abs(flat) > 2) / flat.size

    # the same cache as a run before the statistics left it: reused, the statistics computed from its values
    old = {key: value for key, value in manifest.items() if key not in ("manifest_version", STATISTICS_KEY)}
    path.write_text(json.dumps(old))
    again, loads = _tiny_pass(tmp_path)
    assert loads == 0 and again.statistics == {SHIFT: stats, "from_cached_values": True}
    assert json.loads(path.read_text()) == old  # not written back


def test_report_logs_both_distributions_and_warns_once():
    import logging

    projected, weak = torch.tensor([-6.0, -5.5, 0.5]), torch.tensor([-0.5, -3.0, -2.5, -3.0, -2.5, 0.5])
    stats = {SHIFT: statistics(ShiftSummary.of(projected)), WEAK_TOKENS: statistics(ShiftSummary.of(weak))}
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    level = shift_stats.logger.level
    shift_stats.logger.addHandler(handler)
    shift_stats.logger.setLevel(logging.INFO)
    try:
        assert shift_stats.report(stats, 2.0, 0.1) is True
        assert shift_stats.report(stats, 4.0, 0.1) is False  # 4 > 12 / 3 = 4.0: not above
    finally:
        shift_stats.logger.removeHandler(handler)
        shift_stats.logger.setLevel(level)

    lines = [(record.levelno, record.getMessage()) for record in records]
    assert [level for level, _ in lines] == [logging.INFO, logging.INFO, logging.WARNING, logging.INFO, logging.INFO]
    assert lines[0][1].startswith(
        "Weak shift over the strong tokens, after the projection: mean -3.667, mean |w| 4.000"
    )
    assert lines[1][1].startswith(
        "Weak shift over the weak tokens, before the projection: mean -1.833, mean |w| 2.000"
    )
    assert "(4.00 on the strong tokens, after the projection)" in lines[2][1]  # 2.0 on the weak tokens: not above
    assert "`pref_beta`, now 0.1" not in lines[2][1] and "(now 0.1)" in lines[2][1]
