"""The behaviour datasets: the committed JSON equals a rebuild from the templates, splits are
disjoint and of the promised sizes, and CAA answers are balanced between A and B."""

import json

import pytest

from mechscope import datasets
from mechscope.datasets.build import DATA, build_all


def test_committed_files_equal_a_rebuild():
    for name, content in build_all().items():
        assert json.loads((DATA / f"{name}.json").read_text(encoding="utf-8")) == content, name


@pytest.mark.parametrize("name", list(datasets.DATASETS))
def test_splits_are_disjoint_and_about_four_to_one(name):
    train, test = datasets.load(name, "train"), datasets.load(name, "test")
    as_keys = [json.dumps(item, sort_keys=True) for item in train + test]
    assert len(set(as_keys)) == len(as_keys)  # no item twice, within or across splits
    assert 0.15 < len(test) / (len(train) + len(test)) < 0.25


def test_sizes_and_contents():
    assert len(datasets.load("harmful")) + len(datasets.load("harmful", "test")) >= 250
    assert len(datasets.load("harmless")) + len(datasets.load("harmless", "test")) >= 250
    facts = datasets.load("facts") + datasets.load("facts", "test")
    assert {fact["kind"] for fact in facts} == {"capital", "comparison", "arithmetic"}
    assert abs(sum(fact["label"] for fact in facts) - len(facts) / 2) == 0  # true and false paired
    for pair in datasets.load("sentiment"):
        assert pair["positive"] != pair["negative"]
        assert len(pair["positive"].split()) == len(pair["negative"].split())  # only the adjective differs
    for name in ("caa-refusal", "caa-sycophancy"):
        items = datasets.load(name) + datasets.load(name, "test")
        letters = [item["answer_matching_behavior"] for item in items]
        assert set(letters) == {"(A)", "(B)"} and 0.3 < letters.count("(A)") / len(letters) < 0.7
        assert all(item["answer_not_matching_behavior"] != item["answer_matching_behavior"] for item in items)


def test_bad_names_list_the_choices():
    with pytest.raises(ValueError, match="available: harmful, harmless"):
        datasets.load("harmfull")
    with pytest.raises(ValueError, match="split must be one of"):
        datasets.load("harmful", "validation")
