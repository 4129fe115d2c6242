"""Tasks: structure, alignment, determinism and metrics; accuracies on SmolLM2."""

import pytest
import torch

import mechscope
from mechscope import tasks
from mechscope.tasks import PAD, Task


@pytest.fixture(scope="module")
def tiny_llama():
    return mechscope.load_tiny("llama")


def test_metrics_on_hand_made_logits():
    logits = torch.zeros(2, 3, 10)
    logits[0, -1, 4], logits[0, -1, 7] = 3.0, 1.0
    logits[1, -1, 5], logits[1, -1, 6], logits[1, -1, 2] = 2.0, 4.0, 1.0
    task = Task("t", torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long),
                torch.tensor([[4, PAD], [5, 6]]), torch.tensor([[7], [2]]), {})
    torch.testing.assert_close(task.logit_diff(logits), torch.tensor([2.0, 2.0]))
    assert task.positions["END"].tolist() == [2, 2]
    assert task.accuracy(logits).tolist() == [1.0, 1.0]
    probs = logits[:, -1].softmax(-1)
    torch.testing.assert_close(task.answer_prob(logits), torch.stack([probs[0, 4], probs[1, 5] + probs[1, 6]]))
    torch.testing.assert_close(task.prob_diff(logits), torch.stack([probs[0, 4] - probs[0, 7],
                                                                    probs[1, 5] + probs[1, 6] - probs[1, 2]]))
    torch.testing.assert_close(task.kl_to_clean(logits, logits), torch.zeros(2))
    assert Task.normalised(3.0, clean=5.0, corrupted=1.0) == 0.5


def test_from_pairs_checks_lengths_and_single_token_answers(tiny_llama):
    task = Task.from_pairs(tiny_llama, ["abc", "abd"], ["xyz", "xyw"], ["d", "e"], ["q", "r"])
    assert task.clean_tokens.shape == task.corrupted_tokens.shape == (2, 4)
    assert task.answer_tokens[:, 0].tolist() == [tiny_llama.to_single_token("d"), tiny_llama.to_single_token("e")]
    with pytest.raises(ValueError, match="different token lengths"):
        Task.from_pairs(tiny_llama, ["abc"], ["abcd"], ["d"], ["q"])
    with pytest.raises(ValueError, match="exactly one"):
        Task.from_pairs(tiny_llama, ["abc"], ["xyz"], ["dd"], ["q"])
    forced = Task.from_pairs(tiny_llama, ["abc"], ["xyz"], ["d"], ["q"], prepend_bos=True)
    bare = Task.from_pairs(tiny_llama, ["abc"], ["xyz"], ["d"], ["q"], prepend_bos=False)
    assert forced.clean_tokens[0, 0] == tiny_llama.tokenizer.bos_token_id and bare.clean_tokens.shape[1] == 3
    with pytest.raises(ValueError, match="equally many"):
        Task.from_pairs(tiny_llama, ["abc"], [], ["d"], ["q"])


def test_induction_task_structure(tiny_llama):
    task = tasks.induction(tiny_llama, n=6, seq_len=8, seed=1)
    clean, corrupted = task.clean_tokens, task.corrupted_tokens
    assert clean.shape == corrupted.shape == (6, 16)
    assert torch.equal(clean[:, 9:16], clean[:, 1:8])            # the second copy repeats the first
    assert torch.equal(task.answer_tokens[:, 0], clean[:, 8])     # next is the first copy's last token
    assert (corrupted[:, 1:9] != clean[:, 1:9]).any(1).all()       # the first copy is replaced
    assert torch.equal(corrupted[:, 9:], clean[:, 9:])
    assert torch.equal(tasks.induction(tiny_llama, n=6, seq_len=8, seed=1).clean_tokens, clean)


def test_word_tasks_need_single_token_vocabulary(tiny_llama):
    with pytest.raises(ValueError, match="too few single-token names"):
        tasks.ioi(tiny_llama)


def test_greater_than_on_a_digit_tokenizer_partitions_the_tens_digit(tiny_llama):
    task = tasks.greater_than(tiny_llama, n=8, seed=0)
    digits = {tiny_llama.to_single_token(str(d)): d for d in range(10)}
    for prompt, answers, wrong in zip(task.clean_prompts, task.answer_tokens, task.wrong_tokens):
        start_tens = int(prompt.split("year 17")[1][0])
        answer_digits = {digits[int(t)] for t in answers if t != PAD}
        wrong_digits = {digits[int(t)] for t in wrong if t != PAD}
        assert answer_digits == set(range(start_tens + 1, 10)) and wrong_digits == set(range(start_tens + 1))
    assert all("year 1701 " in p for p in task.corrupted_prompts)


