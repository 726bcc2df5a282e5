"""LLaMA-Board: the ``grpo`` stage (the XSUM recipe's weak alignment) in the Train tab, driven in Chromium like
WSPO and WPO (``tests/test_webui.py``, whose LLaMA-Board and browser fixtures this module uses)."""

import re

import pytest
import test_webui
import yaml
from test_webui import Board, _assert_trained, _run_dir

from llamafactory_wspo.webui.common import STAGE_FIELDS
from llamafactory_wspo.webui.locales import LOCALES, TAB_LABELS


board = test_webui.board  # the fixtures of tests/test_webui.py: LLaMA-Board, the browser, a fresh page
browser = test_webui.browser
board_page = test_webui.board_page
GRPO_FIELDS = STAGE_FIELDS["grpo"]
OTHER_FIELDS = ("weak_base_model", "wspo_response", "wpo_alignment", "wpo_weighting", "precompute_logps")


def set_number(ui: Board, key: str, value: str) -> None:
    ui.fill(ui.plugin(key).locator("input").first, value)


@pytest.mark.slow
def test_grpo_in_llamaboard(board_page, board, assets):
    from playwright.sync_api import expect

    ui, page = board_page, board_page.page
    _, workdir = board
    ui.base_settings(assets)

    ui.pick("Stage", "GRPO")
    settings = ui.plugin("settings")
    expect(settings).to_be_visible()
    for key in GRPO_FIELDS:
        expect(ui.plugin(key)).to_be_visible()
    for key in OTHER_FIELDS:
        expect(ui.plugin(key)).to_have_count(0)
    for lang in ("zh", "en"):  # labelled in LLaMA-Board's languages (all of them: tests/test_webui.py)
        page.locator("input[role=listbox]").first.click()
        page.get_by_role("option", name=lang, exact=True).click()
        expect(settings.get_by_role("button").first).to_contain_text(TAB_LABELS["grpo"][lang])
        for key in GRPO_FIELDS:
            expect(ui.plugin(key)).to_contain_text(LOCALES[key][lang]["label"])

    listed = ui.choose_dataset(assets / "data", "tiny_sft")
    assert "tiny_sft" in listed and "tiny_pairs" not in listed  # prompt data sets

    set_number(ui, "length_reward_min", "3")
    set_number(ui, "length_reward_max", "5")
    set_number(ui, "grpo_num_generations", "2")  # divides LLaMA-Board's default batch size of 2
    set_number(ui, "grpo_max_completion_length", "8")
    set_number(ui, "grpo_beta", "0")
    ui.output_dir("grpo_run")
    command = ui.preview()
    for flag in (
        "--stage grpo",
        "--grpo_reward_funcs length",
        "--length_reward_min 3",
        "--length_reward_max 5",
        "--grpo_num_generations 2",
        "--grpo_max_completion_length 8",
        "--grpo_temperature 1",
        "--grpo_top_p 1",
        "--dataset tiny_sft",
    ):
        assert flag in command, flag
    assert re.search(r"--grpo_beta 0(\.0)?\b", command)
    assert "--pref_" not in command and "--wpo_" not in command and "--weak_" not in command
    ui.shot("grpo_settings", settings)

    # Save, change, load back: the stage's fields come back too.
    ui.fill(ui.field("Config path"), "grpo_board.yaml")
    page.keyboard.press("Escape")
    ui.button("Save arguments").click()
    expect(ui.output_box()).to_contain_text("Arguments have been saved")
    saved = yaml.safe_load((workdir / "llamaboard_config" / "grpo_board.yaml").read_text())
    assert saved["train.training_stage"] == "GRPO" and saved["train.grpo_num_generations"] == 2
    set_number(ui, "grpo_num_generations", "4")
    ui.button("Load arguments").click()
    expect(ui.output_box()).to_contain_text("Arguments have been restored")
    expect(ui.plugin("grpo_num_generations").locator("input").first).to_have_value("2")

    text, progress_seen = ui.start_and_wait()
    ui.shot("grpo_finished")
    assert text.startswith("Finished."), text[-3000:]
    assert progress_seen
    _assert_trained(
        _run_dir(workdir, "grpo_run"),
        "grpo",
        grpo_reward_funcs="length",
        length_reward_min=3,
        length_reward_max=5,
        grpo_num_generations=2,
        grpo_max_completion_length=8,
        grpo_beta=0,
    )
