r"""The LLM judge of WPO's hybrid data: an OpenAI-compatible chat endpoint grading answers on a 1-6 scale.

Calls go through ``httpx`` (asynchronous), at most ``concurrency`` at a time. A call that times out, cannot connect,
loses its connection, or is answered 408, 429 or 5xx is tried again after an exponential back-off with jitter
(``Retry-After`` honoured), up to ``max_retries`` times; then :class:`JudgeUnavailable` is raised and the caller
leaves that prompt for the next run. A reply that arrives but cannot be read (not JSON, no ``choices``, no
``Score: N``), or a request the endpoint refuses as such (400, 413, 422: e.g. too long for the judge), gives
:data:`None`: asking again at temperature 0 would give the same. Refusals that no request can pass (401, 403, 404)
raise :class:`JudgeMisconfigured`, which ends the run with one line naming the option.
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
SCORE_PATTERN = re.compile(r"Score:\s*\**\s*([1-6])\b")
RETRY_STATUS = frozenset({408, 429}) | frozenset(range(500, 600))
UNREADABLE_STATUS = frozenset({400, 413, 422})
MAX_DELAY = 60.0


class JudgeUnavailable(Exception):
    r"""The judge did not answer after every retry (timeouts, connection errors, 429, 5xx)."""


class JudgeMisconfigured(Exception):
    r"""The judge refuses every request (wrong URL, model or key): no point in going on."""


def parse_judge_score(answer: str | None) -> float | None:
    r"""The last ``Score: N`` (N in 1..6) of a judge's answer, or ``None``."""
    matches = SCORE_PATTERN.findall(answer or "")
    return float(matches[-1]) if matches else None


def reply_score(body: bytes) -> float | None:
    r"""The score in a chat-completions reply body, or ``None`` when the body cannot be read as one."""
    try:
        answer = json.loads(body)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return parse_judge_score(answer) if isinstance(answer, str) else None


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

    async def score(self, instruction: str, response: str) -> float | None:
        r"""The judge's 1-6 score of ``response``; ``None`` if its reply cannot be read (see the module docstring)."""
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
                    problem = f"{type(err).__name__}: {err}"
                else:
                    if reply.status_code == 200:
                        score = reply_score(reply.content)
                        self.stats.unreadable += score is None
                        return score
                    if reply.status_code in UNREADABLE_STATUS:
                        self.stats.unreadable += 1
                        return None
                    if reply.status_code not in RETRY_STATUS:
                        raise JudgeMisconfigured(
                            f"the judge at {self.url} answered {reply.status_code} {reply.reason_phrase} "
                            f"({reply.text[:200]!r}): check the URL and the model name of --scorer (and OPENAI_API_KEY)"
                        )
                    problem = f"HTTP {reply.status_code}"
                    retry_after = reply.headers.get("retry-after")
            if attempt < self.max_retries:
                await asyncio.sleep(self._delay(attempt, retry_after))
        raise JudgeUnavailable(f"{problem} after {self.max_retries + 1} attempts")
