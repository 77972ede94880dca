"""The page of ``cxr serve`` in a real browser: Playwright driving headless Chromium uploads
a phantom PNG and a DICOM, waits for the ranked table and the Grad-CAM overlay, checks the
research-use notice, the opacity control, drag-and-drop, the JSON download, the DICOM SR
link of the DICOM and the not-a-chest-X-ray warning, that nothing is fetched from anywhere
but the server, and saves a screenshot that must not be blank.

The browser is Debian's ``chromium`` (``make test`` installs it; ``$CXR_CHROMIUM`` names
another binary). Without it this test FAILS rather than skips: the page is part of the
product. Set ``CXR_SERVE_SCREENSHOT=path.png`` to keep the screenshot.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed")

from cxr.serving import create_app  # noqa: E402
from cxr.synth import SYNTH_LABELS, render_phantom  # noqa: E402
from dicom_files import write_dicom  # noqa: E402
from test_serving_api import LiveServer, write_model  # noqa: E402

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
THRESHOLDS = {"Cardiomegaly": 0.5, "Effusion": 0.45, "Mass": 0.55, "Nodule": 0.5}


def chromium_path() -> str:
    for candidate in (
        os.environ.get("CXR_CHROMIUM"),
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
        "/usr/bin/chromium",
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail(
        "Chromium is needed for the browser test of cxr serve and was not found: install it "
        "(Debian: apt-get install chromium; `make test` does as root) or set $CXR_CHROMIUM"
    )


@pytest.fixture(scope="module")
def uploads(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("browser_uploads")
    rng = np.random.default_rng(7)
    effusion, _ = render_phantom(rng, 384, ["Effusion", "Cardiomegaly"])
    nodule, _ = render_phantom(rng, 320, ["Nodule"])
    png = tmp / "phantom-effusion.png"
    Image.fromarray(effusion).save(png)
    # the study a DICOM SR joins: its UIDs and the patient and study attributes it copies
    study = {"StudyInstanceUID": "1.2.826.0.1.3680043.8.498.1", "Modality": "DX"}
    study["SeriesInstanceUID"] = "1.2.826.0.1.3680043.8.498.2"
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyID"):
        study[keyword] = ""
    for keyword in ("StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName"):
        study[keyword] = ""
    dcm = write_dicom(
        tmp / "phantom-nodule.dcm", nodule.astype(np.uint16) * 257, "MONOCHROME2", **study
    )
    return {"png": png, "dicom": dcm}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = write_model(
        tmp_path_factory.mktemp("browser_model") / "phantom-model.safetensors",
        labels=SYNTH_LABELS,
        thresholds=THRESHOLDS,
    )
    with LiveServer(create_app(model)) as live:
        yield live


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_page(browser, server, requests: list[str], errors: list[str]):
    context = browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/")
    page.wait_for_function(
        "() => document.getElementById('model-summary').textContent.includes('cxr-small-cnn')"
    )
    return context, page


def wait_for_result(page, n_labels: int) -> None:
    page.wait_for_function(
        f"() => document.querySelectorAll('#results-table tbody tr').length === {n_labels}"
        " && !document.getElementById('results-table').hidden"
    )
    page.wait_for_function(
        "() => { const h = document.getElementById('heat-image');"
        " return !h.hidden && h.complete && h.naturalWidth > 0; }",
        timeout=120_000,
    )


def test_upload_table_overlay_notice_and_screenshot(browser, server, uploads, tmp_path):
    requests: list[str] = []
    errors: list[str] = []
    context, page = open_page(browser, server, requests, errors)
    try:
        page.set_input_files("#file-input", [str(uploads["png"]), str(uploads["dicom"])])
        page.wait_for_function(
            "() => [...document.querySelectorAll('.file-item')]"
            ".filter(li => li.dataset.status === 'done').length === 2",
            timeout=120_000,
        )
        wait_for_result(page, len(SYNTH_LABELS))
        assert page.inner_text("#image-name") == "phantom-effusion.png"
        # the ranked table: probabilities in order, findings over threshold marked
        probs = [
            float(x) for x in page.locator("#results-table tbody td:nth-child(4)").all_inner_texts()
        ]
        assert probs == sorted(probs, reverse=True)
        above = page.locator("#results-table tbody tr.above").count()
        assert above == page.locator("#results-table .badge").count()
        assert page.locator("#results-table .bar .fill").count() == len(SYNTH_LABELS)
        # the notice beside the result and on the page
        notice = page.locator(".result-notice")
        assert notice.is_visible() and "Research use only" in notice.inner_text()
        assert page.locator("[data-testid=banner-notice]").is_visible()
        assert not page.locator("#download-sr").is_visible()  # a PNG has no DICOM SR
        assert "not available" in page.inner_text("#ood-status")
        assert not page.locator("#ood-warning").is_visible()
        # the overlay follows the selected label, with an opacity control
        first = page.locator("#results-table tbody tr").nth(0).get_attribute("data-label")
        assert page.get_attribute("#heat-image", "data-label") == first
        page.fill("#opacity", "25")
        page.dispatch_event("#opacity", "input")
        assert page.eval_on_selector("#heat-image", "h => h.style.opacity") == "0.25"
        third = page.locator("#results-table tbody tr").nth(2)
        label = third.get_attribute("data-label")
        third.click()
        page.wait_for_function(
            f"() => document.getElementById('heat-image').dataset.label === {json.dumps(label)}",
            timeout=120_000,
        )
        page.fill("#opacity", "60")
        page.dispatch_event("#opacity", "input")
        # a JSON download of the result
        with page.expect_download() as info:
            page.click("#download-json")
        saved = json.loads(Path(info.value.path()).read_text())
        assert saved["images"][0]["path"] == "phantom-effusion.png"
        assert saved["notice"].startswith("Research use only")
        shot = tmp_path / "page.png"
        page.screenshot(path=str(shot), full_page=True)
        keep = os.environ.get("CXR_SERVE_SCREENSHOT")
        if keep:
            shutil.copyfile(shot, keep)
        # the DICOM, rendered by the server
        page.locator(".file-item").nth(1).click()
        page.wait_for_function(
            "() => document.getElementById('image-name').textContent === 'phantom-nodule.dcm'"
        )
        wait_for_result(page, len(SYNTH_LABELS))
        assert page.get_attribute("#base-image", "src").startswith(("blob:", "data:image/png"))
        # the DICOM's SR: a link next to the headline, reached by keyboard, and its href
        sr_link = page.get_by_role("link", name="Download DICOM SR")
        sr_link.wait_for(state="visible")
        href = sr_link.get_attribute("href")
        status, ctype = page.evaluate(
            "async (h) => { const r = await fetch(h);"
            " return [r.status, r.headers.get('content-type')]; }",
            href,
        )
        assert href.startswith("v1/results/") and (status, ctype) == (200, "application/dicom")
        sr_link.focus()
        with page.expect_download() as info:
            page.keyboard.press("Enter")
        assert info.value.suggested_filename == "phantom-nodule_sr.dcm"
        assert Path(info.value.path()).read_bytes()[128:132] == b"DICM"
        # drag and drop onto the zone
        data = base64.b64encode(uploads["png"].read_bytes()).decode()
        page.evaluate(
            """(b64) => {
                const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                const dt = new DataTransfer();
                dt.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
                const zone = document.getElementById('dropzone');
                zone.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
            }""",
            data,
        )
        page.wait_for_function(
            "() => [...document.querySelectorAll('.file-item')]"
            ".filter(li => li.dataset.status === 'done').length === 3",
            timeout=120_000,
        )
    finally:
        context.close()
    # nothing but this server was asked for anything
    for url in requests:
        assert url.startswith((server.url + "/", "data:", "blob:")), url
    assert not errors, errors
    # the screenshot is a page, not a blank
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[0] >= 800 and img.shape[1] == 1360
    assert img.std() > 20
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 500


def test_not_a_chest_x_ray_warning_is_shown_when_raised(browser, server, uploads):
    """The model files of today carry no such check; the warning is tested with an answer
    that raises it (the page shows what the API says)."""
    requests: list[str] = []
    errors: list[str] = []
    context, page = open_page(browser, server, requests, errors)

    # the answer the server gives for this file, with the check raised (Playwright's
    # route.fetch cannot resend a multipart body holding a file)
    import httpx

    answer = httpx.post(
        server.url + "/v1/predict",
        files=[("files", (uploads["png"].name, uploads["png"].read_bytes()))],
        timeout=60,
    ).json()
    for image in answer["images"]:
        image["ood"] = {"available": True, "flag": True, "score": 0.93}

    def raise_flag(route) -> None:
        route.fulfill(status=200, content_type="application/json", body=json.dumps(answer))

    try:
        page.route("**/v1/predict", raise_flag)
        page.set_input_files("#file-input", [str(uploads["png"])])
        wait_for_result(page, len(SYNTH_LABELS))
        warning = page.locator("#ood-warning")
        assert warning.is_visible()
        assert "may not be a chest X-ray" in warning.inner_text()
        assert "0.930" in warning.inner_text()
        assert page.locator(".result-notice").is_visible()
    finally:
        context.close()
    assert not errors, errors


def test_the_page_asks_for_the_api_key(browser, tmp_path):
    from cxr.serving import ServeSettings

    model = write_model(tmp_path / "m.safetensors")
    app = create_app(model, settings=ServeSettings(api_key="browser-key"))
    with LiveServer(app) as live:
        context = browser.new_context()
        page = context.new_page()
        try:
            page.goto(live.url + "/")
            page.wait_for_selector("#key-form", state="visible")
            page.fill("#api-key", "browser-key")
            page.click("#key-form button")
            page.wait_for_function(
                "() => document.getElementById('model-summary').textContent"
                ".includes('cxr-small-cnn')"
            )
            assert not page.locator("#key-form").is_visible()
        finally:
            context.close()
