"""The LLM scorers and explainers on known answers: a rule-reading judge (tests/unit/autointerp_judge.py)
makes the true explanation score perfectly and a narrower one less, with and without logprobs; the
in-process backend agrees with a plain forward; the llm explainer's prompt holds the contrast."""

import math

import pytest
import torch

from mechscope.autointerp import prompts
from mechscope.autointerp.backends import ChatRequest, LocalBackend
from mechscope.autointerp.explain.llm import explain_llm, llm_requests
from mechscope.autointerp.records import RecordsConfig, unit_records
from mechscope.autointerp.score.intervention import intervention_score
from mechscope.autointerp.score.judge import detection_score, fuzzing_score, intruder_score
from mechscope.autointerp.score.simulation import simulation_score
from mechscope.errors import MechscopeError
from mechscope.models.tiny import load_tiny

from .autointerp_judge import RuleJudge

pytestmark = pytest.mark.usefixtures("one_thread")
WORDS = [" cat", " dog", " sat", " ran", " the", " mat", " big", " red"]
TRUE, NARROW, WRONG = '"cat", "dog"', '"cat"', '"sat"'


def _windows(n=40, length=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    weights = torch.tensor([0.08, 0.08] + [0.84 / 6] * 6)
    windows = [[WORDS[i] for i in torch.multinomial(weights, length, True, generator=generator)] for _ in range(n)]
    activations = [torch.tensor([float(t in (" cat", " dog")) for t in w]) for w in windows]
    return windows, activations


def test_render_marks_runs_and_keeps_one_line():
    assert prompts.render([" a", " b", " c", "\n", "d"], [False, True, True, False, True]) == " a<< b c>>\\n<<d>>"


@pytest.mark.parametrize("with_logprobs", [True, False])
def test_detection_and_fuzzing_score_the_true_rule_perfectly_and_a_narrower_one_less(with_logprobs):
    windows, activations = _windows()
    judge = RuleJudge(with_logprobs=with_logprobs)
    for scorer in (detection_score, fuzzing_score):
        true = scorer(TRUE, windows, activations, judge, n_boot=200)
        narrow = scorer(NARROW, windows, activations, judge, n_boot=200)
        assert true.value == 1.0 and true.above_chance, scorer.__name__
        assert narrow.value < 0.9, (scorer.__name__, narrow.value)
        assert true.metric == ("auroc" if with_logprobs else "balanced accuracy")
        # Without logprobs the fallback is said, never silent.
        assert ("no logprobs" in true.note) == (not with_logprobs)


def test_detection_needs_both_kinds_of_window():
    windows, activations = _windows()
    firing = [(w, a) for w, a in zip(windows, activations) if a.any()]
    with pytest.raises(MechscopeError, match="all positive or all negative"):
        detection_score(TRUE, [w for w, _ in firing], [a for _, a in firing], RuleJudge(), n_boot=10)


def test_simulation_correlates_perfectly_for_the_true_rule_and_not_for_a_wrong_one():
    windows, activations = _windows()
    judge = RuleJudge()
    true = simulation_score(TRUE, windows, activations, judge, n_boot=200)
    narrow = simulation_score(NARROW, windows, activations, judge, n_boot=200)
    wrong = simulation_score(WRONG, windows, activations, judge, n_boot=200)
    # The judge puts 0.9 on its digit and 0.1 on the other: expected values 9 and 1, a linear map.
    assert true.value == pytest.approx(1.0) and true.metric == "correlation"
    assert 0.3 < narrow.value < 0.9
    assert wrong.value < 0.1 and not wrong.above_chance


def test_intruder_finds_the_silent_window():
    windows, _ = _windows()
    # A one-word unit: every member marks " cat", the intruder's random marks never do.
    activations = [torch.tensor([float(t == " cat") for t in w]) for w in windows]
    with_logprobs = intruder_score(windows, activations, RuleJudge(), n_trials=12, k=4, n_boot=200)
    assert with_logprobs.value == pytest.approx(0.9) and with_logprobs.chance == 0.25
    labels = intruder_score(windows, activations, RuleJudge(with_logprobs=False), n_trials=12, k=4, n_boot=200)
    assert labels.value == 1.0 and "no logprobs" in labels.note


class FirstPositionJudge(RuleJudge):
    """Ignores the windows: always names text 1, with 0.9 on it."""

    def _judge(self, content):
        return self._reply("1", ["1", "2", "3", "4"])


def test_a_judge_that_always_names_one_position_scores_chance_at_intruder():
    windows, _ = _windows()
    activations = [torch.tensor([float(t == " cat") for t in w]) for w in windows]
    for seed in range(5):  # whatever the draw, the intruder sits in every slot equally often
        biased = intruder_score(windows, activations, FirstPositionJudge(), n_trials=8, k=4, n_boot=50, seed=seed)
        assert biased.value == pytest.approx(0.25) and not biased.above_chance


def test_intervention_prefers_the_steered_continuation_the_explanation_describes():
    pairs = [(" the big mat", " the cat cat"), (" red red", " dog ran dog"), (" sat the", " cat the")]
    right = intervention_score(TRUE, pairs, RuleJudge(), n_boot=200)
    assert right.value == pytest.approx(0.9)
    wrong = intervention_score(WRONG, [(" sat sat", " cat")], RuleJudge(), n_boot=50)
    assert wrong.value == pytest.approx(0.1)
    with pytest.raises(MechscopeError, match="changed none"):
        intervention_score(TRUE, [("a", "a")], RuleJudge())


@pytest.fixture(scope="module")
def tiny_chat():
    return load_tiny("llama", chat=True)


def test_local_backend_logprobs_equal_a_plain_forward_and_batching_changes_nothing(tiny_chat):
    backend = LocalBackend(tiny_chat, batch_size=3)
    requests = [ChatRequest.user("x" * (3 + 5 * i), max_tokens=2 + i % 2, top_logprobs=4) for i in range(5)]
    batched = backend.chat(requests)
    alone = LocalBackend(tiny_chat, batch_size=1).chat(requests)
    for request, answer, single in zip(requests, batched, alone):
        assert answer.text == single.text and answer.completion_tokens == request.max_tokens
        text = tiny_chat.tokenizer.apply_chat_template([{"role": "user", "content": request.messages[0].content}],
                                                       tokenize=False, add_generation_prompt=True)
        ids = tiny_chat.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logprobs = torch.log_softmax(tiny_chat.hf_model(input_ids=ids).logits[0, -1].float(), -1)
        first = answer.tokens[0]
        assert first.logprob == pytest.approx(float(logprobs.max()), abs=1e-4)  # greedy: the most likely
        # Alternatives that decode to one text share an entry, their probabilities added.
        chosen = tiny_chat.tokenizer.decode([int(logprobs.argmax())])
        same_text = [i for i in logprobs.topk(4).indices.tolist() if tiny_chat.tokenizer.decode([i]) == chosen]
        assert first.top[chosen] == pytest.approx(float(logprobs[same_text].logsumexp(0)), abs=1e-4)
        for x, y in zip(answer.tokens, single.tokens):
            assert x.logprob == pytest.approx(y.logprob, abs=1e-4)
    assert backend.usage.requests == 5 and backend.usage.completion_tokens == sum(r.max_tokens for r in requests)


def test_the_prefix_cache_answers_as_a_plain_batch_does(tiny_chat):
    """Judge requests share the instructions and the explanation and differ in the window (of
    different lengths, so the padding sits between prefix and window); greedy and sampled."""
    from mechscope.autointerp.backends.local import MIN_SHARED_PREFIX, shared_prefix

    windows = ["a b c", "the cat sat on the mat again and again", "x", "1 2 3 4 5 6"]
    requests = [prompts.detection_request("the word cat and its plural", w) for w in windows]
    requests += [ChatRequest.user(f"{'instructions ' * 8} {w}", max_tokens=4, temperature=1.0) for w in windows]
    cached = LocalBackend(tiny_chat, batch_size=4)
    prompt_ids = [cached._prompt_ids(r) for r in requests[:4]]
    assert shared_prefix(prompt_ids) >= MIN_SHARED_PREFIX  # the cache is really used
    plain = LocalBackend(tiny_chat, batch_size=4, prefix_cache=False)
    for x, y in zip(cached.chat(requests), plain.chat(requests)):
        assert x.text == y.text and x.prompt_tokens == y.prompt_tokens
        for a, b in zip(x.tokens, y.tokens, strict=True):
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
            assert a.top.keys() == b.top.keys()


def test_shared_prefix_leaves_every_prompt_a_token_of_its_own():
    from mechscope.autointerp.backends.local import shared_prefix

    assert shared_prefix([[1, 2, 3], [1, 2, 4, 5]]) == 2
    assert shared_prefix([[1, 2, 3], [1, 2, 3, 5]]) == 2  # one prompt is the other's prefix
    assert shared_prefix([[7], [7]]) == 0


def test_local_backend_echo_equals_a_plain_forward(tiny_chat):
    backend = LocalBackend(tiny_chat)
    echoed = backend.echo(["abc", "hello world"], top_logprobs=3)
    ids = tiny_chat.tokenizer("hello world", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logprobs = torch.log_softmax(tiny_chat.hf_model(input_ids=ids).logits[0].float(), -1)
    row = echoed[1]
    assert len(row) == ids.shape[1] and row[0].logprob is None
    for i in range(1, ids.shape[1]):
        assert row[i].logprob == pytest.approx(float(logprobs[i - 1, ids[0, i]]), abs=1e-4)
        top = logprobs[i - 1].topk(3)
        assert sum(map(math.exp, row[i].top.values())) == pytest.approx(float(top.values.exp().sum()), abs=1e-5)


def test_a_model_without_a_chat_template_is_refused():
    with pytest.raises(MechscopeError, match="no chat template"):
        LocalBackend(load_tiny("llama"))


def _records():
    generator = torch.Generator().manual_seed(0)
    contexts = torch.randint(0, 100, (8, 33), generator=generator)
    activations = torch.zeros(8, 33)
    activations[contexts == 7] = 1.0
    activations[contexts == 9] = 0.5
    config = RecordsConfig(window=8, n_top=3, n_quantiles=2, per_quantile=2, n_random=3, n_same_tokens=2)
    return unit_records("u", contexts, activations, config)


def test_the_llm_explainer_shows_activating_windows_marked_and_silent_ones_plain(tiny_chat):
    records = _records()
    [(request, shown)] = llm_requests([records], tiny_chat.tokenizer, n_activating=5, n_silent=3)
    content = request.messages[-1].content
    n_firing = int((records.activations > 0).any(-1).sum())
    assert shown == (min(5, n_firing), 3)
    activating, silent = content.split("It stays silent")
    assert activating.count(prompts.OPEN) >= shown[0] and prompts.OPEN not in silent
    [explanation] = explain_llm([records], tiny_chat.tokenizer, LocalBackend(tiny_chat))
    assert explanation.text and explanation.reply


def test_explanation_replies_are_read_from_the_explanation_line():
    assert prompts.parse_explanation_reply("Sure.\nExplanation: \"the word cat\".") == "the word cat"
    assert prompts.parse_explanation_reply("digits in dates\nmore") == "digits in dates"
    assert math.isclose(len(prompts.parse_explanation_reply("   ")), 0)


def test_a_choice_missing_from_the_alternatives_gets_the_least_listed_probability_not_zero():
    from mechscope.autointerp.backends import Completion, TokenLogprobs
    from mechscope.autointerp.score.judge import YES_NO

    top = {"The": math.log(0.5), " 1": math.log(0.2), "Yes": math.log(0.1), "Maybe": math.log(0.05)}
    answer = Completion("The", (TokenLogprobs("The", math.log(0.5), top),))
    # "1" and "Yes" count for "1"; "0" is absent, so it gets at most the least listed, 0.05.
    read = answer.first_token_probabilities(("1", "0"), YES_NO)
    assert read["1"] == pytest.approx(0.3 / 0.35) and read["0"] == pytest.approx(0.05 / 0.35)
    assert answer.first_token_probabilities(("A", "B")) is None  # no choice listed: read the text instead
    assert Completion("1", None).first_token_probabilities(("1", "0")) is None
