"""The console command ``llamafactory-wspo`` of the test environment, run in a subprocess."""

import json
import subprocess
from pathlib import Path

from .train import BIN, base_env


CLI = BIN / "llamafactory-wspo"
QWEN_SYSTEM = "you are qwen , created by alibaba cloud . you are a helpful assistant ."


def cli_command(command: str, *args: object) -> list[str]:
    assert CLI.is_file(), f"{CLI} is missing: install the package (`pip install -e .`) to get its console script"
    return [str(CLI), command, *map(str, args)]


def run_cli(
    command: str, *args: object, check: bool = True, cwd: Path | None = None, timeout: int = 600, **env: str
) -> subprocess.CompletedProcess:
    r"""``llamafactory-wspo COMMAND ARGS``; ``check``: fail on a non-zero exit, showing its output."""
    proc = subprocess.run(
        cli_command(command, *args),
        cwd=cwd,
        env=base_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{command} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}")
    return proc


def one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    r"""The error convention: exit code 2, one error line naming the problem (last on stderr), no traceback.

    Lines before it may be progress that the libraries print (``datasets`` reading a file).
    """
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert errors == lines[-1:] and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def qwen_prompt_ids(tokenizer, user: str, system: str = QWEN_SYSTEM) -> list[int]:
    r"""Qwen's chat format written out by hand (not through LLaMA-Factory's template)."""
    text = f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    return tokenizer(text, add_special_tokens=False)["input_ids"]
