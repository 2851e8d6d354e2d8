import pytest

from edgekit.errors import UsageError
from edgekit.runtime.aggregate import (
    extract_choice,
    extract_code,
    extract_number,
    extract_yesno,
    get_extractor,
    majority_vote,
)


@pytest.mark.parametrize(
    "text,want",
    [
        ("Answer: 7 (3 red + 4 blue)", "7"),
        ("There are seven blocks.", "7"),
        ("I count twenty-one apples", "21"),
        ("I count 1,200 items.", "1200"),
        ("So the total is 7.0", "7"),
        ("3 + 4 = 7", "7"),
        ("The answer is -2.50 degrees", "-2.5"),
        ("Final answer: **12**", "12"),
        ("\\boxed{9}", "9"),
        ("a dozen eggs", "12"),
        ("no digits here", None),
        ("version v2 of model3", None),
    ],
)
def test_number(text, want):
    assert extract_number(text) == want


@pytest.mark.parametrize(
    "text,want",
    [
        ("The answer is (B).", "B"),
        ("(A) is wrong; I pick (C)", "C"),
        ("Answer: D", "D"),
        ("B) 12/03/2001", "B"),
        ("I think it's option E.", "E"),
        ("I am not sure.", None),
    ],
)
def test_choice(text, want):
    assert extract_choice(text) == want


@pytest.mark.parametrize(
    "text,want",
    [
        ("Yes, because no bird can swim that far", "yes"),
        ("No.", "no"),
        ("Let's think. Birds fly... so the answer is no", "no"),
        ("Answer: yes", "yes"),
        ("It is true", "yes"),
        ("maybe", None),
    ],
)
def test_yesno(text, want):
    assert extract_yesno(text) == want


def test_code_and_regex():
    assert extract_code("Sure:\n```python\ndef f():\n    return 1\n```\nDone") == "def f():\n    return 1"
    assert extract_code("```python\ndef g():\n    pass") == "def g():\n    pass"  # cut by the budget
    ex = get_extractor(r"regex:ID-(\d+)")
    assert ex("ID-4 then ID-17") == "17"
    with pytest.raises(UsageError):
        get_extractor("regex:(")
    assert get_extractor(lambda t: t[:2])("hello") == "he"


def test_majority_vote_ties_and_none():
    assert majority_vote(["7", "7", "3", None, None, None]) == ("7", 2, ["7"])
    assert majority_vote([None, None]) == (None, 0, [])
    winners = {majority_vote(["1", "2"], seed=s)[0] for s in range(40)}
    assert winners == {"1", "2"}  # ties are broken at random, not by position
    assert majority_vote(["1", "2"], seed=5) == majority_vote(["1", "2"], seed=5)
