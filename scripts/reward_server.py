"""Serve the summary-length reward over HTTP in the format of LLaMA-Factory's ``reward_model_type: api``.

    python scripts/reward_server.py --tokenizer Qwen/Qwen2-1.5B --template qwen --port 8000 \
        --length_min 20 --length_max 30

and in the PPO recipe ``reward_model_type: api`` with ``reward_model: http://127.0.0.1:8000/v1/score/evaluation``
(``POST /`` answers too). ``GET /health`` reports the settings and the assistant-turn marker.

LLaMA-Factory's PPO trainer posts ``{"model": "model", "messages": [text, ...]}``, where each text is
``tokenizer.batch_decode(prompt_ids + response_ids, skip_special_tokens=False)``: the whole templated prompt
followed by the generated response; it reads the reply's ``scores`` (one float per text). The server therefore
cuts each response out of its text:

1. The **assistant-turn marker** is what the template writes after a user message's content (for ``qwen``:
   ``<|im_end|>\\n<|im_start|>assistant\\n``), taken from LLaMA-Factory's template object (``--template``, with
   the tokenizer fixed by ``get_template_and_fix_tokenizer``), turned into token ids as the template does and
   decoded with ``--tokenizer`` (``skip_special_tokens=False``), with surrounding whitespace removed.
2. The response is the text after the **last** occurrence of the marker, with surrounding whitespace removed.
3. Stop words at its end (the template's ``stop_words``, the tokenizer's eos and pad tokens; repeated) are
   removed, and so is an empty or complete reasoning block (the template's thought words), as LLaMA-Factory does.
4. The score is ``llamafactory_wspo.rewards.length_reward`` of that response (its whitespace-separated words).

A text without the marker (e.g. a prompt that ``cutoff_len`` truncated before the assistant turn) is an error
(HTTP 422, naming the text) unless ``--missing_marker_score`` gives it a fixed score. Shorten such documents
(``prepare_xsum.py --max_document_words``) or raise ``cutoff_len``.
"""

import argparse
import logging
import sys
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from _cli import parse_args

from llamafactory_wspo.rewards import DEFAULT_LENGTH_MAX, DEFAULT_LENGTH_MIN, check_length_range, length_reward


if TYPE_CHECKING:
    from fastapi import FastAPI
    from transformers import PreTrainedTokenizer


logger = logging.getLogger("reward_server")
SENTINEL = "\u0000CONTENT\u0000"  # stands for the user's message when the template's user turn is rendered


class MissingMarkerError(ValueError):
    r"""A text that does not contain the assistant-turn marker."""


class ResponseExtractor:
    r"""Cuts the response out of a decoded prompt-plus-response text (rule in the module docstring)."""

    def __init__(self, tokenizer: "PreTrainedTokenizer", template_name: str) -> None:
        from llamafactory.data import get_template_and_fix_tokenizer
        from llamafactory.hparams import DataArguments

        if not template_name:
            raise ValueError("--template is required: the chat template that formatted the prompts, e.g. `qwen`.")

        try:
            self.template = get_template_and_fix_tokenizer(tokenizer, DataArguments(template=template_name))
        except ValueError as err:
            raise ValueError(f"--template {template_name}: {err} Use a template name of LLaMA-Factory.") from err

        self.template_name = template_name
        self.tokenizer = tokenizer
        self.marker = self._assistant_marker()
        self.stop_words = [
            word
            for word in dict.fromkeys([*self.template.stop_words, tokenizer.eos_token, tokenizer.pad_token])
            if word
        ]

    def _assistant_marker(self) -> str:
        r"""The decoded text that the template puts between a user message's content and the assistant's reply."""
        elements = self.template.format_user.apply(content=SENTINEL)
        for index, element in enumerate(elements):
            if isinstance(element, str) and SENTINEL in element:
                tail = [element.split(SENTINEL, 1)[1], *elements[index + 1 :]]
                break
        else:
            raise ValueError(f"--template {self.template_name}: its user turn has no content slot.")

        ids = self.template._convert_elements_to_ids(self.tokenizer, tail)
        marker = self.tokenizer.decode(ids, skip_special_tokens=False).strip()
        if not marker:
            raise ValueError(
                f"--template {self.template_name} writes nothing between the user's message and the reply, so the "
                "response cannot be found in the decoded text: use the chat template the prompts were formatted with."
            )

        return marker

    def __call__(self, text: str) -> str:
        position = text.rfind(self.marker)
        if position < 0:
            raise MissingMarkerError(
                f"no assistant-turn marker {self.marker!r} (template {self.template_name}) in the text "
                f"{text[-200:]!r}: was the prompt truncated by cutoff_len?"
            )

        response = text[position + len(self.marker) :].strip()
        stripped = True
        while stripped:
            stripped = False
            for word in self.stop_words:
                if response.endswith(word):
                    response = response[: -len(word)].rstrip()
                    stripped = True

        return self.template.remove_thought(response).strip()


def create_app(
    tokenizer: "str | PreTrainedTokenizer",
    template: str,
    length_min: int = DEFAULT_LENGTH_MIN,
    length_max: int = DEFAULT_LENGTH_MAX,
    missing_marker_score: float | None = None,
) -> "FastAPI":
    r"""The FastAPI application: ``POST /v1/score/evaluation`` (and ``POST /``) and ``GET /health``.

    ``tokenizer`` is a tokenizer or the path / hub id to load one from (``AutoTokenizer``).
    """
    from fastapi import FastAPI, HTTPException
    from llamafactory.api.protocol import ScoreEvaluationRequest, ScoreEvaluationResponse

    check_length_range(length_min, length_max)
    if isinstance(tokenizer, str):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer)

    extractor = ResponseExtractor(tokenizer, template)
    app = FastAPI(title="llamafactory-wspo length reward")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "template": template,
            "marker": extractor.marker,
            "stop_words": extractor.stop_words,
            "length_min": length_min,
            "length_max": length_max,
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
                        detail=f"message {index}: {err} Start the server with --missing_marker_score to score such "
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--tokenizer", required=True, help="tokenizer of the policy (path or hub id; usually the model's directory)"
    )
    parser.add_argument("--template", required=True, help="LLaMA-Factory template of the PPO recipe, e.g. qwen")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument("--length_min", type=int, default=DEFAULT_LENGTH_MIN, help="L_min of the length reward")
    parser.add_argument("--length_max", type=int, default=DEFAULT_LENGTH_MAX, help="L_max of the length reward")
    parser.add_argument(
        "--missing_marker_score",
        type=float,
        default=None,
        help="score of a text without the assistant-turn marker (default: such a text is an error, HTTP 422)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    args = parse_args(build_parser(), argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        check_length_range(args.length_min, args.length_max)
    except ValueError:
        raise SystemExit(
            f"--length_min {args.length_min} --length_max {args.length_max}: need 0 <= --length_min < --length_max."
        ) from None

    try:
        app = create_app(args.tokenizer, args.template, args.length_min, args.length_max, args.missing_marker_score)
    except ValueError as err:
        raise SystemExit(str(err)) from None

    url = f"http://{args.host}:{args.port}/v1/score/evaluation"
    logger.info("Length reward for [%d, %d] words at POST %s", args.length_min, args.length_max, url)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=False)


if __name__ == "__main__":
    main(sys.argv[1:])
