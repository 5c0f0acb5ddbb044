"""The dashboard in a real browser: headless Chromium driven by selenium over real run files."""

import contextlib
import json
import os
import re
import shutil
import threading
import time

import numpy as np
import pytest
from gradscope.app import create_app, ids
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from werkzeug.serving import make_server

from tests.run_files import write_run, write_runs_folder

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOT = "/tmp/gradscope_dashboard.png"
CHROME_ARGS = (
    "--headless=new",
    "--no-sandbox",  # needed as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,2600",  # the narrowest width the page is made for
)
WAIT_SECONDS = 20

# Skipped only on a machine without a browser; CI (CI=true) installs one, so there they must run.
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER) and not os.environ.get("CI"),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)


@contextlib.contextmanager
def serve(runs_dir):
    """The dashboard over `runs_dir`, served from a thread on a free loopback port."""
    server = make_server("127.0.0.1", 0, create_app(runs_dir).server, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        thread.join()


@pytest.fixture(scope="module")
def driver():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in CHROME_ARGS:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "SEVERE"})
    chrome = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield chrome
    chrome.quit()


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    runs_dir = write_runs_folder(tmp_path_factory.mktemp("dash") / "runs")
    with serve(runs_dir) as url:
        yield url


def wait_for(what, check, timeout=WAIT_SECONDS):
    """Poll `check()` until it returns something truthy; fail naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; last value: {value!r}")
        time.sleep(0.2)


GRAPH_STATE_JS = """
const el = document.getElementById(arguments[0]);
const gd = el && el.querySelector('.js-plotly-plot');
if (!gd || !gd.data || !gd._fullLayout) return null;
return {
  traces: gd.data.length,
  names: gd.data.map(t => t.name || ''),
  groups: gd.data.map(t => t.legendgroup || ''),
  colours: gd.data.map(t => (t.line && t.line.color) || null),
  legend: (gd.querySelector('.legend') || {}).textContent || '',
  types: gd.data.map(t => t.type || 'scatter'),
  title: (gd.layout.title && gd.layout.title.text) || '',
  annotations: (gd.layout.annotations || []).map(a => a.text),
  svg_lines: gd.querySelectorAll('.scatterlayer .trace path.js-line').length,
  heatmap_images: gd.querySelectorAll('.heatmaplayer image').length,
  legend_items: gd.querySelectorAll('.legend .traces').length,
  yrange: gd._fullLayout.yaxis ? gd._fullLayout.yaxis.range.slice() : null,
};
"""


def graph(driver, panel):
    """What the browser drew for a panel's graph (None before plotly has drawn it)."""
    dom_id = json.dumps(ids.panel_id("graph", panel), sort_keys=True, separators=(",", ":"))
    return driver.execute_script(GRAPH_STATE_JS, dom_id)


def message(driver, panel):
    """The text of a panel's message line."""
    dom_id = json.dumps(ids.panel_id("message", panel), sort_keys=True, separators=(",", ":"))
    return driver.execute_script("return document.getElementById(arguments[0]).innerText", dom_id)


def choose(driver, dropdown_id, value):
    """Open a dropdown and click the option with `value`, as a user would."""
    driver.find_element(By.ID, dropdown_id).click()
    option = wait_for(
        f"option {value} of {dropdown_id}",
        lambda: driver.find_elements(
            By.CSS_SELECTOR, f'.dash-dropdown-options input[value="{value}"]'
        ),
    )[0]
    option.find_element(By.XPATH, "./ancestor::label[1]").click()
    driver.find_element(By.TAG_NAME, "h2").click()  # closes a multi-select menu


def load(driver, url):
    driver.get(url)
    wait_for("the page", lambda: driver.find_elements(By.ID, ids.RUN_LIST))


def test_page_lists_runs_and_draws_every_figure(driver, dashboard):
    load(driver, dashboard)
    listing = driver.find_element(By.ID, ids.RUN_LIST).text
    assert "ResNet20 sweep 30 complete" in listing
    assert "PlainNet20 baseline 20 complete" in listing
    assert "broken.h5" in listing and "not an HDF5 file" in listing
    flow = wait_for("flow curves", lambda: (g := graph(driver, "flow")) and g["svg_lines"] and g)
    assert set(flow["groups"]) == {"sweep/lr01", "baseline/tanh"}  # the two newest runs
    assert "Gradient norm" in flow["title"]
    heat = wait_for(
        "heatmaps", lambda: (g := graph(driver, "heatmap")) and g["heatmap_images"] and g
    )
    assert heat["types"] == ["heatmap", "heatmap"] and heat["heatmap_images"] == 2
    ratio = wait_for("ratio", lambda: (g := graph(driver, "ratio")) and g["heatmap_images"] and g)
    assert ratio["traces"] == 1
    training = wait_for("training curves", lambda: (g := graph(driver, "training")) and g["traces"])
    assert training
    assert driver.find_element(By.ID, ids.DIAGNOSIS).text.count("diagnosis of") == 2
    assert driver.find_element(By.ID, ids.PAGE_MESSAGE).text == ""
    driver.save_screenshot(SCREENSHOT)
    severe = [e for e in driver.get_log("browser") if "favicon" not in e["message"]]
    assert severe == []


def test_changing_the_statistic_redraws_flow_and_heatmap(driver, dashboard):
    load(driver, dashboard)
    before = wait_for("flow", lambda: (g := graph(driver, "flow")) and g["svg_lines"] and g)
    choose(driver, ids.STAT, "weight_norm")
    after = wait_for(
        "flow with weight_norm",
        lambda: (g := graph(driver, "flow")) and "Weight norm" in g["title"] and g,
    )
    assert after["title"] != before["title"]
    wait_for(
        "heatmap with weight_norm",
        lambda: "Weight norm" in (graph(driver, "heatmap") or {}).get("title", ""),
    )


def test_changing_the_selected_runs_changes_subplots_and_legend(driver, dashboard):
    load(driver, dashboard)
    wait_for("two heatmaps", lambda: (graph(driver, "heatmap") or {}).get("heatmap_images") == 2)
    choose(driver, ids.RUNS, "baseline/relu.h5")
    heat = wait_for(
        "three heatmaps", lambda: (g := graph(driver, "heatmap")) and g["heatmap_images"] == 3 and g
    )
    assert heat["traces"] == 3
    flow = wait_for(
        "three runs' flow lines",
        lambda: (g := graph(driver, "flow")) and len(set(g["groups"])) == 3 and g,
    )
    assert "baseline/relu" in flow["groups"]
    choose(driver, ids.RUNS, "sweep/lr01.h5")  # deselect
    wait_for(
        "two heatmaps again", lambda: (graph(driver, "heatmap") or {}).get("heatmap_images") == 2
    )


def test_the_step_box_takes_steps_on_enter_or_tab_and_the_ratio_takes_a_numerator(
    driver, dashboard
):
    # sweep/lr01 has steps 0..290 and baseline/tanh 0..190, every 10: the latest both have is
    # 190, at slider position 29; Dash's own box beside the slider (position 29) is hidden
    load(driver, dashboard)
    box = driver.find_element(By.ID, ids.STEP_INPUT)
    label = driver.find_element(By.ID, ids.STEP_LABEL)
    wait_for("the latest step in the box", lambda: box.get_attribute("value") == "190")
    assert driver.find_elements(By.CSS_SELECTOR, f"#{ids.STEP} input") == []
    for typed, key, drawn in (("47", Keys.ENTER, "50"), ("10", Keys.TAB, "10")):
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(typed, key)
        wait_for(f"{typed} then {key!r}", lambda d=drawn: box.get_attribute("value") == d)
        wait_for(f"the label at step {drawn}", lambda d=drawn: label.text == f"step {d}")
        wait_for(
            f"the flow curve at step {drawn}",
            lambda d=drawn: (graph(driver, "flow") or {}).get("title", "").endswith(f"step {d}"),
        )
    ratio = wait_for("ratio", lambda: (g := graph(driver, "ratio")) and g["heatmap_images"] and g)
    assert "ratio sweep/lr01 / baseline/tanh by layer" in ratio["title"]
    flip = driver.find_element(By.CSS_SELECTOR, f"#{ids.RATIO_NUMERATOR} input[value='1']")
    flip.find_element(By.XPATH, "./following-sibling::label").click()
    wait_for(
        "the ratio upside down",
        lambda: "ratio baseline/tanh / sweep/lr01" in (graph(driver, "ratio") or {})["title"],
    )


def test_a_filter_matching_nothing_shows_a_message_not_a_traceback(driver, dashboard):
    load(driver, dashboard)
    wait_for("flow", lambda: (graph(driver, "flow") or {}).get("svg_lines"))
    box = driver.find_element(By.ID, ids.LAYER_PATTERN)
    box.send_keys("no_such_layer*", Keys.ENTER)
    text = wait_for("the message", lambda: message(driver, "flow"))
    assert "no layer matches" in text and "Traceback" not in driver.page_source
    assert "no layer matches" in graph(driver, "flow")["annotations"][0]


def test_empty_folder_shows_how_to_record(driver, tmp_path):
    with serve(tmp_path) as url:
        load(driver, url)
        listing = driver.find_element(By.ID, ids.RUN_LIST).text
        assert "No run files" in listing and "gradscope.attach(model" in listing
        wait_for(
            "select message", lambda: "Select" in driver.find_element(By.ID, ids.PAGE_MESSAGE).text
        )


def test_live_run_refreshes_and_keeps_the_users_zoom(driver, tmp_path):
    writer = write_run(tmp_path / "live.h5", n_records=10, close=False)
    try:
        with serve(tmp_path) as url:
            load(driver, url)
            assert "10 live" in driver.find_element(By.ID, ids.RUN_LIST).text
            wait_for(
                "flow at step 90",
                lambda: "step 90" in (graph(driver, "flow") or {}).get("title", ""),
            )
            zoom_in(driver, "flow")
            zoomed = graph(driver, "flow")["yrange"]
            row = np.ones((len(writer.stats), len(writer.layers)), dtype=np.float32)
            for step in (100, 110, 120):
                writer.append(step, row)
            wait_for(
                "flow at step 120",
                lambda: "step 120" in (graph(driver, "flow") or {}).get("title", ""),
            )
            assert graph(driver, "flow")["yrange"] == pytest.approx(zoomed)
            wait_for(
                "13 records listed",
                lambda: "13 live" in driver.find_element(By.ID, ids.RUN_LIST).text,
            )
    finally:
        writer.close()


def zoom_in(driver, panel):
    """Drag a zoom box over the middle of a panel's plot area, as a user would."""
    before = graph(driver, panel)["yrange"]
    dom_id = json.dumps(ids.panel_id("graph", panel), sort_keys=True, separators=(",", ":"))
    area = driver.execute_script(
        "return document.getElementById(arguments[0]).querySelector('.nsewdrag')", dom_id
    )
    ActionChains(driver).move_to_element(area).move_by_offset(
        -40, -40
    ).click_and_hold().move_by_offset(80, 80).release().perform()
    wait_for("the zoom", lambda: graph(driver, panel)["yrange"] != before)


def test_a_good_run_beside_a_cut_one_still_renders(driver, tmp_path, cut_live_runs):
    # A copy of a live run cut at 50%, newer than the good run: it opens, but its records
    # cannot be read. The run list says so and the page selects the good run alone (a cut run
    # selected anyway costs only its own part of each panel: test_app_callbacks), and later
    # requests are not held up.
    write_run(tmp_path / "good" / "resnet.h5", mtime=1_000_000)
    cut = next(c for c in cut_live_runs if c.name == "cut0.5.h5")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "half.h5").write_bytes(cut.read_bytes())
    with serve(tmp_path) as url:
        for _ in range(2):  # a fresh load after the first still renders
            load(driver, url)
            heat = wait_for(
                "the good run's heatmap",
                lambda: (g := graph(driver, "heatmap")) and g["heatmap_images"] and g,
            )
            assert heat["heatmap_images"] == 1
            listing = driver.find_element(By.ID, ids.RUN_LIST).text
            assert "half.h5" in listing and "truncated" in listing and "error" in listing
            assert any("good/resnet" in a for a in heat["annotations"])
            assert message(driver, "heatmap") == ""
            wait_for(
                "the good run's diagnosis",
                lambda: (
                    "diagnosis of good/resnet" in driver.find_element(By.ID, ids.DIAGNOSIS).text
                ),
            )
            assert "Traceback" not in driver.page_source


SWATCHES_JS = """
return Array.from(document.querySelectorAll('#' + arguments[0] + ' tr.run-entry')).map(tr => [
  tr.children[1].innerText, getComputedStyle(tr.querySelector('.run-swatch')).backgroundColor]);
"""
REQUESTS_JS = "return performance.getEntriesByType('resource').map(e => e.name)"


def rgb(colour: str) -> str:
    """A CSS colour as the browser computes it: "rgb(r, g, b)"."""
    if colour.startswith("#"):
        r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
        return f"rgb({r}, {g}, {b})"
    return colour.replace(",", ", ").replace("  ", " ")


@pytest.fixture(scope="module")
def worked_pair(tmp_path_factory):
    """The worked example in miniature: resnet56 and plain56 with the bundled layer names."""
    from tests.run_files import write_twin

    root = tmp_path_factory.mktemp("worked_runs")
    write_twin(root / "worked" / "resnet56.h5", "resnet56", records=20)
    write_twin(root / "worked" / "plain56.h5", "plain56", records=20)
    with serve(root) as url:
        yield url


def test_default_page_of_a_resnet_plain_pair_tells_its_story(driver, worked_pair):
    load(driver, worked_pair)
    heat = wait_for(
        "heatmaps", lambda: (g := graph(driver, "heatmap")) and g["heatmap_images"] and g
    )
    ratio = wait_for("ratio", lambda: (g := graph(driver, "ratio")) and g["heatmap_images"] and g)
    assert heat["heatmap_images"] == 2 and ratio["heatmap_images"] == 1  # three heatmaps
    assert "4 only in worked/" in ratio["title"]  # the shortcut layers, left out and said so
    flow = wait_for("flow", lambda: (g := graph(driver, "flow")) and g["svg_lines"] and g)
    training = wait_for("training", lambda: (g := graph(driver, "training")) and g["traces"] and g)
    for panel in ("flow", "heatmap", "ratio", "training"):
        assert message(driver, panel) == "", panel
    assert driver.find_element(By.ID, ids.PAGE_MESSAGE).text == ""
    for legend in (flow["legend"], training["legend"]):  # both models named in every legend
        assert "worked/resnet56" in legend and "worked/plain56" in legend
    # one colour per run: the run table's swatch, the flow lines, the training curves, the
    # heatmap panel titles
    table = dict(driver.execute_script(SWATCHES_JS, ids.RUN_LIST))
    colours = {}
    for graph_state in (flow, training):
        for group, colour in zip(graph_state["groups"], graph_state["colours"], strict=True):
            colours.setdefault(group, set()).add(rgb(colour))
    assert all(len(c) == 1 for c in colours.values()), colours
    assert {g: c.pop() for g, c in colours.items()} == {
        "worked/resnet56": table["resnet56"],
        "worked/plain56": table["plain56"],
    }
    assert table["resnet56"] != table["plain56"]
    swatched = [re.search(r"color:([^\"]+)\".*worked/(\w+)", a) for a in heat["annotations"]]
    assert {m.group(2): rgb(m.group(1)) for m in swatched if m} == table
    # offline: every request went to the dashboard itself, Bootstrap's stylesheet included
    requests = driver.execute_script(REQUESTS_JS)
    assert any(r.endswith("bootstrap.min.css") for r in requests)
    assert all(r.startswith(worked_pair) for r in requests), requests
    severe = [  # of this page (a page of an earlier test, served no more, may still log)
        e
        for e in driver.get_log("browser")
        if "favicon" not in e["message"] and worked_pair in e["message"]
    ]
    assert severe == []


def test_a_statistic_that_is_all_nan_says_so_in_one_sentence(driver, worked_pair):
    load(driver, worked_pair)
    wait_for("flow", lambda: (graph(driver, "flow") or {}).get("svg_lines"))
    choose(driver, ids.STAT, "act_mean")
    for panel in ("flow", "heatmap", "ratio"):
        text = wait_for(f"{panel} message", lambda p=panel: message(driver, p))
        assert "has no finite act_mean value" in text and "(all NaN or inf)" in text, panel
        assert text.count(".") <= 2 and "Traceback" not in text
