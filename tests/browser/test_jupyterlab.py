"""The widgets in a real browser: JupyterLab on a free loopback port, notebook 14 opened in headless Chromium through
Playwright, every cell run, the explorer's slider dragged, and the picture on screen compared before and after; then
the playground's first picture picked and "save picked" clicked, and the PNG (with its metadata) found on disk.

Opt-in (``pytest -m browser``); ``make test`` runs it when Chromium is installed (``.ci/run`` installs Debian's).
Screenshots go to ``$DALLE2_EDU_ARTIFACTS`` (default ``test-artifacts/browser``). Nothing here reaches outside the
machine: JupyterLab's news and update checks are off and Chromium starts with background networking disabled.
"""

import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = "notebooks/14_explorers_and_playground.ipynb"
CHROMIUM_FLAGS = [
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-features=Translate,OptimizationHints,MediaRouter",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def artifacts() -> Path:
    path = Path(os.environ.get("DALLE2_EDU_ARTIFACTS", ROOT / "test-artifacts" / "browser"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 serving the repository; yields its base URL and token."""
    if chromium_path() is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    tmp = tmp_path_factory.mktemp("jupyter")
    # Serve a copy, so that JupyterLab's autosave never writes outputs into the committed notebook; the notebook
    # still finds data/checkpoints (UnCLIP.from_pretrained falls back to the project's data folder).
    (tmp / "notebooks").mkdir()
    shutil.copy(ROOT / NOTEBOOK, tmp / NOTEBOOK)
    # No "get notified about Jupyter news?" pop-up: the announcements plugin is switched off.
    (tmp / "config" / "labconfig").mkdir(parents=True)
    (tmp / "config" / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
    )
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "DALLE2_EDU_FAST": os.environ.get("DALLE2_EDU_FAST", "1"), "MPLBACKEND": "Agg",
           "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp / "config")}  # fmt: skip
    log = open(tmp / "lab.log", "w")  # noqa: SIM115  (closed below)
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp}", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly",
         f"--LabApp.workspaces_dir={tmp / 'workspaces'}", "--ServerApp.open_browser=False"]
        + (["--allow-root"] if os.geteuid() == 0 else []),
        cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail(f"JupyterLab did not start:\n{(tmp / 'lab.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield base, token, tmp
    finally:
        stop(server)
        log.close()
        shutil.copy(tmp / "lab.log", Path(os.environ.get("DALLE2_EDU_ARTIFACTS", ROOT / "test-artifacts" / "browser")))


def stop(server: subprocess.Popen) -> None:
    """Stop the server and its kernels (they share its process group)."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def picture(page_or_locator) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(page_or_locator.screenshot())).convert("RGB")).astype(np.int16)


def test_explorer_slider_changes_the_picture_in_jupyterlab(lab, artifacts):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    base, token, served = lab
    saved_folder = served / "notebooks" / "out" / "picked"  # the playground's default "save to", from the kernel's cwd
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}", timeout=90_000)
            page.locator(".jp-Notebook").first.wait_for(timeout=90_000)
            # the kernel must be idle before "Run All Cells" is asked for; a request sent while the kernel is still
            # connecting can be dropped, so it is repeated until the first cell shows it is running
            page.get_by_text("| Idle").first.wait_for(timeout=120_000)
            for _ in range(4):
                page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
                page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
                try:
                    page.wait_for_function(
                        "() => [...document.querySelectorAll('.jp-InputArea-prompt')]"
                        ".some(e => /\\[[0-9*]+\\]/.test(e.textContent))",
                        timeout=20_000,
                    )
                    break
                except PlaywrightTimeout:
                    page.keyboard.press("Escape")
            else:
                pytest.fail("JupyterLab never started running the notebook")
            image = page.locator("img.widget-image").first
            image.wait_for(timeout=150_000)
            page.wait_for_function(
                "() => document.querySelectorAll('.jp-InputArea-prompt').length > 0 && "
                "[...document.querySelectorAll('.jp-InputArea-prompt')].every(e => !e.textContent.includes('*'))",
                timeout=300_000,
            )
            page.screenshot(path=str(artifacts / "notebook_after_run.png"), full_page=True)
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
            tracebacks = [t for t in errors.all_text_contents() if "Traceback" in t or "Error" in t]
            assert not tracebacks, f"a cell failed in JupyterLab: {tracebacks[0][:2000]}"

            image.scroll_into_view_if_needed()
            before = picture(image)
            image.screenshot(path=str(artifacts / "explorer_step_0.png"))
            readout = page.locator(".widget-hslider .widget-readout").first
            value_before = readout.text_content()
            handle = page.locator(".widget-hslider .noUi-handle").first
            track = page.locator(".widget-hslider .noUi-base").first
            handle.scroll_into_view_if_needed()
            box, end = handle.bounding_box(), track.bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.down()
            page.mouse.move(end["x"] + end["width"] + 20, box["y"] + box["height"] / 2, steps=12)
            page.mouse.up()
            page.wait_for_function(
                "(old) => document.querySelector('.widget-hslider .widget-readout').textContent !== old",
                arg=value_before,
                timeout=30_000,
            )
            page.wait_for_timeout(1000)  # the new PNG arrives from the kernel
            after = picture(image)
            image.screenshot(path=str(artifacts / "explorer_last_step.png"))
            page.screenshot(path=str(artifacts / "notebook_after_slider.png"), full_page=True)

            # Pick and save in the playground: toggle "pick 1", click "save picked", and the file appears.
            pick = page.locator("button.jupyter-button", has_text="pick 1").first
            pick.scroll_into_view_if_needed()
            pick.click()
            page.locator("button.jupyter-button", has_text="save picked").first.click()
            deadline = time.monotonic() + 60
            while not list(saved_folder.glob("*.png")) and time.monotonic() < deadline:
                page.wait_for_timeout(500)
            page.screenshot(path=str(artifacts / "playground_after_save.png"), full_page=True)
        except Exception:
            page.screenshot(path=str(artifacts / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()
    assert before.shape == after.shape
    change = np.abs(before - after).mean()
    # noise at step 0 against finished products at the end: a large change, far above rendering jitter
    assert change > 20, f"the explorer's picture barely changed ({change:.1f} of 255 on average)"
    from dalle2_edu.provenance import read_metadata

    saved = sorted(saved_folder.glob("*.png"))
    assert len(saved) == 1, f"clicking 'save picked' with picture 1 picked wrote {len(saved)} files in {saved_folder}"
    meta = read_metadata(saved[0])
    assert meta["generated-by"] == "dalle2_edu" and meta["prompt"] == "a blue t-shirt with dots, white background"
