"""LLaMA-Board: WSPO and WPO in the Train tab, driven in a real browser (Chromium through Playwright).

``llamafactory-cli webui`` runs in a subprocess on a free 127.0.0.1 port, in a temporary working directory;
each run goes through LLaMA-Board's own ``llamafactory-cli train`` subprocess. Screenshots are kept under the
test's temporary directory (and, with ``UPDATE_SCREENSHOTS=1``, the WSPO settings go to
``docs/images/llamaboard_wspo.png`` for the README).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from helpers.train import BIN, ROOT, base_env, free_port

from llamafactory_wspo.webui.common import ELEM_ID_PREFIX, FIELDS, UI_STAGES
from llamafactory_wspo.webui.locales import ERR_GRPO_PACKING, ERR_NO_WEAK_MODEL, LOCALES, TAB_LABELS, WSPO_PREF_BETA


CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")
README_SCREENSHOT = ROOT / "docs" / "images" / "llamaboard_wspo.png"
START_TIMEOUT = 240  # seconds for LLaMA-Board to serve its page (about 20-40 s here)
RUN_TIMEOUT = 240  # seconds for a two-step run through LLaMA-Board's subprocess (about 25 s here)
UI_TIMEOUT = 30_000  # milliseconds for one UI reaction
MODEL_NAME = "Qwen2.5-0.5B-Instruct"  # template `qwen`, as the tiny models use; the weights are local ones
EXTRA_ARGS = '{"optim": "adamw_torch", "max_steps": 2, "preprocessing_num_workers": null}'


@pytest.mark.host_compat
def test_labels_in_every_language_of_llamaboard():
    from llamafactory.webui.locales import LOCALES as HOST_LOCALES

    languages = set(HOST_LOCALES["training_stage"])
    assert languages == {"en", "ru", "zh", "ko", "ja"}
    tables = [*LOCALES.values(), *TAB_LABELS.values(), WSPO_PREF_BETA, ERR_NO_WEAK_MODEL, ERR_GRPO_PACKING]
    for table in tables:
        assert set(table) == languages

    for key, table in LOCALES.items():
        assert key not in HOST_LOCALES or HOST_LOCALES[key] is table  # new entries only, no stock label changed
        assert all(entry["label"] and entry["info"] for entry in table.values())


# A stock LLaMA-Board built in a subprocess, with and without the plugin: what its stock stages produce.
_STOCK_PROBE = r"""
import json, sys
from llamafactory.extras.constants import TRAINING_STAGES
from llamafactory.webui import common, control
from llamafactory.webui.interface import create_ui

demo = create_ui()
preview = next(f for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "preview_train")
runner = preview.fn.__self__
manager = runner.manager
data = {elem: elem.value for elem in preview.inputs}  # what "Preview command" and "Start" receive
values = {
    "top.lang": "en", "top.model_name": "Custom", "top.model_path": "some/model", "top.finetuning_type": "lora",
    "top.template": "qwen", "train.dataset_dir": sys.argv[1], "train.dataset": ["tiny_sft"],
    "train.output_dir": "run", "train.config_path": "run.yaml", "train.reward_model": ["rm"],
    "train.val_size": 0.1, "train.ds_stage": "3",
}
for elem_id, value in values.items():
    data[manager.get_elem_by_id(elem_id)] = value

out = {"stages": list(TRAINING_STAGES)}
for label, stage in TRAINING_STAGES.items():
    if stage in ("wspo", "wpo", "grpo"):
        continue
    data[manager.get_elem_by_id("train.training_stage")] = label
    args = runner._parse_train_args(data)
    out[stage] = {
        "initialize": runner._initialize(data, do_train=True, from_preview=True),
        "args": args,
        "cmd": common.gen_cmd(args),
        "config": runner._build_config_dict(data),
        "datasets": control.list_datasets(sys.argv[1], label).constructor_args["choices"],
    }
print("PROBE" + json.dumps(out, default=str))
"""


@pytest.mark.slow
@pytest.mark.host_compat
def test_stock_stages_build_the_same_arguments(assets, tmp_path):
    r"""Every stock stage: same validation, arguments, command, saved configuration and data sets as without us."""
    results = {}
    for label, env in (("on", {}), ("off", {"LLAMAFACTORY_WSPO_DISABLE": "1"})):
        workdir = tmp_path / label
        workdir.mkdir()
        proc = subprocess.run(
            [sys.executable, "-c", _STOCK_PROBE, str(assets / "data")],
            cwd=workdir,
            env=base_env(GRADIO_ANALYTICS_ENABLED="False", **env),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[label] = json.loads(proc.stdout.split("PROBE", 1)[1])

    on, off = results["on"], results["off"]
    assert on.pop("stages") == off.pop("stages") + list(UI_STAGES)
    assert set(on) == {"sft", "rm", "ppo", "dpo", "kto", "pt"}
    for stage in on:
        assert on[stage] == off[stage], stage


# ---------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def board(assets, tmp_path_factory):
    r"""A running ``llamafactory-cli webui``: yields (url, working directory); always stopped afterwards."""
    if not CHROMIUM:
        pytest.skip("Chromium is not installed (`apt-get install -y chromium`; scripts/test.sh does it)")

    workdir = tmp_path_factory.mktemp("llamaboard")
    port = free_port()
    env = base_env(
        GRADIO_ANALYTICS_ENABLED="False",
        GRADIO_SERVER_NAME="127.0.0.1",
        GRADIO_SERVER_PORT=str(port),
        LLAMAFACTORY_WSPO_CACHE=str(workdir / "logps_cache"),
    )
    log = (workdir / "webui.log").open("w", encoding="utf-8")
    proc = subprocess.Popen(
        [str(BIN / "llamafactory-cli"), "webui"],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: LLaMA-Board's training subprocesses stop with it
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llamafactory-cli webui exited ({proc.returncode}):\n{_tail(workdir / 'webui.log')}")
            if time.monotonic() > deadline:
                pytest.fail(f"LLaMA-Board did not answer within {START_TIMEOUT} s:\n{_tail(workdir / 'webui.log')}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(1)

        yield url, workdir
    finally:
        _stop_group(proc)
        log.close()


def _stop_group(proc: subprocess.Popen) -> None:
    r"""Stop the web UI and whatever it started (its process group): SIGTERM, then SIGKILL after 30 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=30)
            break
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-chars:]


@pytest.fixture(scope="module")
def browser(board):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


class Board:
    r"""The Train tab of one browser page, addressed the way a user reads it: by labels."""

    def __init__(self, page, artefacts: Path) -> None:
        self.page = page
        self.artefacts = artefacts
        artefacts.mkdir(parents=True, exist_ok=True)

    def field(self, label: str, exact: bool = True):
        return self.page.get_by_label(label, exact=exact).filter(visible=True)

    def plugin(self, key: str):
        return self.page.locator(f"#{ELEM_ID_PREFIX}{key}")

    def pick(self, label: str, option: str, type_filter: bool = False) -> None:
        box = self.field(label)
        box.click()
        if type_filter:
            box.fill(option)
        self.page.get_by_role("option", name=option, exact=True).click()

    def set_slider(self, label: str, value: int) -> None:
        box = self.field(f"number input for {label}")
        box.fill(str(value))
        box.press("Tab")

    def fill(self, locator, value: str) -> None:
        locator.fill(value)
        locator.press("Tab")

    def button(self, name: str):
        return self.page.get_by_role("button", name=name, exact=True).filter(visible=True)

    def open_accordion(self, label: str) -> None:
        self.page.get_by_role("button", name=label).filter(visible=True).click()

    def output_box(self):
        return self.page.get_by_test_id("markdown").filter(visible=True).first

    def choose_dataset(self, dataset_dir: Path, name: str) -> list[str]:
        r"""Pick data set ``name``; return the list that LLaMA-Board offered for the stage."""
        self.fill(self.field("Data dir", exact=False), str(dataset_dir))
        # An open multi-select's accessible name includes its options: find the box by its block's title.
        title = self.page.get_by_test_id("block-info").filter(has_text=re.compile(r"^Dataset$"))
        self.page.locator(".block").filter(has=title).filter(visible=True).locator("input").click()
        option = self.page.get_by_role("option", name=name, exact=True)
        option.wait_for()
        listed = [text.strip().lstrip("✓").strip() for text in self.page.get_by_role("option").all_inner_texts()]
        option.click()
        self.page.keyboard.press("Escape")
        self.field("Data dir", exact=False).click()  # blur the data set box
        return listed

    def base_settings(self, assets: Path) -> None:
        from playwright.sync_api import expect

        # LLaMA-Board fills in the model's hub id and its template: wait for that, then give a local model.
        self.pick("Model name", MODEL_NAME, type_filter=True)
        expect(self.field("Model path", exact=False)).to_have_value(f"Qwen/{MODEL_NAME}")
        self.fill(self.field("Model path", exact=False), str(assets / "strong"))
        self.pick("Finetuning method", "full")
        self.fill(self.field("Max samples", exact=False), "16")
        self.pick("Compute type", "fp32")
        self.set_slider("Gradient accumulation", 1)
        self.open_accordion("Extra configurations")
        self.set_slider("Logging steps", 1)
        self.fill(self.field("Extra arguments", exact=False), EXTRA_ARGS)
        expect(self.field("Chat template")).to_have_value("qwen", timeout=UI_TIMEOUT)

    def output_dir(self, name: str) -> None:
        box = self.field("Output dir")
        box.fill(name)
        box.press("Enter")
        self.page.keyboard.press("Escape")

    def preview(self) -> str:
        from playwright.sync_api import expect

        self.button("Preview command").click()
        expect(self.output_box()).to_contain_text("llamafactory-cli train", timeout=UI_TIMEOUT)
        return self.output_box().inner_text()

    def start_and_wait(self) -> tuple[str, bool]:
        r"""Click "Start"; return LLaMA-Board's final message and whether its progress bar was seen."""
        self.button("Start").click()
        progress_seen = False
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline:
            text = self.output_box().inner_text()
            if text.startswith(("Finished.", "Failed.")):
                return text, progress_seen
            progress_seen = progress_seen or self.page.get_by_label("range slider for Running").count() > 0
            self.page.wait_for_timeout(500)

        pytest.fail(f"The run did not finish within {RUN_TIMEOUT} s:\n{self.output_box().inner_text()[-3000:]}")

    def loss_plot(self):
        loss_block = self.page.locator(".block").filter(
            has=self.page.get_by_test_id("block-label").filter(has_text="Loss")
        )
        return loss_block.locator("img, svg.main-svg, canvas").first

    def shot_region(self, name: str, first, last, margin: int = 12) -> Path:
        r"""A screenshot of the page from the block holding ``first`` down to the end of ``last``."""
        self.page.evaluate("window.scrollTo(0, 0)")
        top = self.page.locator(".block").filter(has=first).last.bounding_box()["y"] - margin
        bottom = last.bounding_box()
        width = self.page.viewport_size["width"]
        clip = {"x": 0, "y": max(top, 0), "width": width, "height": bottom["y"] + bottom["height"] + margin - top}
        path = self.artefacts / f"{name}.png"
        self.page.screenshot(path=str(path), clip=clip, full_page=True)
        return path

    def shot(self, name: str, locator=None) -> Path:
        path = self.artefacts / f"{name}.png"
        (locator or self.page).screenshot(path=str(path))
        return path


@pytest.fixture
def board_page(board, browser, tmp_path):
    from playwright.sync_api import expect

    url, workdir = board
    (workdir / "llamaboard_cache" / "user_config.yaml").unlink(missing_ok=True)  # each page starts afresh
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.set_default_timeout(UI_TIMEOUT)
    try:
        page.goto(url, timeout=60_000)
        ui = Board(page, tmp_path / "screenshots")
        expect(ui.field("Stage")).to_have_value("Supervised Fine-Tuning", timeout=60_000)
        expect(ui.output_box()).to_have_text("Ready.", timeout=60_000)  # the page has loaded its labels
        yield ui
    finally:
        try:
            page.screenshot(path=str(tmp_path / "screenshots" / "last.png"))  # the page as the test left it
        finally:
            page.close()


def _run_dir(workdir: Path, name: str) -> Path:
    return workdir / "saves" / MODEL_NAME / "full" / name


def _assert_trained(run_dir: Path, stage: str, **expected) -> dict:
    r"""The run of LLaMA-Board's subprocess: its arguments, two logged steps, the model and the loss curve."""
    args = yaml.safe_load((run_dir / "training_args.yaml").read_text())
    assert args["stage"] == stage
    for key, value in expected.items():
        assert args[key] == value, key

    steps = [json.loads(line) for line in (run_dir / "trainer_log.jsonl").read_text().splitlines()]
    assert [entry["current_steps"] for entry in steps if "loss" in entry] == [1, 2]
    assert steps[-1]["total_steps"] == 2
    assert (run_dir / "model.safetensors").is_file() and (run_dir / "training_loss.png").is_file()
    return args


@pytest.mark.slow
def test_wspo_in_llamaboard(board_page, board, assets, tmp_path):
    from playwright.sync_api import expect

    ui, page = board_page, board_page.page
    _, workdir = board
    ui.base_settings(assets)

    ui.pick("Stage", "WSPO")
    settings = ui.plugin("settings")
    expect(settings).to_be_visible()
    for key in ("weak_base_model", "weak_aligned_model", "wspo_response", "precompute_logps"):
        expect(ui.plugin(key)).to_be_visible()
    for key in ("wpo_alignment", "wpo_weighting"):
        expect(ui.plugin(key)).to_have_count(0)

    # Labels in every language of LLaMA-Board; gamma is the preference beta field, labelled so.
    for lang in ("ru", "zh", "ko", "ja", "en"):
        page.locator("input[role=listbox]").first.click()  # "Language", whatever its label reads now
        page.get_by_role("option", name=lang, exact=True).click()
        expect(settings.get_by_role("button").first).to_contain_text(TAB_LABELS["wspo"][lang])
        for key in ("weak_base_model", "weak_aligned_model", "wspo_response", "precompute_logps"):
            expect(ui.plugin(key)).to_contain_text(LOCALES[key][lang]["label"])
        beta_label = WSPO_PREF_BETA[lang]["label"]
        expect(page.get_by_label(f"number input for {beta_label}", exact=True)).to_have_count(1)

    listed = ui.choose_dataset(assets / "data", "tiny_pairs")
    assert {"tiny_sft", "tiny_pairs", "tiny_kto"} <= set(listed)  # both kinds of data

    # Without weak models LLaMA-Board refuses, with the plugin's message.
    ui.button("Preview command").click()
    expect(ui.output_box()).to_have_text(ERR_NO_WEAK_MODEL["en"])

    ui.fill(ui.plugin("weak_base_model").locator("textarea"), str(assets / "weak"))
    ui.fill(ui.plugin("weak_aligned_model").locator("textarea"), str(assets / "weak_aligned"))
    ui.pick("Responses", "both")
    ui.output_dir("wspo_run")
    ui.open_accordion("RLHF configurations")
    ui.set_slider("Beta value (γ of WSPO)", 0.5)

    command = ui.preview()
    for flag in (
        "--stage wspo",
        f"--weak_base_model {assets / 'weak'}",
        f"--weak_aligned_model {assets / 'weak_aligned'}",
        "--wspo_response both",
        "--precompute_logps True",
        "--pref_beta 0.5",
        "--dataset tiny_pairs",
        "--max_steps 2",
    ):
        assert flag in command
    assert "--pref_loss" not in command and "--wpo_" not in command

    ui.open_accordion("Extra configurations")  # closed again: the picture shows the model, the stage, WSPO, gamma
    shot = ui.shot_region("wspo_settings", ui.field("Model name"), settings)
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        README_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, README_SCREENSHOT)

    # Save the configuration, change the fields, load it back: the plugin's fields come back too.
    ui.fill(ui.field("Config path"), "wspo_board.yaml")
    ui.page.keyboard.press("Escape")
    ui.button("Save arguments").click()
    expect(ui.output_box()).to_contain_text("Arguments have been saved")
    saved = yaml.safe_load((workdir / "llamaboard_config" / "wspo_board.yaml").read_text())
    assert saved["train.training_stage"] == "WSPO"
    assert saved["train.weak_base_model"] == str(assets / "weak")
    assert saved["train.wspo_response"] == "both" and saved["train.precompute_logps"] is True

    ui.pick("Stage", "DPO")
    expect(settings).to_have_count(0)
    ui.button("Load arguments").click()
    expect(ui.output_box()).to_contain_text("Arguments have been restored")
    expect(ui.field("Stage")).to_have_value("WSPO")
    expect(ui.plugin("weak_base_model").locator("textarea")).to_have_value(str(assets / "weak"))
    expect(ui.plugin("weak_aligned_model").locator("textarea")).to_have_value(str(assets / "weak_aligned"))
    expect(ui.field("Responses")).to_have_value("both")
    ui.choose_dataset(assets / "data", "tiny_pairs")  # LLaMA-Board empties the data sets when the stage changes

    text, progress_seen = ui.start_and_wait()
    ui.shot("wspo_finished")
    assert text.startswith("Finished."), text[-3000:]
    assert progress_seen
    expect(ui.loss_plot()).to_be_visible()
    run_dir = _run_dir(workdir, "wspo_run")
    _assert_trained(
        run_dir,
        "wspo",
        weak_base_model=str(assets / "weak"),
        weak_aligned_model=str(assets / "weak_aligned"),
        wspo_response="both",
        precompute_logps=True,
        pref_beta=0.5,
    )
    assert yaml.safe_load((run_dir / "llamaboard_config.yaml").read_text())["train.wspo_response"] == "both"


@pytest.mark.slow
def test_wpo_in_llamaboard(board_page, board, assets):
    from playwright.sync_api import expect

    ui, page = board_page, board_page.page
    _, workdir = board
    ui.base_settings(assets)

    ui.pick("Stage", "WPO")
    expect(ui.plugin("settings")).to_be_visible()
    expect(ui.plugin("settings").get_by_role("button").first).to_contain_text("WPO configurations")
    for key in ("wpo_alignment", "wpo_weighting", "precompute_logps"):
        expect(ui.plugin(key)).to_be_visible()
    for key in ("weak_base_model", "weak_aligned_model", "wspo_response"):
        expect(ui.plugin(key)).to_have_count(0)
    expect(page.get_by_label("number input for Beta value", exact=True)).to_have_count(1)  # stock label

    listed = ui.choose_dataset(assets / "data", "tiny_pairs")
    assert set(listed) == {"tiny_pairs", "tiny_pairs_eval"}  # pairwise data only

    ui.pick("WPO weighting", "chosen")
    page.locator(f"#{ELEM_ID_PREFIX}precompute_logps input[type=checkbox]").uncheck()
    ui.output_dir("wpo_run")
    command = ui.preview()
    for flag in (
        "--stage wpo",
        "--wpo_alignment sampled",
        "--wpo_weighting chosen",
        "--precompute_logps False",
        "--pref_loss sigmoid",
        "--pref_beta 0.1",
        "--dataset tiny_pairs",
    ):
        assert flag in command
    assert "--weak_" not in command and "--wspo_response" not in command
    ui.shot("wpo_settings", ui.plugin("settings"))

    text, progress_seen = ui.start_and_wait()
    ui.shot("wpo_finished")
    assert text.startswith("Finished."), text[-3000:]
    assert progress_seen
    expect(ui.loss_plot()).to_be_visible()
    _assert_trained(
        _run_dir(workdir, "wpo_run"),
        "wpo",
        wpo_alignment="sampled",
        wpo_weighting="chosen",
        precompute_logps=False,
        pref_loss="sigmoid",
    )


@pytest.mark.slow
def test_stock_stage_shows_none_of_the_plugin(board_page, board, assets):
    from playwright.sync_api import expect

    ui, page = board_page, board_page.page
    _, workdir = board
    ui.base_settings(assets)
    expect(ui.plugin("settings")).to_have_count(0)  # SFT, the default stage

    ui.pick("Stage", "WSPO")
    expect(ui.plugin("settings")).to_be_visible()
    ui.pick("Stage", "Supervised Fine-Tuning")
    expect(ui.plugin("settings")).to_have_count(0)
    expect(page.locator(f"[id^={ELEM_ID_PREFIX}]")).to_have_count(0)
    expect(page.get_by_label("number input for Beta value", exact=True)).to_have_count(1)

    listed = ui.choose_dataset(assets / "data", "tiny_sft")
    assert "tiny_pairs" not in listed and "tiny_sft" in listed
    command = ui.preview()
    assert "--stage sft" in command
    for key in (*FIELDS, "pref_beta", "pref_ftx", "pref_loss"):
        assert f"--{key} " not in command
    ui.shot("sft_settings")

    ui.fill(ui.field("Config path"), "sft_board.yaml")
    ui.page.keyboard.press("Escape")
    ui.button("Save arguments").click()
    expect(ui.output_box()).to_contain_text("Arguments have been saved")
    saved = yaml.safe_load((workdir / "llamaboard_config" / "sft_board.yaml").read_text())
    assert not any(key.split(".", 1)[1] in FIELDS for key in saved)  # loadable by stock LLaMA-Board


@pytest.mark.slow
def test_packing_boxes_in_llamaboard(board_page, board, assets):
    r"""WSPO and WPO pass LLaMA-Board's packing boxes on, and a WSPO run trains on packed rows; selecting GRPO unticks
    "Use neat packing" (LLaMA-Factory refuses it there) and GRPO with a box ticked is refused with its message."""
    from llamafactory.webui.locales import LOCALES as HOST_LOCALES
    from playwright.sync_api import expect

    ui = board_page
    _, workdir = board
    pack, neat = (HOST_LOCALES[key]["en"]["label"] for key in ("packing", "neat_packing"))
    ui.base_settings(assets)  # "Extra configurations", which holds both boxes, is open

    def preview(*flags: str) -> str:
        ui.button("Preview command").click()
        for flag in flags:  # the command of this click, not the one before
            expect(ui.output_box()).to_contain_text(flag, timeout=UI_TIMEOUT)
        return ui.output_box().inner_text()

    # WSPO, SFT-format data, "Use neat packing" ticked: packing and neat_packing, as the SFT stage gets them.
    ui.pick("Stage", "WSPO")
    ui.choose_dataset(assets / "data", "tiny_sft")
    ui.fill(ui.plugin("weak_base_model").locator("textarea"), str(assets / "weak"))
    ui.fill(ui.plugin("weak_aligned_model").locator("textarea"), str(assets / "weak_aligned"))
    expect(ui.field(pack)).not_to_be_checked()
    ui.field(neat).check()
    ui.output_dir("wspo_packed_run")
    command = preview("--stage wspo", "--neat_packing True")
    assert "--packing True" in command and "--dataset tiny_sft" in command

    ui.fill(ui.field("Config path"), "wspo_packed.yaml")
    ui.page.keyboard.press("Escape")
    ui.button("Save arguments").click()
    expect(ui.output_box()).to_contain_text("Arguments have been saved")
    saved = yaml.safe_load((workdir / "llamaboard_config" / "wspo_packed.yaml").read_text())
    assert saved["train.training_stage"] == "WSPO" and saved["train.neat_packing"] is True

    text, _ = ui.start_and_wait()
    assert text.startswith("Finished."), text[-3000:]
    run_dir = _run_dir(workdir, "wspo_packed_run")
    _assert_trained(run_dir, "wspo", packing=True, neat_packing=True)
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    per_row = [entry["wspo/examples_per_row"] for entry in history if "wspo/examples_per_row" in entry]
    assert per_row and min(per_row) > 1  # packed: several examples in a row

    # WPO keeps the boxes as they are (LLaMA-Board unticks only "Pack sequences" on a stage change).
    ui.pick("Stage", "WPO")
    expect(ui.field(neat)).to_be_checked()
    ui.choose_dataset(assets / "data", "tiny_pairs")
    command = preview("--stage wpo", "--neat_packing True")
    assert "--packing True" in command
    ui.field(neat).uncheck()
    ui.field(pack).check()
    ui.button("Preview command").click()
    expect(ui.output_box()).not_to_contain_text("--neat_packing", timeout=UI_TIMEOUT)
    command = ui.output_box().inner_text()
    assert "--stage wpo" in command and "--packing True" in command

    # GRPO: selecting it unticks both boxes; ticking one again is refused before anything runs.
    ui.field(neat).check()
    ui.pick("Stage", "GRPO")
    expect(ui.field(neat)).not_to_be_checked()
    expect(ui.field(pack)).not_to_be_checked()
    ui.choose_dataset(assets / "data", "tiny_sft")
    ui.field(neat).check()
    ui.button("Preview command").click()
    expect(ui.output_box()).to_have_text(ERR_GRPO_PACKING["en"].format(packing=pack, neat_packing=neat))
    ui.field(neat).uncheck()
    assert "--stage grpo" in ui.preview()
