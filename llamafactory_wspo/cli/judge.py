r"""The LLM judge of WPO's hybrid data: an OpenAI-compatible chat endpoint grading answers on a 1-6 scale.

Calls go through ``httpx`` (asynchronous), at most ``concurrency`` at a time. A call that times out, cannot connect,
loses its connection, or is answered 408, 429 or 5xx is tried again after an exponential back-off with jitter
(``Retry-After`` honoured), up to ``max_retries`` times; then :class:`JudgeUnavailable` is raised (naming the URL
and the last error) and the caller leaves that prompt for the next run. A reply that arrives without a score on
the paper's scale (not JSON, no ``choices``, an error object, no ``Score: N`` line, a score off the 1-6 scale such as
``6.5`` or ``5/10``), or a request the endpoint refuses as such (400, 413, 422: e.g. too long for the judge), raises
:class:`JudgeUnreadable`: the caller leaves that prompt unjudged for the next run too (it never becomes a
fall-back). Refusals that no request can pass (401, 403, 404) raise :class:`JudgeMisconfigured`,
which ends the run with one line naming the option.
"""

import asyncio
import json
import os
import random
import re
from dataclasses import dataclass
from typing import Any


JUDGE_PROMPT = """You are grading how well an AI assistant answered a user. Start from 0 points and add:
- 1 point if the answer is relevant to the user's request, even if incomplete;
- 1 point if it addresses a substantial part of the request;
- 1 point if it answers the core of the request usefully;
- 1 point if it is clearly written from an assistant's perspective, well organised and complete;
- 1 point if it is accurate, direct and free of unneeded content;
- 1 point if it is excellent: expert, engaging and hard to improve.

[User request]
{instruction}

[Assistant answer]
{response}

Explain your grading in at most three sentences, then end with a line "Score: N" where N is 1 to 6."""
SCORE_LABEL = re.compile(r"score:", re.IGNORECASE)
# What may follow the last "Score:" on its line: an integer of the 1-6 scale, optionally bold, "/6" or "out of 6",
# and a full stop. Anything else ("6.5", "5/10", "5 out of 10", "7", "4 (good)") is not a score on the scale.
SCORE_VALUE = re.compile(r"\s*(?:\*\*)?\s*([1-6])(?:\s*/\s*6|\s+out\s+of\s+6)?\s*(?:\*\*)?\s*\.?\s*")
RETRY_STATUS = frozenset({408, 429}) | frozenset(range(500, 600))
UNREADABLE_STATUS = frozenset({400, 413, 422})
MAX_DELAY = 60.0


class JudgeUnavailable(Exception):
    r"""The judge did not answer after every retry (timeouts, connection errors, 429, 5xx)."""


class JudgeUnreadable(Exception):
    r"""The judge's reply holds no score on the 1-6 scale (or the judge refused the request as such)."""


class JudgeMisconfigured(Exception):
    r"""The judge refuses every request (wrong URL, model or key): no point in going on."""


def parse_judge_score(answer: str | None) -> float | None:
    r"""The score of a judge's answer: the integer N (1 to 6) of its last ``Score: N`` line, or ``None``.

    Only the last ``Score:`` counts (the judge is asked to end with it), and only when the rest of its line is an
    integer of the paper's 1-6 scale, optionally in bold (``Score: **5**``, ``**Score:** 5``), as ``5/6`` or ``5 out
    of 6``, with a full stop. ``6.5``, ``5/10``, ``5 out of 10``, ``7``, ``0`` or trailing words give ``None``.
    """
    labels = list(SCORE_LABEL.finditer(answer or ""))
    if not labels:
        return None
    rest = answer[labels[-1].end() :].split("\n", 1)[0]
    match = SCORE_VALUE.fullmatch(rest)
    return float(match.group(1)) if match else None


def reply_answer(body: bytes) -> str | None:
    r"""The judge's answer in a chat-completions reply body, or ``None`` when the body is not such a reply."""
    try:
        answer = json.loads(body)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return answer if isinstance(answer, str) else None


def reply_score(body: bytes) -> float | None:
    r"""The score in a chat-completions reply body, or ``None`` when the body cannot be read as one."""
    return parse_judge_score(reply_answer(body))


def excerpt(text: str, limit: int = 100, end: bool = False) -> str:
    r"""A reply on one line, cut to ``limit`` characters (its end with ``end``), for an error message."""
    text = " ".join(text.split())
    if len(text) > limit:
        text = "..." + text[3 - limit :] if end else text[: limit - 3] + "..."
    return repr(text)


def unreadable_reply(body: bytes) -> str:
    r"""What a 200 reply without a score holds: the end of the judge's answer (where the score belongs), or the
    start of a body that is no chat completion (an HTML page, an error object)."""
    answer = reply_answer(body)
    if answer is not None:
        return f"answered without a score on the 1-6 scale, ending {excerpt(answer, end=True)}"
    return f"replied with a body that is no chat completion: {excerpt(body.decode('utf-8', 'replace'))}"


def connection_problem(err: BaseException) -> str:
    r"""``ConnectError: All connection attempts failed (Connection refused)``: httpx's error and the system's."""
    problem = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    cause, seen = err, set()
    while cause is not None and id(cause) not in seen:  # the socket's own error, deep in the chain
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno is not None:
            return f"{problem} ({os.strerror(cause.errno)})"
        cause = cause.__cause__ or cause.__context__
    return problem


@dataclass
class JudgeStats:
    calls: int = 0
    retries: int = 0
    unreadable: int = 0


class Judge:
    r"""Scores answers with a chat-completions endpoint (``base_url`` + ``/chat/completions``).

    Use inside a running event loop: ``async with Judge(...) as judge: score = await judge.score(q, a)``.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        concurrency: int = 32,
        timeout: float = 300.0,
        max_retries: int = 6,
        backoff: float = 1.0,
        max_tokens: int = 512,
        seed: int = 0,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_tokens = max_tokens
        self.concurrency = concurrency
        self.stats = JudgeStats()
        self._rng = random.Random(seed)
        self._slots: asyncio.Semaphore | None = None
        self._client = None

    async def __aenter__(self) -> "Judge":
        import httpx

        headers = {"Content-Type": "application/json"}
        if os.environ.get("OPENAI_API_KEY"):
            headers["Authorization"] = f"Bearer {os.environ['OPENAI_API_KEY']}"
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        self._client = httpx.AsyncClient(headers=headers, timeout=self.timeout, limits=limits)
        self._slots = asyncio.Semaphore(self.concurrency)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._client.aclose()

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        delay = self.backoff * 2**attempt * (0.5 + self._rng.random())  # exponential, with jitter
        if retry_after is not None:
            try:
                delay = max(delay, float(retry_after))
            except ValueError:
                pass
        return min(delay, MAX_DELAY)

    async def score(self, instruction: str, response: str) -> float:
        r"""The judge's 1-6 score of ``response``; :class:`JudgeUnreadable` or :class:`JudgeUnavailable` when there
        is none (see the module docstring)."""
        import httpx

        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": JUDGE_PROMPT.format(instruction=instruction, response=response)}],
            "temperature": 0.0,
            "max_tokens": self.max_tokens,
        }
        problem = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.stats.retries += 1
            retry_after = None
            async with self._slots:
                self.stats.calls += 1
                try:
                    reply = await self._client.post(self.url, json=body)
                except (httpx.TimeoutException, httpx.TransportError) as err:
                    problem = connection_problem(err)
                else:
                    if reply.status_code == 200:
                        score = reply_score(reply.content)
                        if score is None:
                            self.stats.unreadable += 1
                            raise JudgeUnreadable(f"the judge at {self.url} {unreadable_reply(reply.content)}")
                        return score
                    if reply.status_code in UNREADABLE_STATUS:
                        self.stats.unreadable += 1
                        raise JudgeUnreadable(
                            f"the judge at {self.url} refused the request: {reply.status_code} {reply.reason_phrase} "
                            f"{excerpt(reply.text)}"
                        )
                    if reply.status_code not in RETRY_STATUS:
                        raise JudgeMisconfigured(
                            f"the judge at {self.url} answered {reply.status_code} {reply.reason_phrase} "
                            f"({reply.text[:200]!r}): check the URL and the model name of --scorer (and OPENAI_API_KEY)"
                        )
                    problem = f"HTTP {reply.status_code}"
                    retry_after = reply.headers.get("retry-after")
            if attempt < self.max_retries:
                await asyncio.sleep(self._delay(attempt, retry_after))
        raise JudgeUnavailable(
            f"the judge at {self.url} did not answer after {self.max_retries + 1} attempts ({problem})"
        )
