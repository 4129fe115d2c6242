"""The web app in real headless Chromium: a store holding a circuit and a patching run of a tiny
model, and the tiny model itself behind the app's worker. Every page renders without console
errors and without a request leaving loopback; a click on a graph node opens its panel; the
pruning slider changes how many edges are drawn; in the steering playground strength 0 gives the
unsteered text and a large strength another; the prompt view draws units, lens and attention; a
dictionary's features are listed, searched and shown, and "steer with this" steers with one; a
model diff and an audit are drawn, each audit claim a link to its evidence; an attribution graph
is drawn by position and layer and its nodes open their panels."""

import pytest

import mechscope
from mechscope.autointerp.backends.server import background_server, listen
from mechscope.circuits.runs import CircuitOptions, run_circuit
from mechscope.graphs import ReplacementModel
from mechscope.graphs.runs import GraphOptions, run_graph
from mechscope.patching.runs import PatchOptions, run_patch
from mechscope.report.audit_runs import audit_to_folder
from mechscope.report.diff_runs import DiffOptions, prepare_diff_folder, run_diff
from mechscope.store import RunStore
from mechscope.web import Guard, create_app
from mechscope.web.worker import ModelWorker
from tests.browser import browser, watched  # noqa: F401  (browser: a fixture)
from tests.unit.test_audit_pipeline import CONFIG as AUDIT_CONFIG
from tests.unit.test_graphs import transcoders as random_transcoders
from tests.web_fixtures import toy_dictionary_run

TOKEN = "browser-test-token"


@pytest.fixture(scope="module")
def site(tmp_path_factory, backdoor):
    root = tmp_path_factory.mktemp("site")
    base, organism = backdoor
    audit_to_folder(organism, base, root / "audit", AUDIT_CONFIG, {"ft": "tiny backdoor", "base": "tiny"},
                    progress=False)
    diff_options = DiffOptions("tiny-llama", "planted", contexts=3, context_length=12, first_positions=2, top_k=4,
                               steer_prompts=0, crosscoder_steps=4, crosscoder_width=16, crosscoder_k=2,
                               crosscoder_contexts=4, crosscoder_batch_size=16)
    run_diff(base, organism, prepare_diff_folder(root / "diff", diff_options), diff_options, progress=False)
    tiny = mechscope.load_tiny("llama")
    run_circuit(tiny, CircuitOptions(task="induction", method="eap", n=3, edges=12, curve=False), root / "circuit")
    run_patch(tiny, PatchOptions(task="induction", sites="heads", n=3), root / "patch")
    toy_dictionary_run(tiny, root)
    run_graph(tiny, ReplacementModel(tiny, random_transcoders(tiny)), GraphOptions("the cat sat on the mat", head_targets=10),
              root / "graph", progress=False)
    with RunStore(root / "runs.sqlite") as store:
        ids = {name: store.register(root / name).id for name in ("circuit", "patch", "toy-dashboard", "audit", "diff",
                                                                        "graph")}
    sock = listen("127.0.0.1", 0)
    guard = Guard.for_address("127.0.0.1", sock.getsockname()[1], token=TOKEN)
    worker = ModelWorker(lambda: tiny)
    with background_server(create_app(root / "runs.sqlite", guard, worker, "tiny-llama"), sock=sock) as url:
        yield url, ids


def click_node(page, selector: str) -> str:
    """Click, with the mouse, the node with the most edges among those ``selector`` (cytoscape's
    syntax; "" for all) picks, where the canvas draws it; returns its id."""
    name, x, y = page.evaluate("""selector => {
        const cy = window.mechscopeGraph;
        const node = cy.nodes(selector).max(n => n.degree()).ele;
        const box = document.getElementById('graph').getBoundingClientRect();
        const at = node.renderedPosition();
        return [node.id(), box.left + at.x, box.top + at.y];
    }""", selector)
    page.mouse.click(x, y)
    return name


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
    assert page.locator("table.runs tr").count() == 7, page.content()  # a heading row and the six runs
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
    page.wait_for_selector("#graph[data-drawn-edges]")  # (a string predicate would be eval: the policy refuses it)
    total = page.evaluate("window.mechscopeGraph.edges().length")
    assert total > 2
    assert page.locator("#graph").get_attribute("data-drawn-edges") == str(total)
    panel = page.locator("#node-panel")
    assert panel.is_hidden()
    name = click_node(page, "")  # the node with the most edges, where the canvas draws it
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


def _steer(page, strength: str) -> tuple[str, str]:
    page.fill("textarea[name=prompt]", "the cat sat on the")
    page.check("input[name=source][value=contrast]")
    page.fill("input[name=positive]", "a happy bright day")
    page.fill("input[name=negative]", "a sad dark night")
    page.fill("input[name=layer]", "1")
    page.fill("input[name=strength]", strength)
    page.fill("input[name=max_new_tokens]", "12")
    page.click("#steer-form button")
    page.wait_for_selector("#steer-form[data-state=done], #steer-form[data-state=error]")
    assert page.locator("#steer-form").get_attribute("data-state") == "done", page.inner_text("#steer-status")
    return page.inner_text("#unsteered"), page.inner_text("#steered")


def test_playground_strength_zero_is_unsteered_and_a_large_strength_is_not(context):
    watched_page = watched(context)
    page = watched_page.page
    page.goto("/steer")
    unsteered, steered = _steer(page, "0")
    assert unsteered and steered == unsteered
    assert "steering before block 1" in page.inner_text("#steer-status")
    unsteered_again, pushed = _steer(page, "200")
    assert unsteered_again == unsteered and pushed != unsteered
    watched_page.screenshot("steering")
    watched_page.assert_clean()


def test_prompt_view_draws_units_lens_and_attention(context):
    watched_page = watched(context)
    page = watched_page.page
    page.goto("/prompt")
    page.fill("textarea[name=prompt]", "the cat sat on the mat")
    page.fill("input[name=neurons]", "0:3, 1:5")
    page.click("#prompt-form button")
    page.wait_for_selector("#prompt-form[data-state=done], #prompt-form[data-state=error]")
    assert page.locator("#prompt-form").get_attribute("data-state") == "done", page.inner_text("#prompt-status")
    assert page.locator(".unit-row").count() == 2
    n_tokens = int(page.inner_text("#prompt-status").split()[0])
    assert n_tokens > 3 and page.locator(".unit-row").first.locator(".token").count() == n_tokens
    page.wait_for_selector("#lens .main-svg")
    page.wait_for_selector("#attention .main-svg")
    page.select_option("#att-head", "1")
    page.wait_for_selector("#attention[data-head='1']")
    watched_page.screenshot("prompt")
    watched_page.assert_clean()


def test_feature_list_search_page_and_steer_with_this(context, site):
    _, ids = site
    watched_page = watched(context)
    page = watched_page.page
    page.goto(f"/runs/{ids['toy-dashboard']}")
    assert page.locator("#feature-count").inner_text().startswith("6 shown of 6")
    page.fill("input[name=fq]", "zebra")
    page.click("form.inline button")
    assert page.locator("#feature-count").inner_text().startswith("1 shown of 1")
    page.click("text=latent 1")
    assert page.locator("h1").inner_text() == "Latent 1"
    assert "zebra crossings" in page.inner_text(".explanation") and "above chance" in page.inner_text("table.facts")
    page.wait_for_selector("div.figure .main-svg")  # the histogram
    assert page.locator(".ctx").count() > 3 and page.locator(".ctx .token.at").count() == page.locator(".ctx").count()
    assert page.locator("text=cosine").count() >= 1
    watched_page.screenshot("feature")
    page.click("#steer-with")
    assert page.locator("input[name=source][value=feature]").is_checked()
    assert page.locator("input[name=latent]").input_value() == "1"
    page.fill("textarea[name=prompt]", "the cat sat on the")
    page.fill("input[name=max_new_tokens]", "10")
    texts = {}
    for strength in ("0", "400"):
        page.fill("input[name=strength]", strength)
        page.click("#steer-form button")
        page.wait_for_selector("#steer-form[data-state=done], #steer-form[data-state=error]")
        assert page.locator("#steer-form").get_attribute("data-state") == "done", page.inner_text("#steer-status")
        texts[strength] = (page.inner_text("#unsteered"), page.inner_text("#steered"))
        page.wait_for_selector("#steer-form[data-state=done]")
    assert "sae direction" in page.inner_text("#steer-status") and "block 1" in page.inner_text("#steer-status")
    assert texts["0"][0] == texts["0"][1] and texts["400"][1] != texts["400"][0]
    watched_page.assert_clean()


def test_diff_and_audit_reports_render_and_claims_link_to_their_evidence(context, site):
    _, ids = site
    watched_page = watched(context)
    page = watched_page.page
    page.goto(f"/runs/{ids['diff']}")
    page.wait_for_selector(".report div.figure .main-svg")
    assert page.locator(".report div.figure").count() >= 3 and "Weight diff" in page.inner_text(".report")
    watched_page.screenshot("diff")
    page.goto(f"/runs/{ids['audit']}")
    assert "Verdict: hidden behaviour found" in page.inner_text(".report")
    page.click(".report table a[href='#finding-1']")
    assert page.url.endswith("#finding-1") and page.locator("#finding-1").is_visible()
    evidence = page.locator(".report table a[href^='#finding-1-']")
    assert evidence.count() >= 2  # e.g. enriched, corroborated, reproduced: each a link
    for index in range(evidence.count()):
        target = evidence.nth(index).get_attribute("href")
        assert page.locator(target).count() == 1, target  # every claim's link lands on its evidence
    evidence.last.click()
    watched_page.screenshot("audit")
    watched_page.assert_clean()


def test_attribution_graph_page_draws_and_a_node_opens_its_panel(context, site):
    _, ids = site
    watched_page = watched(context)
    page = watched_page.page
    page.goto(f"/runs/{ids['graph']}")
    page.wait_for_selector("#graph[data-drawn-edges]")
    assert "Attribution graph" in page.inner_text("main") and "replacement score" in page.inner_text("main")
    name = click_node(page, "[kind = 'logit']")  # the top row: no neighbour drawn over it
    page.locator("#node-panel").wait_for(state="visible")
    assert page.locator("#node-panel h3").inner_text() == name
    assert "via L" in page.inner_text("#node-panel")  # every logit's edges have per-head attributions
    drawn = int(page.locator("#graph").get_attribute("data-drawn-edges"))
    page.fill("#prune", "1")
    page.locator("#prune").dispatch_event("input")
    assert int(page.locator("#graph").get_attribute("data-drawn-edges")) == 1 < drawn
    watched_page.screenshot("attribution-graph")
    watched_page.assert_clean()
