"""``scripts/reward_server.py``: the length reward served to LLaMA-Factory's ``reward_model_type: api`` client.

The server runs as a command on a free 127.0.0.1 port; LLaMA-Factory's own client function
(``get_rewards_from_server``) queries it with texts built exactly as its PPO trainer builds them.
"""

import os
import subprocess
import sys
import time

import pytest
import requests
from helpers.scripts import script_module
from helpers.train import ROOT, base_env, free_port

from llamafactory_wspo.rewards import length_reward


SERVER = ROOT / "scripts" / "reward_server.py"
LENGTH_MIN, LENGTH_MAX = 3, 5
QWEN_MARKER = "<|im_end|> <|im_start|> assistant"  # the qwen template's user-turn end, decoded by the tiny tokenizer
pytestmark = pytest.mark.timeout(600)  # LLaMA-Factory's client posts without a timeout of its own


@pytest.fixture(scope="module")
def server(assets, tmp_path_factory):
    r"""The server as a subprocess on 127.0.0.1 with the tiny tokenizer and template ``qwen``; stopped at the end."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("reward_server") / "server.log"
    command = [
        sys.executable, str(SERVER), "--tokenizer", str(assets / "tokenizer"), "--template", "qwen",
        "--host", "127.0.0.1", "--port", str(port), "--length_min", str(LENGTH_MIN), "--length_max", str(LENGTH_MAX),
    ]  # fmt: skip
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(command, env=base_env(), stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    saved_env = {key: os.environ.get(key) for key in ("NO_PROXY", "no_proxy")}
    os.environ.update(NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")  # never through a proxy, whatever the machine's
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"reward server exited ({proc.returncode}):\n{log_path.read_text()[-4000:]}")
            try:
                if requests.get(f"{base_url}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"reward server did not answer in time:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)

        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def tiny_template(assets):
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(assets / "tokenizer"))
    return tokenizer, get_template_and_fix_tokenizer(tokenizer, DataArguments(template="qwen"))


def host_messages(tokenizer, template, cases) -> list[str]:
    r"""What LLaMA-Factory's PPO trainer posts: ``batch_decode(query + response ids, skip_special_tokens=False)``.

    The query is the prompt as the unsupervised data processor encodes it (``encode_oneturn`` with an empty reply);
    the response is the generated ids up to the last non-pad token: the eos when generation stopped on it, no eos
    when it ran out of new tokens, and a single pad token when nothing was generated.
    """
    token_ids = []
    for messages, response, ending in cases:
        query, _ = template.encode_oneturn(tokenizer, [*messages, {"role": "assistant", "content": ""}])
        response_ids = tokenizer.encode(response, add_special_tokens=False)
        if ending == "eos":
            response_ids.append(tokenizer.eos_token_id)
        elif ending == "pad":
            assert not response_ids
            response_ids = [tokenizer.pad_token_id]
        token_ids.append(query + response_ids)

    return tokenizer.batch_decode(token_ids, skip_special_tokens=False)


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


CASES = [  # (prompt messages, generated response, how generation ended)
    ([user("list some animals")], "cat dog", "eos"),
    ([user("name a few colors for a song")], "red blue green", "eos"),
    ([user("give me fruits")], "apple pear plum lime mango", "eos"),
    ([user("tell me numbers")], "one two three four five six seven eight", "none"),  # hit max_new_tokens
    ([user("list some tools")], "", "pad"),  # nothing generated
    ([user("write down some animals")], "assistant user system cat", "eos"),  # template words inside the reply
    (  # a conversation with history: the reply follows the last assistant-turn marker
        [user("list some animals"), {"role": "assistant", "content": "cat dog horse cow sheep goat"}, user("fewer")],
        "cat dog horse",
        "eos",
    ),
]
HAND_SCORES = [0.5, 1.0, 1.0, -0.5, -0.5, 1.0, 1.0]  # [3, 5]: words 2, 3, 5, 8, 0, 4, 3


def test_llamafactory_client_gets_the_length_reward_of_the_responses(server, tiny_template):
    from llamafactory.train.ppo.ppo_utils import get_rewards_from_server

    tokenizer, template = tiny_template
    messages = host_messages(tokenizer, template, CASES)
    assert all(QWEN_MARKER in text for text in messages)
    assert messages[4].endswith(f"{QWEN_MARKER} {tokenizer.pad_token}")

    scores = get_rewards_from_server(f"{server}/v1/score/evaluation", messages)
    expected = length_reward([response for _, response, _ in CASES], LENGTH_MIN, LENGTH_MAX)
    assert expected == HAND_SCORES
    assert scores.tolist() == pytest.approx(expected, abs=1e-6)

    # `POST /` answers the same, so `reward_model: http://host:port` works as well.
    assert get_rewards_from_server(f"{server}/", messages[:3]).tolist() == pytest.approx(HAND_SCORES[:3], abs=1e-6)


def test_health_and_a_text_without_the_marker(server):
    health = requests.get(f"{server}/health", timeout=10).json()
    assert health["status"] == "ok" and health["template"] == "qwen"
    assert health["marker"] == QWEN_MARKER
    assert (health["length_min"], health["length_max"]) == (LENGTH_MIN, LENGTH_MAX)
    assert health["stop_words"] == ["<|im_end|>", "<|endoftext|>"]

    # e.g. a prompt that cutoff_len truncated before the assistant turn: an error that names the problem.
    reply = requests.post(
        f"{server}/v1/score/evaluation", json={"model": "model", "messages": ["cat dog"]}, timeout=10
    )
    assert reply.status_code == 422
    assert "assistant-turn marker" in reply.json()["detail"] and "--missing_marker_score" in reply.json()["detail"]
    assert requests.get(f"{server}/health", timeout=10).status_code == 200  # still serving


def test_missing_marker_score_in_process(assets, tiny_template):
    r"""``create_app`` in-process (FastAPI's test client): a text without the marker gets the fixed score."""
    from fastapi.testclient import TestClient

    create_app = script_module("reward_server").create_app

    tokenizer, template = tiny_template
    app = create_app(str(assets / "tokenizer"), "qwen", LENGTH_MIN, LENGTH_MAX, missing_marker_score=-3.0)
    good = host_messages(tokenizer, template, CASES[:1])[0]
    reply = TestClient(app).post("/v1/score/evaluation", json={"model": "m", "messages": ["cat dog", good, "x"]})
    assert reply.status_code == 200
    assert reply.json()["scores"] == [-3.0, 0.5, -3.0] and reply.json()["model"] == "m"


def byte_level_tokenizer():
    r"""A small byte-level BPE tokenizer: any text survives encoding and decoding, like Qwen's or Llama 3's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<eos>", "<pad>"]
    )
    tokenizer.train_from_iterator(["The cat sat on the mat. A short summary of the news, in one line."] * 8, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", pad_token="<pad>")


@pytest.mark.parametrize("template_name", ["qwen", "llama3", "mistral", "alpaca", "gemma", "chatml", "vicuna", "glm4"])
def test_marker_rule_across_templates(template_name):
    r"""The response cut out of host-built texts for several of LLaMA-Factory's templates, with a byte-level BPE."""
    ResponseExtractor = script_module("reward_server").ResponseExtractor

    tokenizer = byte_level_tokenizer()
    extractor = ResponseExtractor(tokenizer, template_name)
    cases = [
        ([user("Summarize the news.\n\nThe cat sat on the mat.")], "A cat sat on a mat, briefly.", "eos"),
        ([user("Summarize.")], "Line one.\nLine two", "none"),
        (
            [user("Summarize."), {"role": "assistant", "content": "Too long an answer."}, user("Shorter.")],
            "Short.",
            "eos",
        ),
        ([user("Summarize.")], "", "pad"),
    ]
    texts = host_messages(tokenizer, extractor.template, cases)
    assert [extractor(text) for text in texts] == [response for _, response, _ in cases]


def test_bad_template_is_an_error(assets):
    create_app = script_module("reward_server").create_app

    with pytest.raises(ValueError, match="--template no_such_template"):
        create_app(str(assets / "tokenizer"), "no_such_template")
    with pytest.raises(ValueError, match="--template empty writes nothing"):
        create_app(str(assets / "tokenizer"), "empty")
    with pytest.raises(ValueError, match="length_reward_min"):
        create_app(str(assets / "tokenizer"), "qwen", 5, 5)


def test_command_line_errors(assets, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SERVER), "--tokenizer", str(assets / "tokenizer"), "--template", "qwen",
         "--length_min", "9", "--length_max", "3"],
        env=base_env(), capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode != 0 and "--length_min 9 --length_max 3" in proc.stderr
    proc = subprocess.run(
        [sys.executable, str(SERVER), "--tokenizer", str(assets / "tokenizer"), "--template", "nope", "--port", "1"],
        env=base_env(), capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode != 0 and "--template nope" in proc.stderr
