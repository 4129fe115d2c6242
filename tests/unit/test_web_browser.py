"""The web app in real headless Chromium: a store holding a circuit and a patching run of a tiny
model; every page renders without console errors and without a request leaving loopback; a click
on a graph node opens its panel; the pruning slider changes how many edges are drawn."""

import pytest

import mechscope
from mechscope.autointerp.backends.server import background_server, listen
from mechscope.circuits.runs import CircuitOptions, run_circuit
from mechscope.patching.runs import PatchOptions, run_patch
from mechscope.store import RunStore
from mechscope.web import Guard, create_app
from tests.browser import browser, watched  # noqa: F401  (browser: a fixture)

TOKEN = "browser-test-token"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    tiny = mechscope.load_tiny("llama")
    run_circuit(tiny, CircuitOptions(task="induction", method="eap", n=3, edges=12, curve=False), root / "circuit")
    run_patch(tiny, PatchOptions(task="induction", sites="heads", n=3), root / "patch")
    with RunStore(root / "runs.sqlite") as store:
        ids = {name: store.register(root / name).id for name in ("circuit", "patch")}
    sock = listen("127.0.0.1", 0)
    guard = Guard.for_address("127.0.0.1", sock.getsockname()[1], token=TOKEN)
    with background_server(create_app(root / "runs.sqlite", guard), sock=sock) as url:
        yield url, ids


@pytest.fixture
def context(browser, site):  # noqa: F811
    url, _ = site
    context = browser.new_context(base_url=url)
    page = context.new_page()
    page.goto(f"/?token={TOKEN}")  # sets the session cookie for the rest of the test
    page.close()
    yield context
    context.close()


def test_runs_and_patching_pages_render_clean(context, site):
    _, ids = site
    watched_page = watched(context)
    page = watched_page.page
    page.goto("/")
    assert page.locator("table.runs tr").count() == 3, page.content()  # a heading row and the two runs
    watched_page.screenshot("runs")
    page.goto(f"/runs/{ids['patch']}")
    page.wait_for_selector("div.figure .main-svg")  # plotly drew the heatmap
    watched_page.screenshot("patch")
    watched_page.assert_clean()


def test_graph_node_click_opens_its_panel_and_the_slider_prunes_edges(context, site):
    _, ids = site
    watched_page = watched(context)
    page = watched_page.page
    page.goto(f"/runs/{ids['circuit']}")
    page.wait_for_function("window.mechscopeGraph !== undefined")
    total = page.evaluate("window.mechscopeGraph.edges().length")
    assert total > 2
    assert page.locator("#graph").get_attribute("data-drawn-edges") == str(total)
    panel = page.locator("#node-panel")
    assert panel.is_hidden()
    # Click the node with the most edges where the canvas draws it.
    name, x, y = page.evaluate("""() => {
        const cy = window.mechscopeGraph;
        const node = cy.nodes().max(n => n.connectedEdges().length).ele;
        const box = document.getElementById('graph').getBoundingClientRect();
        const at = node.renderedPosition();
        return [node.id(), box.left + at.x, box.top + at.y];
    }""")
    page.mouse.click(x, y)
    panel.wait_for(state="visible")
    assert panel.locator("h3").inner_text() == name
    watched_page.screenshot("circuit-panel")
    page.fill("#prune", "2")  # keep the two strongest edges
    page.locator("#prune").dispatch_event("input")
    assert page.locator("#graph").get_attribute("data-drawn-edges") == "2"
    assert f"{total - 2} hidden" in page.locator("#edge-count").inner_text()
    page.fill("#node-search", name)
    page.locator("#node-search").dispatch_event("input")
    assert "matching" in page.locator("#search-count").inner_text()
    watched_page.screenshot("circuit-pruned")
    watched_page.assert_clean()
