"""The web demo (pixellm.demo): its legend/overlay/JSON builders, its turn logic, and the page
itself driven in headless Chromium through selenium (skipped where those are missing)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

import pixellm
from pixellm.build import build_model
from pixellm.demo import (
    ANSWER_ID,
    ASK_ID,
    ERROR_ID,
    HISTORY_ID,
    IMAGE_ID,
    LEGEND_ENTRY_CLASS,
    LEGEND_ID,
    QUESTION_ID,
    Session,
    legend_entries,
    load_predictors,
    main,
    prediction_record,
    render_prediction,
)
from pixellm.describe import RegionDescription
from pixellm.errors import InputError
from pixellm.families import config_from_dict
from pixellm.llm import train_word_tokenizer
from pixellm.overlay import palette
from pixellm.predictor import Prediction, Target, mask_bbox, mask_rle

QUESTION = "which shapes are red ?"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "demo.png"


def _shapes_image(path: Path, size=(96, 64)) -> Path:
    img = Image.new("RGB", size, (235, 235, 230))
    d = ImageDraw.Draw(img)
    d.ellipse([6, 8, 30, 32], fill=(220, 40, 40))
    d.rectangle([40, 20, 62, 44], fill=(40, 80, 220))
    d.polygon([(72, 52), (84, 30), (94, 52)], fill=(40, 170, 60))
    img.save(path)
    return path


@pytest.fixture(scope="module")
def demo_ckpt(tmp_path_factory, micro_config, tokenizer_texts) -> Path:
    """A micro PixelLM checkpoint whose random LLM writes a codebook block where it would have
    written its answer's third word, so that its answers have targets (and still a phrase)."""
    torch.manual_seed(0)
    tok = train_word_tokenizer(tokenizer_texts)
    model = build_model(config_from_dict(micro_config), tokenizer=tok).eval()
    img = _shapes_image(tmp_path_factory.mktemp("probe") / "probe.png")
    words = pixellm.PixelLMPredictor(model, max_new_tokens=16).predict(img, QUESTION).answer.split()
    if len(words) >= 3:
        head = model.llm.get_output_embeddings().weight
        with torch.no_grad():
            head[model.codebook_ids[0]] = 3 * head[tok(words[2], add_special_tokens=False)["input_ids"][0]]
    out = tmp_path_factory.mktemp("demo") / "ckpt"
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def predictor(demo_ckpt):
    return pixellm.load_predictor(demo_ckpt, max_new_tokens=16)


def _target(mask: np.ndarray, phrase: str, score: float, index: int, caption: str | None = None) -> Target:
    desc = None if caption is None else RegionDescription(caption, [], {}, [], [0.0], mask_bbox(mask))
    return Target(phrase, mask, score, mask_bbox(mask), mask_rle(mask), index, description=desc)


@pytest.fixture
def two_targets() -> tuple[np.ndarray, Prediction]:
    rgb = np.full((40, 60, 3), 200, np.uint8)
    a = np.zeros((40, 60), bool)
    a[10:20, 5:20] = True
    b = np.zeros((40, 60), bool)
    b[25:35, 30:55] = True
    pred = Prediction("red circle and <b>blue</b> square.",
                      [_target(a, "red circle", 0.91, 0, caption="a red circle"),
                       _target(b, "<b>blue</b> square", 0.42, 1)])
    return rgb, pred


# ---------------------------------------------------------------- builders (no browser)

def test_legend_and_overlay_of_two_targets(two_targets):
    rgb, pred = two_targets
    r = render_prediction(rgb, pred)
    assert r.legend_html.count(f'class="{LEGEND_ENTRY_CLASS}"') == 2 == len(r.entries)
    assert [e.number for e in r.entries] == [1, 2]
    assert [e.colour for e in r.entries] == palette(2)  # the masks' colours on the overlay
    assert r.entries[0].caption == "a red circle" and r.entries[1].caption is None
    assert "a red circle" in r.legend_html and "score 0.91" in r.legend_html and "score 0.42" in r.legend_html
    assert "<b>blue</b>" not in r.legend_html and "&lt;b&gt;blue&lt;/b&gt; square" in r.legend_html  # escaped
    assert r.overlay.mode == "RGB" and r.overlay.width >= 256  # upscaled so labels read
    # each mask is drawn in its legend colour (alpha 0.5 over grey 200) at the mask's centre
    scale = r.overlay.width // 60
    px = np.asarray(r.overlay)
    for e, (y, x) in zip(r.entries, [(15, 12), (30, 42)]):
        expect = np.round(0.5 * 200 + 0.5 * np.asarray(e.colour, float))
        assert np.abs(px[y * scale + scale // 2, x * scale + scale // 2].astype(float) - expect).max() <= 1


def test_legend_of_no_target():
    r = render_prediction(np.zeros((8, 8, 3), np.uint8), Prediction("no shape matches.", []))
    assert r.entries == [] and LEGEND_ENTRY_CLASS not in r.legend_html and "no target" in r.legend_html
    assert legend_entries(Prediction("", [])) == []


def test_prediction_record_has_the_cli_fields(two_targets):
    _, pred = two_targets
    rec = prediction_record(pred, image="x.png", question="q?", model="m")
    assert rec["answer"] == pred.answer and rec["model"] == "m" and rec["duplicates"] == [] == rec["rejected"]
    assert [set(t) for t in rec["targets"]] == [{"phrase", "index", "score", "bbox_xyxy", "rle", "description"},
                                                {"phrase", "index", "score", "bbox_xyxy", "rle"}]
    back = json.loads(json.dumps(rec))["targets"][1]["rle"]
    decoded = mask_utils.decode({"size": back["size"], "counts": back["counts"].encode()}).astype(bool)
    assert np.array_equal(decoded, pred.targets[1].mask)


def test_session_turns_and_typed_errors(predictor, tmp_path):
    img = _shapes_image(tmp_path / "shapes.png")
    s = Session({"pixellm-micro-test": predictor}, tmp_path / "work")
    pred, rendered, json_path, png_path = s.answer("pixellm-micro-test", str(img), QUESTION)
    direct = predictor.predict(img, QUESTION)
    assert pred.answer == direct.answer and len(rendered.entries) == len(direct.targets)
    rec = json.loads(json_path.read_text())
    assert rec["answer"] == direct.answer and len(rec["targets"]) == len(direct.targets)
    assert Image.open(png_path).size == rendered.overlay.size
    with pytest.raises(InputError, match="no image"):
        s.answer("pixellm-micro-test", None, QUESTION)
    with pytest.raises(InputError, match="question is empty"):
        s.answer("pixellm-micro-test", str(img), "   ")
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not an image at all")
    with pytest.raises(InputError, match="cannot read image"):
        s.answer("pixellm-micro-test", str(bad), QUESTION)
    with pytest.raises(InputError, match="unknown model"):
        s.answer("other", str(img), QUESTION)


def test_load_predictors_keys_and_bad_checkpoint(demo_ckpt, tmp_path, capsys, monkeypatch):
    loaded = []

    def fake_load(directory, **kw):  # the names come from the configs; no weights needed
        loaded.append((directory, kw))
        return object()

    monkeypatch.setattr("pixellm.checkpoint.load_predictor", fake_load)
    preds = load_predictors([str(demo_ckpt), str(demo_ckpt)], device="cpu")
    assert list(preds) == ["pixellm-micro-test", f"pixellm-micro-test ({demo_ckpt})"]  # the configs' name
    assert loaded == [(str(demo_ckpt), {"device": "cpu", "describer": None})] * 2
    assert main(["--checkpoint", str(tmp_path / "missing")]) == 2
    assert "pixellm-demo: error:" in capsys.readouterr().err


def test_image_input_hands_a_corrupt_upload_to_the_loader(tmp_path):
    pytest.importorskip("gradio", reason="gradio is not installed (pip install gradio)")
    from gradio.data_classes import ImageData

    from pixellm.demo import _tolerant_image_class

    component = _tolerant_image_class()(type="filepath", image_mode=None)
    assert component.get_block_name() == "image"  # gradio's own image front end
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not an image at all")
    assert component.preprocess(ImageData(path=str(bad), orig_name="corrupt.png")) == str(bad)
    good = _shapes_image(tmp_path / "good.png")
    assert component.preprocess(ImageData(path=str(good), orig_name="good.png")) == str(good)
    assert component.preprocess(None) is None


# ---------------------------------------------------------------- the page in a browser

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def chrome(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    pytest.importorskip("gradio", reason="gradio is not installed (pip install gradio)")
    for exe in (CHROMIUM, CHROMEDRIVER):
        if not os.access(exe, os.X_OK):
            why = f"{exe} is missing (apt-get install chromium chromium-driver)"
            if os.environ.get("PIXELLM_CI"):  # .ci/run installs the browser: there it must run
                pytest.fail(why)
            pytest.skip(why)
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", f"--user-data-dir={profile}", "--window-size=1280,1200"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait(driver, what, timeout: float = 30.0):
    """Poll ``what(driver)`` until it is truthy; its value."""
    end = time.monotonic() + timeout
    while True:
        try:
            value = what(driver)
        except Exception:  # noqa: BLE001 - elements come and go while the page updates
            value = None
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {getattr(what, '__name__', what)}")
        time.sleep(0.1)


@pytest.mark.timeout(150)
def test_demo_in_headless_chromium(chrome, predictor, tmp_path):
    from selenium.webdriver.common.by import By

    from pixellm.demo import build_app

    css = chrome.find_elements
    img = _shapes_image(tmp_path / "shapes.png", size=(192, 128))
    direct = predictor.predict(img, QUESTION)  # what the page must show
    app = build_app({"pixellm-micro-test": predictor})
    port = _free_port()
    app.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, ssr_mode=False, quiet=True)
    try:
        chrome.get(f"http://127.0.0.1:{port}/")
        _wait(chrome, lambda d: d.find_element(By.CSS_SELECTOR, f"#{ASK_ID}")).click()  # no image yet
        err = _wait(chrome, lambda d: d.find_element(By.CSS_SELECTOR, f"#{ERROR_ID} .pixellm-error").text)
        assert "no image" in err
        upload = _wait(chrome, lambda d: d.find_element(By.CSS_SELECTOR, f"#{IMAGE_ID} input[type=file]"))
        upload.send_keys(str(img))
        _wait(chrome, lambda d: d.find_element(By.CSS_SELECTOR, f"#{IMAGE_ID} img"))
        box = chrome.find_element(By.CSS_SELECTOR, f"#{QUESTION_ID} textarea")
        box.send_keys(QUESTION)
        chrome.find_element(By.CSS_SELECTOR, f"#{ASK_ID}").click()

        shown = _wait(chrome, lambda d: d.find_element(By.CSS_SELECTOR, f"#{ANSWER_ID} .answer-text").text)
        assert " ".join(shown.split()) == " ".join(direct.answer.split()) or (
            not direct.answer and "empty answer" in shown)
        _wait(chrome, lambda d: d.find_element(By.CSS_SELECTOR, f"#{LEGEND_ID} .target-legend"))
        entries = css(By.CSS_SELECTOR, f"#{LEGEND_ID} .{LEGEND_ENTRY_CLASS}")
        assert len(entries) == len(direct.targets)
        for e, t in zip(entries, direct.targets):
            assert f"{t.score:.2f}" in e.text
        assert not css(By.CSS_SELECTOR, f"#{ERROR_ID} .pixellm-error")
        _wait(chrome, lambda d: d.find_element(By.CSS_SELECTOR, "#overlay img"))

        # a second turn: both questions stay in the conversation
        box = chrome.find_element(By.CSS_SELECTOR, f"#{QUESTION_ID} textarea")
        _wait(chrome, lambda d: box.get_attribute("value") == "")  # cleared after the turn
        box.send_keys("find all the stars .")
        chrome.find_element(By.CSS_SELECTOR, f"#{ASK_ID}").click()
        _wait(chrome, lambda d: "find all the stars" in d.find_element(By.CSS_SELECTOR, f"#{HISTORY_ID}").text)
        assert QUESTION in chrome.find_element(By.CSS_SELECTOR, f"#{HISTORY_ID}").text
        _wait(chrome, lambda d: box.get_attribute("value") == "")
        SCREENSHOT.parent.mkdir(exist_ok=True)
        chrome.save_screenshot(str(SCREENSHOT))

        # an empty question: the InputError's message on the page, no traceback
        chrome.find_element(By.CSS_SELECTOR, f"#{ASK_ID}").click()
        err = _wait(chrome, lambda d: d.find_element(By.CSS_SELECTOR, f"#{ERROR_ID} .pixellm-error").text)
        assert "the question is empty" in err and "Traceback" not in chrome.page_source
        assert len(css(By.CSS_SELECTOR, f"#{LEGEND_ID} .{LEGEND_ENTRY_CLASS}")) == len(direct.targets)

        # a new image starts a new conversation
        chrome.find_element(By.CSS_SELECTOR, f"#{IMAGE_ID} input[type=file]").send_keys(
            str(_shapes_image(tmp_path / "other.png", size=(128, 128))))
        _wait(chrome, lambda d: QUESTION not in d.find_element(By.CSS_SELECTOR, f"#{HISTORY_ID}").text)
        assert not css(By.CSS_SELECTOR, f"#{LEGEND_ID} .{LEGEND_ENTRY_CLASS}")
        assert not css(By.CSS_SELECTOR, f"#{ERROR_ID} .pixellm-error")  # the reset cleared it

        # a corrupt image: the loader's InputError on the page
        bad = tmp_path / "corrupt.png"
        bad.write_bytes(b"\x89PNG\r\n\x1a\n not an image at all")
        chrome.find_element(By.CSS_SELECTOR, f"#{IMAGE_ID} input[type=file]").send_keys(str(bad))
        time.sleep(0.5)
        box.send_keys(QUESTION)
        chrome.find_element(By.CSS_SELECTOR, f"#{ASK_ID}").click()
        err = _wait(chrome, lambda d: d.find_element(By.CSS_SELECTOR, f"#{ERROR_ID} .pixellm-error").text)
        assert "cannot read image" in err and "Traceback" not in chrome.page_source
    finally:
        app.close()
