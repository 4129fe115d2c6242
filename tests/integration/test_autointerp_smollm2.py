"""The planted-unit benchmark on SmolLM2's tokenizer: every unit is alive, its true explanation is
the only one a rule-reading scorer cannot fault, and the ``tokens`` explainer recovers the word
sets and "after" units exactly (run in CI)."""

import pytest
import torch

from mechscope.autointerp import (
    explain_tokens,
    lexicon_score,
    parse_explanation,
    planted_units,
    planted_windows,
)
from mechscope.autointerp.lexicon import word_form

pytestmark = pytest.mark.smollm2


def test_every_planted_unit_fires_and_only_its_true_rule_scores_perfectly(smollm2):
    windows = planted_windows(smollm2.tokenizer, 64, 64)
    assert len(windows) == 64 and all(len(w) == 64 for w in windows)
    for unit in planted_units():
        activations = [unit.activations(w) for w in windows]
        fired = int(sum(a.sum() for a in activations))
        # Alive and not always on: each unit fires on some tokens of 4,096 (12 to 363 measured).
        assert 5 <= fired <= 4096 - 5, (unit.name, fired)
        true = lexicon_score(unit.true.rule, windows, activations, n_boot=200)
        assert true.value == 1.0 and true.above_chance, unit.name
        for false in unit.false:
            # Strictly below: a false rule that never disagrees with the unit on these windows
            # (a dropped word that never occurs) would make the unit useless as a known answer.
            score = lexicon_score(false.rule, windows, activations, n_boot=200)
            assert score.value < true.value, (unit.name, false.rule, score.value)


def test_the_tokens_explainer_recovers_every_word_set_and_after_unit(smollm2):
    windows = planted_windows(smollm2.tokenizer, 64, 64)
    for unit in planted_units():
        activations = [unit.activations(w) for w in windows]
        found = explain_tokens(windows, activations)
        # Its explanation is a rule the lexicon scorer reads back, as good as its F1 says.
        assert lexicon_score(found.text, windows, activations, n_boot=50).value > 0.5
        if unit.kind in ("tokens", "after"):
            # The known answer: the unit's own words (those that occur here), in its own reading.
            truth = parse_explanation(unit.true.rule)
            seen = {word_form(t) for win in windows for t in win}
            occurring = {w for w in truth.patterns if word_form(w) in seen}
            assert (found.reading, set(found.words)) == (unit.kind, occurring), unit.name
            assert found.precision == 1.0 and found.recall == 1.0


def test_smollm2_judges_with_logprobs_and_serve_llm_gives_the_same_answers(smollm2):
    """The bundled judge answers the detection question with "1"/"0" among its first token's
    alternatives (so detection is an AUROC, not parsed labels), the llm explainer writes an
    explanation, and the same request through mechscope serve-llm gets the in-process answer."""
    import threading
    import time

    import uvicorn

    from mechscope.autointerp import detection_score, explain_llm
    from mechscope.autointerp.backends import LocalBackend, OpenAIBackend
    from mechscope.autointerp.backends.server import create_app, listen
    from mechscope.autointerp.planted import planted_contexts
    from mechscope.autointerp.records import RecordsConfig, UnitRecords

    ids = planted_contexts(smollm2.tokenizer, 24, 16, seed=3)
    windows = [[smollm2.tokenizer.decode([int(i)]) for i in row] for row in ids]
    unit = next(u for u in planted_units() if u.name == "digits")
    activations = [unit.activations(w) for w in windows]
    local = LocalBackend(smollm2, batch_size=12)
    score = detection_score(unit.true.words, windows, activations, local, n_boot=200)
    assert score.metric == "auroc" and score.note == ""  # every answer put mass on "1" or "0"
    records = UnitRecords("digits", ids, torch.stack(activations), ["top" if a.any() else "random" for a in activations],
                          0.0, RecordsConfig())
    [explanation] = explain_llm([records], smollm2.tokenizer, local)
    assert explanation.text and explanation.shown[0] >= 1

    app = create_app(local, "smollm2", batch_size=4)
    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        client = OpenAIBackend(f"http://127.0.0.1:{sock.getsockname()[1]}/v1", "smollm2", api_key_env=None,
                               timeout=60)
        from mechscope.autointerp.prompts import detection_request

        request = detection_request(unit.true.words, "".join(windows[0]))
        [remote] = client.chat([request])
        [direct] = local.chat([request])
        assert remote.text == direct.text
        assert remote.tokens[0].logprob == pytest.approx(direct.tokens[0].logprob, abs=1e-4)
    finally:
        server.should_exit = True


def test_head_units_on_smollm2_read_each_heads_own_write(smollm2):
    """SmolLM2 shares key/value heads (9 query heads, 3 KV heads): each unit is still one query
    head's write, the output projection of its z alone, projected on its direction."""
    from mechscope.autointerp.units import head_units

    tokens = smollm2.to_tokens("The cat sat on the mat because it was warm.")
    _, cache = smollm2.run_with_cache(tokens, names=["blocks.5.attn.hook_z"])
    z = cache["blocks.5.attn.hook_z"]  # [1, pos, 9, 64]
    units = head_units(smollm2, 5, [0, 4, 8])
    values = units.activation_fn(z)
    o_proj = smollm2.hf_model.model.layers[5].self_attn.o_proj
    for i, head in enumerate([0, 4, 8]):
        alone = torch.zeros_like(z)
        alone[..., head, :] = z[..., head, :]
        with torch.no_grad():
            write = o_proj(alone.flatten(-2)).float()
        assert torch.allclose(values[..., i], write @ units.direction(i).vector, atol=1e-4)
