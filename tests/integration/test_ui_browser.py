"""The web page end to end in a real browser (headless Debian Chromium driven by Playwright).

On a tiny pipeline the test builds: a corrupt upload shows the command line's message, a run name
that would leave the runs folder is refused, an upload decomposes with live progress and
previews, the result shows its grid, loss curve and mask fractions, every generation mode fills
the gallery, a downloaded LoRA loads in stock diffusers, and the runs list reopens a run.

Screenshots go to the test's temp folder. With UNZIPLORA_UI_SCREENSHOTS=DIR the same test runs
on the embedded toy-world model instead (real pictures, a few minutes on a CPU) and writes its
screenshots to DIR: `UNZIPLORA_UI_SCREENSHOTS=docs pytest tests/integration/test_ui_browser.py`
makes the README's.
"""

import json
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from unziplora.app.cli import main
from unziplora.decompose import decompose

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("UNZIPLORA_CHROMIUM", "/usr/bin/chromium")
# What Chromium needs on a closed network, as root, without a screen.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
WAIT_MS = int(os.environ.get("UNZIPLORA_UI_WAIT_MS", "120000"))
SCREENSHOTS = os.environ.get("UNZIPLORA_UI_SCREENSHOTS")


@dataclass(frozen=True)
class Setup:
    """The base model, the image the test uploads, and a run made beforehand (for the runs list
    and across-runs generation)."""

    base: Path
    image: Image.Image
    subject: str
    style: str
    steps: int  # typed into the form; previews: 3 per run, drawn at steps/3 and 2 steps/3
    step_delay: float  # seconds added to each step, so the page shows a run in progress
    other_image: Image.Image
    other_subject: str
    other_style: str
    other_steps: int

    @property
    def name(self) -> str:
        return f"{self.subject}-{self.style}"

    @property
    def other(self) -> str:
        return f"{self.other_subject}-{self.other_style}"


def _needs():
    pytest.importorskip("gradio", reason="the web page needs gradio: pip install -e '.[ui]'")
    pytest.importorskip("playwright", reason="the browser test needs playwright: pip install -e '.[test]'")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no Chromium at {CHROMIUM}: run scripts/browser-deps.sh (apt-get install chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tiny_base, tiny_image, tmp_path_factory):
    if SCREENSHOTS:
        from unziplora.models.embedded import EMBEDDED_MODEL, demo_image

        subject, style, image = demo_image()
        other_subject, other_style, other_image = demo_image(3)
        return Setup(EMBEDDED_MODEL, image, subject.cls, style.family, 300, 0.0, other_image,
                     other_subject.cls, other_style.family, 300)
    # the tiny pipeline with the defaults a base model may ship (defaults.py): few steps, small
    base = Path(shutil.copytree(tiny_base, tmp_path_factory.mktemp("ui") / "tiny-base"))
    (base / "unziplora_defaults.yaml").write_text(yaml.safe_dump({
        "train": {"steps": 4, "resolution": 32, "checkpoint_every": 2},  # the form types 6
        "lora": {"rank": 4}, "masks": {"refresh_every": 2}, "sample": {"steps": 2, "seeds": [0]},
    }))
    return Setup(base, tiny_image, "cat", "sketch", 6, 0.4, tiny_image.rotate(90), "lantern", "neon", 2)


@pytest.fixture(scope="module")
def server(setup, tmp_path_factory):
    _needs()
    from unziplora.methods import resolve_config
    from unziplora.app.ui.app import serve

    runs = tmp_path_factory.mktemp("ui") / "runs"
    config = resolve_config({"model.base_model": str(setup.base), "prompts.subject": setup.other_subject,
                             "prompts.style": setup.other_style, "train.steps": setup.other_steps}).config
    decompose(setup.other_image, runs / setup.other, config, progress=False)
    page, blocks, url = serve(runs, str(setup.base), port=free_port(), block=False)
    yield page, url
    page.worker.close()
    blocks.close()


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    if not SCREENSHOTS:
        return tmp_path_factory.mktemp("screenshots")
    folder = Path(SCREENSHOTS).resolve()  # the test changes directory later
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def upload(page, path):
    page.set_input_files("#uz-upload input[type=file]", str(path))


def message(page):
    return page.locator("#uz-message .uz-msg")


def pick(page, dropdown_id, value):
    """Choose `value` in a gradio dropdown."""
    page.locator(f"#{dropdown_id} input").click()
    page.locator(f"#{dropdown_id} [role=option][aria-label='{value}']").click()
    page.locator(f"#{dropdown_id} input").blur()


@pytest.fixture
def page(browser, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    page.set_default_timeout(WAIT_MS)
    yield page
    last = tmp_path / "last.png"  # what the page showed at the end, or at a failure
    page.screenshot(path=str(last), full_page=True)
    print(f"page at the end: {last}; #uz-message: {page.locator('#uz-message').inner_text()!r}")
    page.close()


def settled(page):
    """Let the page finish its updates (gradio dims outputs while an event runs) before a screenshot."""
    page.wait_for_timeout(1200)


def test_the_whole_job_in_a_browser(server, page, setup, tmp_path, shots, monkeypatch, capsys):
    ui, url = server
    name, steps = setup.name, setup.steps
    page.goto(url)
    page.wait_for_selector("#uz-decompose")

    # 1. a corrupt upload: the command line's one line, nothing queued
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    upload(page, bad)
    error = message(page).filter(has_text="not a readable image")
    error.wait_for()
    monkeypatch.chdir(tmp_path)
    code = main(["decompose", "bad.png", "--out", "x", "--subject", setup.subject, "--style", setup.style,
                 "--base-model", str(setup.base)])
    assert code == 2
    # the CLI's line, the file named as the user named it (the page's temp path is not shown)
    assert error.inner_text().strip() == capsys.readouterr().err.strip()
    assert [p.name for p in ui.runs.root.iterdir()] == [setup.other]

    # 2. a run name that would leave the runs folder
    good = tmp_path / "photo.png"
    setup.image.save(good)
    upload(page, good)
    page.locator("#uz-input-preview img").wait_for()
    page.fill("#uz-subject textarea", setup.subject)
    page.fill("#uz-style textarea", setup.style)
    page.fill("#uz-name textarea", "../escape")
    page.click("#uz-decompose")
    message(page).filter(has_text="run name '../escape' is not allowed").wait_for()
    assert not (ui.runs.root.parent / "escape").exists() and not (ui.runs.root.parent / "escape.partial").exists()

    # 3. decompose: progress with step, loss and time left; previews as drawn
    from unziplora.core.train import Trainer

    train_step = Trainer.train_step

    def slow_step(self):  # the server runs in this process: slow its steps so the page shows them
        log = train_step(self)
        time.sleep(setup.step_delay)
        return log

    monkeypatch.setattr(Trainer, "train_step", slow_step)
    page.fill("#uz-name textarea", "")
    page.click("#uz-advanced")
    page.locator("#uz-steps input").wait_for()
    page.wait_for_timeout(500)  # the accordion opens with an animation; numbers typed into it meanwhile can be lost
    for field, value in (("uz-steps", steps), ("uz-previews-per-run", 3)):
        for _ in range(3):  # typed again only if the field shows something else once settled
            page.fill(f"#{field} input", str(value))
            page.press(f"#{field} input", "Tab")  # a number is sent when it loses focus
            page.wait_for_timeout(300)
            if page.input_value(f"#{field} input") == str(value):
                break
    page.click("#uz-decompose")
    message(page).filter(has_text=re.compile(rf"decompose {name} \(\d+ steps\)")).wait_for()  # queued, then running
    assert f"({steps} steps)" in message(page).inner_text(), message(page).inner_text()  # the form's count, not the default
    seen = set()
    deadline = time.monotonic() + WAIT_MS / 1000
    while time.monotonic() < deadline:
        bar = page.locator("#uz-progress .uz-progress")
        state = bar.get_attribute("data-state") if bar.count() else None
        text = bar.inner_text() if bar.count() else ""
        if state == "running" and "loss" in text and "s left" in text:
            seen.add(text.split("step ")[1].split(" ")[0])  # "3/6"
        if state == "running" and f"running: decompose {name} ({steps} steps)" in message(page).inner_text():
            seen.add("message")  # the message line no longer says "queued" once the job runs
        if state == "running" and page.locator("#uz-previews img").count():
            if "preview" not in seen:
                settled(page)
                page.screenshot(path=str(shots / "ui.png"), full_page=True)  # a run in progress
            seen.add("preview")
        if state == "done":
            break
        time.sleep(0.05)
    assert page.locator("#uz-progress .uz-progress").get_attribute("data-state") == "done"
    assert f"step {steps}/{steps}" in page.locator("#uz-progress").inner_text()
    assert {"preview", "message"} <= seen and len(seen - {"preview", "message"}) >= 2, seen  # the bar moved, previews came

    # 4. the result: grid, loss curve, mask fractions; the Result tab opens by itself
    page.locator("#uz-grid img").wait_for()
    page.locator("#uz-loss img").wait_for()
    image = page.locator("#uz-grid img").bounding_box()
    for label in page.locator("#uz-grid label").all():  # nothing drawn over the grid's top rows
        box = label.bounding_box() if label.is_visible() else None
        assert box is None or box["y"] + box["height"] <= image["y"] or box["y"] >= image["y"] + image["height"], box
    page.locator("#uz-run-previews img").first.wait_for()
    assert page.locator("#uz-run-previews img").count() == 2  # at steps/3 and 2 steps/3 (none at the end)
    summary = page.locator("#uz-summary").inner_text()
    assert "masks: the content branch holds" in summary and name in summary
    settled(page)
    page.screenshot(path=str(shots / "ui-result.png"), full_page=True)
    run = ui.runs.root / name
    assert (run / "manifest.json").is_file() and not ui.runs.pending(name).exists()
    sources = json.loads((run / "manifest.json").read_text())["config_sources"]
    # what the form changed is "given"; a number left at the base model's default keeps its source
    assert sources["train.steps"] == "given" and sources["lora.rank"] == "model"

    # 5. generate in every mode
    page.get_by_role("tab", name="Generate").click()
    prompt = f"A <c> {setup.subject} in <s> style"
    for mode, label in (("content", "content alone"), ("style", "style alone"), ("both", "both (this run)")):
        page.locator("#uz-mode label", has_text=label).click()
        page.fill("#uz-prompt textarea", f"A <c> {setup.subject}" if mode == "content" else prompt)
        page.fill("#uz-seeds textarea", "0 1")
        page.click("#uz-generate")
        message(page).filter(has_text=f"samples/{mode}-001").wait_for()
        assert page.locator("#uz-gallery img").count() == 2
        assert sorted(p.name for p in (run / "samples" / f"{mode}-001").glob("seed*.png")) == ["seed0_0.png", "seed1_0.png"]
    page.locator("#uz-mode label", has_text="across runs").click()
    pick(page, "uz-content-run", name)
    pick(page, "uz-style-run", setup.other)
    page.fill("#uz-prompt textarea", prompt)
    page.fill("#uz-seeds textarea", "5 6")
    page.click("#uz-generate")
    message(page).filter(has_text="samples/cross-001").wait_for()
    assert sorted(p.name for p in (run / "samples" / "cross-001").glob("seed*.png")) == ["seed5_0.png", "seed6_0.png"]
    page.locator("#uz-gallery img").first.wait_for()
    settled(page)
    page.screenshot(path=str(shots / "ui-generate.png"), full_page=True)
    # a long generation cancelled while it denoises: it stops and writes no folder
    page.locator("#uz-mode label", has_text="both (this run)").click()
    page.fill("#uz-gen-steps input", "400")
    page.press("#uz-gen-steps input", "Tab")
    page.click("#uz-generate")
    message(page).filter(has_text="denoising step").wait_for()
    page.click("#uz-cancel-generate")
    message(page).filter(has_text="no images were written").wait_for()
    assert not (run / "samples" / "both-002").exists()

    # 6. download the content LoRA (kohya format) and load it in stock diffusers
    page.get_by_role("tab", name="Download").click()
    page.click("#uz-download")
    link = page.locator(f"#uz-files tr:has(td[aria-label='{name}_content.safetensors']) a")
    link.wait_for()
    page.locator("#uz-files tr:has(td[aria-label='README.md']) a").wait_for()
    with page.expect_download() as download:
        link.click()
    lora = tmp_path / "downloaded_content.safetensors"
    download.value.save_as(lora)
    _loads_in_stock_diffusers(setup.base, lora, run)

    # 7. the runs list: both runs, newest first; a click reopens one
    page.get_by_role("tab", name="Runs").click()
    captions = page.locator("#uz-runs .caption-label")
    captions.first.wait_for()
    texts = captions.all_inner_texts()
    assert texts[0].startswith(f"{name}: {setup.subject} / {setup.style} · unziplora · ")
    assert texts[1].startswith(f"{setup.other}: {setup.other_subject} / {setup.other_style} · unziplora · ")
    table = page.locator("#uz-runs-table")
    table.get_by_text(setup.other_style, exact=True).first.wait_for()
    assert table.get_by_text(name, exact=True).count() >= 1
    settled(page)
    page.screenshot(path=str(shots / "ui-runs.png"), full_page=True)
    page.locator("#uz-runs .thumbnail-item").nth(1).click()
    page.locator("#uz-summary", has_text=setup.other).wait_for()
    assert page.get_by_role("tab", name="Result").get_attribute("aria-selected") == "true"

    # 8. cancel keeps the checkpoint; resume from the page finishes the run
    page.get_by_role("tab", name="Decompose").click()
    page.fill("#uz-name textarea", "again")
    page.click("#uz-decompose")
    page.locator("#uz-progress .uz-progress[data-state=running]", has_text="loss").wait_for()
    page.click("#uz-cancel")
    message(page).filter(has_text="again: cancelled after step").wait_for()
    assert ui.runs.interrupted() == ["again"] and not (ui.runs.root / "again").exists()
    page.click("#uz-resume-box")
    page.click("#uz-resume")
    message(page).filter(has_text="resume again: done").wait_for()
    assert (ui.runs.root / "again" / "manifest.json").is_file() and ui.runs.interrupted() == []


def _loads_in_stock_diffusers(base, lora: Path, run: Path) -> None:
    import torch
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file

    assert any(k.startswith("lora_unet_") for k in load_file(str(lora)))  # kohya keys
    pipe = StableDiffusionXLPipeline.from_pretrained(str(base))
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    pipe.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name="content")
    pipe.fuse_lora()
    pipe.unload_lora_weights()  # the fused weights stay, under their own names
    after = pipe.unet.state_dict()
    changed = {k for k, v in after.items() if not torch.equal(v, before[k])}
    # the run's own content LoRA says which modules it updates: those with a non-zero B
    stock = load_file(str(run / "content_lora" / "pytorch_lora_weights.safetensors"))
    updated = {k.removeprefix("unet.").replace(".lora_B.weight", ".weight")
               for k, v in stock.items() if ".lora_B." in k and v.abs().sum() > 0}
    assert updated and changed == updated
    assert all(np.isfinite(after[k].numpy()).all() for k in changed)
