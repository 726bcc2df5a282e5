"""The log-prob store and the collator: identity matching, padding, atomic files."""

import hashlib
import random

import pytest
import torch
from transformers import AutoTokenizer

from llamafactory_wspo.logps.store import LogpsStore, example_uid, num_response_tokens
from llamafactory_wspo.losses import IGNORE_INDEX, response_mask


def _examples(num: int, seed: int = 0) -> list[dict[str, list[int]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(num):
        prompt, response = rng.randint(1, 6), rng.randint(1, 5)
        ids = [rng.randrange(3, 50) for _ in range(prompt + response)]
        out.append(
            {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [IGNORE_INDEX] * prompt + ids[prompt:]}
        )
    return out


def _store_for(examples) -> tuple[LogpsStore, dict[int, torch.Tensor]]:
    rows = {}
    for example in examples:
        uid = example_uid(example["input_ids"], example["labels"])
        n = num_response_tokens(example["labels"])
        rows[uid] = {
            "a": torch.arange(n, dtype=torch.float32) + uid % 1000,
            "b": -torch.arange(n, dtype=torch.float32),
        }
    return LogpsStore.from_rows(rows, ["a", "b"]), rows


def test_uid_depends_on_tokens_and_labels_only():
    ids, labels = [5, 6, 7], [IGNORE_INDEX, 6, 7]
    assert example_uid(ids, labels) == example_uid(list(ids), list(labels))
    assert example_uid(ids, labels) != example_uid(ids, [IGNORE_INDEX, IGNORE_INDEX, 7])
    assert example_uid(ids, labels) != example_uid([5, 6, 8], labels)


def test_gather_places_values_on_response_positions_of_any_order():
    examples = _examples(12)
    store, rows = _store_for(examples)
    shuffled = examples[:]
    random.Random(3).shuffle(shuffled)
    length = max(len(e["input_ids"]) for e in shuffled) + 2  # right padding
    labels = torch.full((len(shuffled), length), IGNORE_INDEX)
    for i, e in enumerate(shuffled):
        labels[i, : len(e["labels"])] = torch.tensor(e["labels"])

    mask = response_mask(labels)
    uids = [example_uid(e["input_ids"], e["labels"]) for e in shuffled]
    out = store.gather(uids, mask)
    for i, uid in enumerate(uids):
        assert out["a"][i][mask[i]].tolist() == rows[uid]["a"].tolist()
        assert out["b"][i][mask[i]].tolist() == rows[uid]["b"].tolist()
        assert (out["a"][i][~mask[i]] == 0).all()


def test_gather_refuses_unknown_or_misaligned_examples():
    examples = _examples(4)
    store, _ = _store_for(examples[:3])
    e = examples[3]
    labels = torch.tensor([e["labels"]])
    with pytest.raises(KeyError, match="no precomputed log-probs"):
        store.gather([example_uid(e["input_ids"], e["labels"])], response_mask(labels))

    known = examples[0]
    shorter = torch.tensor([[IGNORE_INDEX] * len(known["labels"])])
    if num_response_tokens(known["labels"]):
        with pytest.raises(ValueError, match="do not match"):
            store.gather([example_uid(known["input_ids"], known["labels"])], response_mask(shorter))


def test_save_load_concat_roundtrip(tmp_path):
    examples = _examples(10)
    first, _ = _store_for(examples[:6])
    second, _ = _store_for(examples[6:])
    first.save(str(tmp_path / "one.safetensors"))
    second.save(str(tmp_path / "two.safetensors"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.safetensors", "two.safetensors"]  # no temporary left
    merged = LogpsStore.concat([LogpsStore.load(str(tmp_path / n)) for n in ("one.safetensors", "two.safetensors")])
    whole, rows = _store_for(examples)
    assert len(merged) == 10
    for uid, values in rows.items():
        i = merged.uids.tolist().index(uid)
        start, end = merged.offsets[i].item(), merged.offsets[i + 1].item()
        assert merged.columns["a"][start:end].tolist() == values["a"].tolist()


def test_a_shard_holds_the_bytes_that_safetensors_save_file_writes(tmp_path):
    from safetensors.torch import save_file

    store, _ = _store_for(_examples(10))
    digest, size = store.save(str(tmp_path / "shard.safetensors"))
    tensors = {"uids": store.uids, "offsets": store.offsets, **{f"column.{k}": v for k, v in store.columns.items()}}
    save_file(tensors, str(tmp_path / "reference.safetensors"))
    data = (tmp_path / "shard.safetensors").read_bytes()
    assert data == (tmp_path / "reference.safetensors").read_bytes()
    assert (digest, size) == (hashlib.sha256(data).hexdigest(), len(data))


def test_collator_attaches_stored_values_by_identity(assets):
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments

    from llamafactory_wspo.data import SFTDataCollatorWithLogps

    tokenizer = AutoTokenizer.from_pretrained(assets / "strong")
    template = get_template_and_fix_tokenizer(tokenizer, DataArguments(template="qwen"))
    examples = _examples(6)
    store, rows = _store_for(examples)
    collator = SFTDataCollatorWithLogps(
        template=template, tokenizer=tokenizer, pad_to_multiple_of=8, label_pad_token_id=IGNORE_INDEX, store=store
    )
    order = [4, 0, 5, 2]
    batch = collator([{k: list(v) for k, v in examples[i].items()} for i in order])
    assert batch["input_ids"].shape[1] % 8 == 0
    mask = response_mask(batch["labels"])
    for row, i in enumerate(order):
        uid = example_uid(examples[i]["input_ids"], examples[i]["labels"])
        assert batch["a"][row][mask[row]].tolist() == rows[uid]["a"].tolist()


def test_the_cache_format_is_the_one_existing_caches_have(tmp_path):
    r"""The uids, the key and the bytes of a shard, as earlier releases wrote them (computed with llamafactory-wspo at
    9642570, before the store moved to ``logps/``): a change here silently invalidates every existing cache, or makes
    it unreadable."""
    from llamafactory_wspo.logps.store import CACHE_FORMAT, MANIFEST, MANIFEST_VERSION, cache_key, shard_name

    uids = [
        example_uid([1, 2, 3, 4], [-100, -100, 3, 4]),
        example_uid([5, 6, 7], [-100, 6, 7], [8, 9], [-100, 9], [0]),
    ]
    assert uids == [2554266299323612123, 7729735747281500658]
    key = cache_key(uids, {"ref": {"weights": "abc", "options": {"x": 1}}}, {"stage": "wspo", "beta": 0.1})
    assert key == "a737626879477f628fe9564f33f778c7"
    rows = {
        uids[0]: {"ref_logps": torch.tensor([-1.5, -0.25]), "weak_shift": torch.tensor([0.5, -0.125])},
        uids[1]: {"ref_logps": torch.tensor([-2.0]), "weak_shift": torch.tensor([1.0])},
    }
    path = tmp_path / shard_name(0, 1)
    assert path.name == "shard-00000-of-00001.safetensors"
    digest = LogpsStore.from_rows(rows, ["ref_logps", "weak_shift"]).save(str(path))
    assert digest == ("977b68216a9362ace603164a4456023097562d0f0e416628020bb07aac33ebe1", 336)
    assert (MANIFEST, CACHE_FORMAT, MANIFEST_VERSION) == ("manifest.json", 2, 2)
    loaded = LogpsStore.load(str(path))
    assert torch.equal(loaded.columns["weak_shift"], torch.tensor([0.5, -0.125, 1.0]))
