"""``llamafactory-wspo reward-server``: the length reward served to LLaMA-Factory's ``reward_model_type: api``
client, and a hostile client's bodies answered or refused at once.

The server runs as the command on a free 127.0.0.1 port; LLaMA-Factory's own client function
(``get_rewards_from_server``) queries it with texts built exactly as its PPO trainer builds them.
"""

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from helpers.cli import cli_command
from helpers.train import base_env, free_port

from llamafactory_wspo.cli.reward_server import ResponseExtractor, create_app, remove_thought, strip_trailing
from llamafactory_wspo.length_reward import length_reward


LENGTH_MIN, LENGTH_MAX = 3, 5
MAX_REQUEST_BYTES = 3 * 2**20
QWEN_MARKER = "<|im_end|> <|im_start|> assistant"  # the qwen template's user-turn end, decoded by the tiny tokenizer
pytestmark = pytest.mark.timeout(600)  # LLaMA-Factory's client posts without a timeout of its own


@pytest.fixture(scope="module")
def server(assets, tmp_path_factory):
    r"""The server as a subprocess on 127.0.0.1 with the tiny tokenizer and template ``qwen``; stopped at the end."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("reward_server") / "server.log"
    command = cli_command(
        "reward-server", f"model_name_or_path={assets / 'tokenizer'}", "template=qwen", "host=127.0.0.1",
        f"port={port}", f"length_min={LENGTH_MIN}", f"length_max={LENGTH_MAX}", f"max_request_bytes={MAX_REQUEST_BYTES}",
    )  # fmt: skip
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
    assert "assistant-turn marker" in reply.json()["detail"] and "missing_marker_score" in reply.json()["detail"]
    assert requests.get(f"{server}/health", timeout=10).status_code == 200  # still serving


def test_missing_marker_score_in_process(assets, tiny_template):
    r"""``create_app`` in-process (FastAPI's test client): a text without the marker gets the fixed score."""
    from fastapi.testclient import TestClient

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
    from llamafactory_wspo.cli.args import CliError

    with pytest.raises(CliError, match="--template no_such_template"):
        create_app(str(assets / "tokenizer"), "no_such_template")
    with pytest.raises(CliError, match="--template empty writes nothing"):
        create_app(str(assets / "tokenizer"), "empty")
    with pytest.raises(CliError, match="length_reward_min"):
        create_app(str(assets / "tokenizer"), "qwen", 5, 5)


def test_command_line_errors(assets, capsys):
    from llamafactory_wspo.cli import main

    tokenizer = f"model_name_or_path={assets / 'tokenizer'}"
    for argv, message in (
        ([tokenizer, "template=qwen", "length_min=9", "length_max=3"], "--length_min 9 --length_max 3"),
        ([tokenizer, "template=nope", "port=1"], "--template nope"),
        ([tokenizer, "template=qwen", "max_request_bytes=0"], "--max_request_bytes"),
    ):
        assert main(["reward-server", *argv]) == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], lines


def post_timed(url: str, body: bytes, headers: dict | None = None) -> tuple[requests.Response, float]:
    started = time.monotonic()
    reply = requests.post(url, data=body, headers={"Content-Type": "application/json", **(headers or {})}, timeout=60)
    return reply, time.monotonic() - started


def test_hostile_bodies_are_answered_or_refused_at_once(server, tiny_template):
    r"""1 MB of unclosed reasoning openings or of stop words: linear work, answered in well under a second, while a
    normal request made at the same time is not held up; a body above ``max_request_bytes`` gets 413 at once."""
    import json

    tokenizer, template = tiny_template
    normal = host_messages(tokenizer, template, CASES[:1])[0]
    url = f"{server}/v1/score/evaluation"
    requests.post(url, json={"model": "m", "messages": [normal]}, timeout=30)  # warm

    def normal_request() -> tuple[requests.Response, float]:
        time.sleep(0.05)  # while a hostile body is being handled
        return post_timed(url, json.dumps({"model": "m", "messages": [normal]}).encode())

    # the response of each hostile text, once cut out: an unclosed reasoning block, and stop words only
    hostile = {
        "think": normal[: normal.rfind(QWEN_MARKER) + len(QWEN_MARKER)] + " cat dog" + "<think>\n" * (1 << 17),
        "stop words": normal[: normal.rfind(QWEN_MARKER) + len(QWEN_MARKER)] + " cat dog" + "<|im_end|>" * 110_000,
    }
    for name, text in hostile.items():
        body = json.dumps({"model": "m", "messages": [text]}).encode()
        assert len(body) >= 2**20, name

        with ThreadPoolExecutor(max_workers=1) as pool:
            normal_future = pool.submit(normal_request)
            reply, hostile_seconds = post_timed(url, body)
            normal_reply, normal_seconds = normal_future.result()  # its exceptions are raised here

        assert normal_reply.status_code == 200, (name, normal_reply.text[:300])
        assert normal_reply.json()["scores"] == [HAND_SCORES[0]], name
        assert reply.status_code == 200, (name, reply.text[:300])
        kept = "cat dog" if name == "stop words" else "cat dog" + "<think>\n" * (1 << 17)
        expected = length_reward([kept], LENGTH_MIN, LENGTH_MAX)[0]
        assert reply.json()["scores"] == [pytest.approx(expected)], name
        assert hostile_seconds < 0.8 and normal_seconds < 0.8, (name, hostile_seconds, normal_seconds)

    too_big = json.dumps({"model": "m", "messages": ["x" * (MAX_REQUEST_BYTES + 1)]}).encode()
    reply, seconds = post_timed(url, too_big)
    assert reply.status_code == 413 and "max_request_bytes" in reply.text and seconds < 0.8

    def chunks():  # no Content-Length: refused once the limit is passed
        for _ in range(8):
            yield b"x" * (MAX_REQUEST_BYTES // 4)

    reply = requests.post(url, data=chunks(), headers={"Content-Type": "application/json"}, timeout=60)
    assert reply.status_code == 413
    assert requests.get(f"{server}/health", timeout=10).json()["max_request_bytes"] == MAX_REQUEST_BYTES


def test_linear_extraction_matches_the_hosts_rules():
    r"""The linear forms give what the quadratic ones (LLaMA-Factory's ``remove_thought`` regex, the stop-word loop)
    give, on random mixtures of the pieces that make them slow."""
    import random
    import re

    def host_strip(response: str, words: list[str]) -> str:
        response, stripped = response.strip(), True
        while stripped:
            stripped = False
            for word in words:
                if response.endswith(word):
                    response, stripped = response[: -len(word)].rstrip(), True
        return response

    def host_remove_thought(text: str, open_word: str, close_word: str) -> str:
        pattern = re.compile(f"{re.escape(open_word)}(.*?){re.escape(close_word)}", re.DOTALL)
        return re.sub(pattern, "", text).lstrip("\n")

    words = ["<|im_end|>", "<|endoftext|>", "</s>", "d>"]
    pieces = ["a", " ", "\n", "<|im_end|>", "<|endoftext|>", "<think>\n", "\n</think>\n\n", "</s>", "x y", "<|im_en"]
    rng = random.Random(0)
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
        assert strip_trailing(text.strip(), words) == host_strip(text, words), repr(text)
        assert remove_thought(text, "<think>\n", "\n</think>\n\n") == host_remove_thought(
            text, "<think>\n", "\n</think>\n\n"
        ), repr(text)
