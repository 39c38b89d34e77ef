"""Markdown to SMS plain text, and splitting long replies into parts."""

import pytest

from gateway.agent.text import SMS_MAX_CHARS, sms_length, split_sms, to_plain_text


@pytest.mark.parametrize(
    ("markdown", "plain"),
    [
        ("Hello **there**, _you_!", "Hello there, you!"),
        ("# Opening hours\n\nWe open at 9.", "Opening hours\n\nWe open at 9."),
        ("See [our site](https://example.com/a).", "See our site (https://example.com/a)."),
        ("Go to <https://example.com>", "Go to https://example.com"),
        ("[https://x.org](https://x.org)", "https://x.org"),
        ("Run `pip install x` now", "Run pip install x now"),
        ("```python\nprint('hi')\n```", "print('hi')"),
        ("Pick:\n\n* one\n* two\n+ three", "Pick:\n\n- one\n- two\n\n- three"),
        ("Steps:\n\n1. wash\n2. rinse", "Steps:\n\n1. wash\n2. rinse"),
        ("- a\n  - nested\n- b", "- a\n  - nested\n- b"),
        ("> quoted **text**", "quoted text"),
        ("before\n\n---\n\nafter", "before\n\nafter"),
        ("~~old~~ new", "old new"),
        ("line one\nline two", "line one\nline two"),
        ("| a | b |\n|---|---|\n| 1 | 2 |", "a | b\n1 | 2"),
        ("3 * 4 = 12 and 5 < 6", "3 * 4 = 12 and 5 < 6"),
        ("Price: 5 \\* 2 &amp; tax", "Price: 5 * 2 & tax"),
        ("emoji 😀 stays", "emoji 😀 stays"),
        ("", ""),
        ("   \n\n  ", ""),
    ],
)
def test_to_plain_text(markdown, plain):
    assert to_plain_text(markdown) == plain


def test_plain_text_passes_through_unchanged():
    text = "Hi Ana! Your table for 4 is booked at 7pm. Anything else?"
    assert to_plain_text(text) == text


def test_short_text_is_one_part():
    assert split_sms("hello") == ["hello"]


def test_empty_text_has_no_parts():
    assert split_sms("") == []
    assert split_sms("  \n ") == []


def test_split_at_word_boundaries_in_order():
    words = [f"word{i}" for i in range(1000)]
    text = " ".join(words)
    parts = split_sms(text, limit=160)
    assert len(parts) > 1
    assert all(0 < len(p) <= 160 for p in parts)
    assert " ".join(parts).split() == words  # nothing lost, nothing reordered, no word cut


def test_long_word_is_hard_split():
    parts = split_sms("x" * 25 + " tail", limit=10)
    assert parts == ["x" * 10, "x" * 10, "x" * 5 + " tail"]


def test_prefers_paragraph_breaks():
    first = "a" * 900
    second = "b " * 600
    parts = split_sms(first + "\n\n" + second)
    assert parts[0] == first
    assert all(sms_length(p) <= SMS_MAX_CHARS for p in parts)


def test_no_empty_parts_with_runs_of_whitespace():
    text = ("word " + " " * 30) * 50
    parts = split_sms(text, limit=20)
    assert parts and all(p.strip() == p and p for p in parts)


def test_limit_counts_emoji_as_twilio_does():
    parts = split_sms("😀" * 1000)
    assert len(parts) == 2
    assert all(sms_length(p) <= SMS_MAX_CHARS for p in parts)
    assert "".join(parts) == "😀" * 1000


def test_exactly_the_limit_is_one_part():
    assert split_sms("y" * SMS_MAX_CHARS) == ["y" * SMS_MAX_CHARS]
    assert len(split_sms("y" * (SMS_MAX_CHARS + 1))) == 2


@pytest.mark.timeout(30)
def test_split_is_linear_in_the_texts_length():
    """A 20 MB text is split in one pass (the old split was quadratic: such a job ran for a minute)."""
    parts = split_sms("word " * 4_000_000)
    assert len(parts) == 12_500
    assert all(sms_length(p) <= SMS_MAX_CHARS for p in parts)


def test_max_parts_bounds_a_reply_and_marks_the_cut():
    """With max_parts, a long text becomes that many parts, the last ending in an ellipsis."""
    parts = split_sms("word " * 10_000, max_parts=5)
    assert len(parts) == 5
    assert parts[-1].endswith("…")
    assert all(sms_length(p) <= SMS_MAX_CHARS for p in parts)
    assert split_sms("short", max_parts=1) == ["short"]
