"""Word lists written for mechscope's tasks, and filtering to single tokens of a tokenizer."""

from __future__ import annotations

from collections.abc import Sequence

NAMES = (
    "Mary John Alice Bob Sarah James Emma David Laura Michael Anna Paul Lisa Mark Kate Peter "
    "Susan Tom Helen George Rachel Daniel Julia Robert Grace Henry Sophie Jack Claire Simon "
    "Linda Steven Nancy Brian Amy Kevin Karen Eric Jane Adam Emily Frank Ruth Carl Diana Sam "
    "Rose Victor Alan Martha Oscar Hannah Ryan Olivia Luke Chloe Ben Lucy Max Nina"
).split()
PLACES = "store park school office station beach garden market library restaurant hospital church".split()
OBJECTS = "drink book ring bag gift letter key ball hat pen cake flower apple card bottle".split()
GT_NOUNS = "war expedition project reign drought strike festival trial journey construction campaign".split()
# (country, capital) pairs; only those the model completes correctly are kept in factual recall.
CAPITALS = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
    ("Russia", "Moscow"), ("England", "London"), ("Egypt", "Cairo"), ("Greece", "Athens"),
    ("Austria", "Vienna"), ("Portugal", "Lisbon"), ("Ireland", "Dublin"), ("Poland", "Warsaw"),
    ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"),
    ("Hungary", "Budapest"), ("Thailand", "Bangkok"), ("Kenya", "Nairobi"), ("Peru", "Lima"),
    ("Cuba", "Havana"), ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Syria", "Damascus"),
    ("Lebanon", "Beirut"), ("China", "Beijing"), ("Korea", "Seoul"), ("Argentina", "Buenos"),
    ("Chile", "Santiago"), ("Belgium", "Brussels"), ("Netherlands", "Amsterdam"), ("Turkey", "Ankara"),
    ("India", "Delhi"), ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Mexico", "Mexico"),
    ("Ukraine", "Kyiv"), ("Romania", "Bucharest"), ("Scotland", "Edinburgh"), ("Wales", "Cardiff"),
    ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"), ("Philippines", "Manila"), ("Nigeria", "Abuja"),
)


def single_token_words(tokenizer, words: Sequence[str], prefix: str = " ") -> list[str]:
    """The words that are exactly one token when preceded by ``prefix`` (as mid-sentence)."""
    return [w for w in words if len(tokenizer(prefix + w, add_special_tokens=False)["input_ids"]) == 1]
