r"""``llamafactory-wspo reward-server``: the XSUM length reward over HTTP, for ``reward_model_type: api``."""

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..length_reward import DEFAULT_LENGTH_MAX, DEFAULT_LENGTH_MIN, check_length_range, length_reward
from .args import CliError, check_length_options, option, parse_args, run_command


if TYPE_CHECKING:
    from fastapi import FastAPI
    from transformers import PreTrainedTokenizer


PROG = "llamafactory-wspo reward-server"
DESCRIPTION = r"""Serve the summary-length reward in the format of LLaMA-Factory's `reward_model_type: api`.

  llamafactory-wspo reward-server model_name_or_path=saves/xsum/qwen2-1.5b-sft template=qwen port=8000

and in a `stage: ppo` recipe: reward_model_type: api, reward_model: http://127.0.0.1:8000/v1/score/evaluation
(`POST /` answers too; `GET /health` reports the settings and the assistant-turn marker).

LLaMA-Factory's PPO trainer posts {"model": ..., "messages": [text, ...]}, each text the decoded prompt followed by
the generated response (special tokens kept), and reads the reply's `scores`. The server cuts out each response:
the text after the last assistant-turn marker of the template (for qwen `<|im_end|>\n<|im_start|>assistant\n`,
decoded with the model's tokenizer), with trailing stop words (the template's, the eos and pad tokens; repeated)
and any complete reasoning block (the template's thought words) removed, as LLaMA-Factory does; its score is the
length reward of its whitespace-separated words. Every step is linear in the text's length. A text without the
marker (a prompt cut by cutoff_len) is an error (HTTP 422) unless missing_marker_score gives it a score. A request
body larger than max_request_bytes is refused with HTTP 413 before it is read further.
"""
SENTINEL = "\u0000CONTENT\u0000"  # stands for the user's message when the template's user turn is rendered
logger = logging.getLogger(__name__)


@dataclass
class RewardServerArguments:
    model_name_or_path: str = option(help="Tokenizer of the policy (its model folder or hub id).")
    template: str = option(help="LLaMA-Factory template of the PPO recipe, e.g. qwen.")
    host: str = option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface).")
    port: int = option(8000, help="Port to listen on.")
    length_min: int = option(DEFAULT_LENGTH_MIN, help="L_min of the length reward (words).")
    length_max: int = option(DEFAULT_LENGTH_MAX, help="L_max of the length reward (words).")
    missing_marker_score: float | None = option(
        None, help="Score of a text without the assistant-turn marker (default: such a text is an error, HTTP 422)."
    )
    max_request_bytes: int = option(
        16 * 2**20, help="Largest request body in bytes; a larger one is refused with HTTP 413."
    )
    trust_remote_code: bool = option(False, help="Run code that the tokenizer's folder carries (trusted ones only).")

    def check(self) -> None:
        check_length_options(self.length_min, self.length_max)
        if self.max_request_bytes < 1:
            raise CliError(f"--max_request_bytes must be >= 1, got {self.max_request_bytes}")
        if not 0 <= self.port < 65536:
            raise CliError(f"--port must lie in [0, 65535], got {self.port}")


class MissingMarkerError(ValueError):
    r"""A text that does not contain the assistant-turn marker."""


def strip_trailing(text: str, words: Sequence[str]) -> str:
    r"""``text.rstrip()`` without any run of ``words`` (and whitespace between them) at its end, as the loop
    ``while text.endswith(word): text = text[: -len(word)].rstrip()`` gives, but linear in ``len(text)``: an end
    index moves left and the string is cut once."""
    end = len(text)
    while end and text[end - 1].isspace():
        end -= 1
    moved = True
    while moved:
        moved = False
        for word in words:
            if word and text.endswith(word, 0, end):
                end -= len(word)
                while end and text[end - 1].isspace():
                    end -= 1
                moved = True
    return text[:end]


def remove_thought(text: str, open_word: str, close_word: str) -> str:
    r"""What ``Template.remove_thought`` returns (every ``open ... close`` block removed, leading newlines stripped),
    in one left-to-right scan instead of its regex, which is quadratic on many unclosed ``open`` words."""
    if not open_word or not close_word:
        return text.lstrip("\n")
    pieces, position = [], 0
    while True:
        start = text.find(open_word, position)
        if start < 0:
            break
        end = text.find(close_word, start + len(open_word))
        if end < 0:  # no block closes after this opening, so none after a later one either
            break
        pieces.append(text[position:start])
        position = end + len(close_word)
    pieces.append(text[position:])
    return "".join(pieces).lstrip("\n")


class ResponseExtractor:
    r"""Cuts the response out of a decoded prompt-plus-response text (rule in the command's description)."""

    def __init__(self, tokenizer: "PreTrainedTokenizer", template_name: str) -> None:
        from llamafactory.data import get_template_and_fix_tokenizer
        from llamafactory.hparams import DataArguments

        if not template_name:
            raise CliError("--template is required: the chat template that formatted the prompts, e.g. `qwen`")
        try:
            self.template = get_template_and_fix_tokenizer(tokenizer, DataArguments(template=template_name))
        except ValueError as err:
            raise CliError(f"--template {template_name}: {err} Use a template name of LLaMA-Factory.") from None

        self.template_name = template_name
        self.tokenizer = tokenizer
        self.marker = self._assistant_marker()
        self.stop_words = [
            word
            for word in dict.fromkeys([*self.template.stop_words, tokenizer.eos_token, tokenizer.pad_token])
            if word
        ]
        self.thought_words = tuple(getattr(self.template, "thought_words", None) or ("", ""))

    def _assistant_marker(self) -> str:
        r"""The decoded text that the template puts between a user message's content and the assistant's reply."""
        elements = self.template.format_user.apply(content=SENTINEL)
        for index, element in enumerate(elements):
            if isinstance(element, str) and SENTINEL in element:
                tail = [element.split(SENTINEL, 1)[1], *elements[index + 1 :]]
                break
        else:
            raise CliError(f"--template {self.template_name}: its user turn has no content slot")

        ids = self.template._convert_elements_to_ids(self.tokenizer, tail)
        marker = self.tokenizer.decode(ids, skip_special_tokens=False).strip()
        if not marker:
            raise CliError(
                f"--template {self.template_name} writes nothing between the user's message and the reply, so the "
                "response cannot be found in the decoded text: use the chat template the prompts were formatted with"
            )
        return marker

    def __call__(self, text: str) -> str:
        position = text.rfind(self.marker)
        if position < 0:
            raise MissingMarkerError(
                f"no assistant-turn marker {self.marker!r} (template {self.template_name}) in the text "
                f"{text[-200:]!r}: was the prompt truncated by cutoff_len?"
            )
        response = strip_trailing(text[position + len(self.marker) :].strip(), self.stop_words)
        return remove_thought(response, *self.thought_words).strip()


class BodySizeLimit:
    r"""ASGI middleware: a request whose body exceeds ``max_bytes`` gets HTTP 413 at once: refused before reading
    when its ``Content-Length`` says so, otherwise read up to the limit (never more is held) and then refused."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > self.max_bytes:
                return await self._refuse(send)
            return await self.app(scope, receive, send)

        body = bytearray()  # a streamed body: read it here, up to the limit, then hand it on
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message]), send)
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                return await self._refuse(send)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay([{"type": "http.request", "body": bytes(body), "more_body": False}]), send)

    async def _refuse(self, send) -> None:
        body = f'{{"detail": "request body larger than {self.max_bytes} bytes (max_request_bytes)"}}'.encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _replay(messages: list[dict[str, Any]]):
    r"""An ASGI ``receive`` that hands out ``messages``, then waits for the client to go."""
    pending = list(messages)

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        return {"type": "http.disconnect"}

    return receive


def create_app(
    tokenizer: "str | PreTrainedTokenizer",
    template: str,
    length_min: int = DEFAULT_LENGTH_MIN,
    length_max: int = DEFAULT_LENGTH_MAX,
    missing_marker_score: float | None = None,
    max_request_bytes: int = 16 * 2**20,
    trust_remote_code: bool = False,
) -> "FastAPI":
    r"""The FastAPI application: ``POST /v1/score/evaluation`` (and ``POST /``) and ``GET /health``.

    ``tokenizer`` is a tokenizer or the path / hub id to load one from (``AutoTokenizer``).
    """
    from fastapi import FastAPI, HTTPException
    from llamafactory.api.protocol import ScoreEvaluationRequest, ScoreEvaluationResponse

    try:
        check_length_range(length_min, length_max)
    except ValueError as err:
        raise CliError(str(err)) from None
    if isinstance(tokenizer, str):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer, trust_remote_code=trust_remote_code)

    extractor = ResponseExtractor(tokenizer, template)
    app = FastAPI(title="llamafactory-wspo length reward")
    app.add_middleware(BodySizeLimit, max_bytes=max_request_bytes)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "template": template,
            "marker": extractor.marker,
            "stop_words": extractor.stop_words,
            "length_min": length_min,
            "length_max": length_max,
            "max_request_bytes": max_request_bytes,
        }

    def score(request: ScoreEvaluationRequest) -> ScoreEvaluationResponse:
        responses, missing = [], []
        for index, text in enumerate(request.messages):
            try:
                responses.append(extractor(text))
            except MissingMarkerError as err:
                if missing_marker_score is None:
                    logger.error("message %d: %s", index, err)
                    raise HTTPException(
                        status_code=422,
                        detail=f"message {index}: {err} Start the server with missing_marker_score to score such "
                        "texts, or shorten the prompts.",
                    ) from None
                missing.append(index)
                responses.append(None)
        if missing:
            logger.warning(
                "%d text(s) without the assistant-turn marker scored %s", len(missing), missing_marker_score
            )
        rewards = iter(length_reward((r for r in responses if r is not None), length_min, length_max))
        scores = [missing_marker_score if r is None else next(rewards) for r in responses]
        return ScoreEvaluationResponse(id=f"score-{uuid.uuid4().hex}", model=request.model, scores=scores)

    app.post("/v1/score/evaluation", response_model=ScoreEvaluationResponse)(score)
    app.post("/", response_model=ScoreEvaluationResponse)(score)
    return app


def run(args: RewardServerArguments) -> int:
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(
        args.model_name_or_path,
        args.template,
        args.length_min,
        args.length_max,
        args.missing_marker_score,
        args.max_request_bytes,
        args.trust_remote_code,
    )
    url = f"http://{args.host}:{args.port}/v1/score/evaluation"
    logger.info("Length reward for [%d, %d] words at POST %s", args.length_min, args.length_max, url)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=False)
    return 0


def main(argv: Sequence[str]) -> int:
    return run_command(PROG, lambda: run(parse_args(RewardServerArguments, argv, PROG, DESCRIPTION)))


ARGUMENTS = RewardServerArguments  # the options of this subcommand
