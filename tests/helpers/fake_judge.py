"""A fake OpenAI-compatible judge on 127.0.0.1 for ``llamafactory-wspo build-hybrid``, with failures on cue.

The answer depends only on the graded response, so every run sees the same judgments:

* one point per word, at most 6 (``Score: N``);
* a response containing ``garbage`` gets a body that is not JSON, ``nochoices`` a JSON body without ``choices``,
  ``noscore`` an answer without ``Score: N``;
* ``flaky500`` gets HTTP 500 on its first request, ``flaky429`` HTTP 429 (``Retry-After: 0``) on its first two;
  the requests after that are answered normally;
* with ``broken_after=N``, every request after the first N gets ``broken_reply`` (status 200): a judge that turns
  bad mid-run (an HTML page from a proxy, an error object, an answer off the scale).

Every request is recorded (``requests``: the graded response and the user request of each).
"""

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def judge_score(response: str) -> int:
    return min(6, len(response.split()))


def chat_reply(answer: str) -> bytes:
    r"""A chat-completions body whose answer is ``answer``."""
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()


def graded(prompt: str) -> tuple[str, str]:
    r"""``(user request, graded response)`` of the judge prompt that build-hybrid sends."""
    request = prompt.split("[User request]\n", 1)[1].split("\n\n[Assistant answer]", 1)[0]
    response = prompt.split("[Assistant answer]\n", 1)[1].rsplit("\n\nExplain", 1)[0]
    return request, response


class FakeJudge:
    def __init__(
        self, port: int = 0, delay: float = 0.0, broken_after: int | None = None, broken_reply: bytes = b""
    ) -> None:
        self.broken_after = broken_after
        self.broken_reply = broken_reply
        self.requests: list[tuple[str, str]] = []
        self.attempts: Counter[str] = Counter()
        self.delay = delay
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)  # quick stop
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reply(self, prompt: str) -> tuple[int, bytes, dict[str, str]]:
        request, response = graded(prompt)
        with self.lock:
            self.requests.append((request, response))
            self.attempts[response] += 1
            attempt = self.attempts[response]
            broken = self.broken_after is not None and len(self.requests) > self.broken_after
        if broken:
            return 200, self.broken_reply, {}
        if "flaky500" in response and attempt == 1:
            return 500, b'{"error": "internal"}', {}
        if "flaky429" in response and attempt <= 2:
            return 429, b'{"error": "slow down"}', {"Retry-After": "0"}
        if "garbage" in response:
            return 200, b"<html>not json", {}
        if "nochoices" in response:
            return 200, b'{"object": "error"}', {}
        answer = "No grade." if "noscore" in response else f"Reasonable.\nScore: {judge_score(response)}"
        return 200, chat_reply(answer), {}

    def _handler(self):
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if judge.delay:
                    time.sleep(judge.delay)
                status, payload, headers = judge.reply(body["messages"][0]["content"])
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        return Handler
