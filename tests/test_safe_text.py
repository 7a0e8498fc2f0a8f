"""`deployments.safe_text`: any bytes or text in, text out that PostgreSQL takes, with every
printable character kept in order, bounded when asked (examples, then properties)."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from deployments.safe_text import ANSI_SEQUENCE, plain_text, safe_text, safe_values

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("boom \x00 end", "boom \\x00 end"),
        ("a\tb\nc", "a\tb\nc"),  # multi-line text keeps tabs and newlines
        ("progress\r 45%\r", "progress\\r 45%\\r"),
        ("bell\x07 del\x7f c1\x85 \x9b", "bell\\x07 del\\x7f c1\\x85 \\x9b"),
        ("\x1b[31mrouge\x1b[0m \x1b[1;32m✔\x1b[0m fait", "rouge ✔ fait"),  # colour codes removed
        ("\x1b]0;titre\x07\x1b]8;;https://x.fr\x1b\\lien\x1b]8;;\x1b\\", "lien"),  # OSC: title, link
        ("\x1b[2K\x1b[1Gclear \x1bM", "clear "),  # erase, cursor, reverse index
        ("lone \x1b escape", "lone \\x1b escape"),  # an ESC that starts no sequence is escaped
        ("Député·e — « Assemblée » : élu", "Député·e — « Assemblée » : élu"),
        (
            "nbsp\u00a0; 👨\u200d👩\u200d👧 🎉 中文 한국어 ﷺ",
            "nbsp\u00a0; 👨\u200d👩\u200d👧 🎉 中文 한국어 ﷺ",
        ),
        ("admin\u202egnp.exe \u2066x\u2069", "admin\\u202egnp.exe \\u2066x\\u2069"),  # bidi overrides
        ("one\u2028two\u2029", "one\\u2028two\\u2029"),  # line separators forge no line
        ("lone \ud800 \udbff", "lone \\ud800 \\udbff"),  # surrogates cannot be encoded
        ("\udcff", "\\xff"),  # the surrogate Python's surrogateescape makes of the byte 0xff
        (b"caf\xc3\xa9 \xff\xfe \xc3", "café \\xff\\xfe \\xc3"),  # bytes that are not UTF-8
        (b"\x00\x1b[33mwarn\x1b[0m", "\\x00warn"),
        (b"\x1b\xff[31m", "\\x1b\\xff[31m"),  # a bad byte after ESC starts no sequence
    ],
)
def test_examples(raw: str | bytes, expected: str) -> None:
    assert safe_text(raw) == expected


def test_one_line_text_escapes_newlines_and_tabs() -> None:
    assert safe_text("a\tb\nc\r\n", multiline=False) == "a\\tb\\nc\\r\\n"


def test_a_limit_cuts_with_a_marker_and_never_inside_an_escape() -> None:
    assert safe_text("x" * 100, 40) == "x" * 23 + "… [77 chars cut]"
    cut = safe_text("ab\x00" * 100, 40)
    assert len(cut) <= 40 and cut.startswith("ab\\x00ab\\x00") and cut.endswith(" chars cut]")
    assert cut.split("…")[0].endswith(("ab", "\\x00", "a")) and "\\x0…" not in cut
    assert safe_text("short", 40) == "short"
    assert len(safe_text("x" * 100, 5)) <= 5  # a bound below the marker is still a bound


def test_safe_text_is_left_as_it_is() -> None:
    text = "PROGRESS 40/120 — député·e «ok» 🎉\tdone\n"
    assert safe_text(text) is text  # nothing to do: the same object, no copy


def test_plain_text_is_ascii_only() -> None:
    assert plain_text("élu 🎉 \x00 中") == "\\xe9lu \\U0001f389 \\x00 \\u4e2d"
    assert plain_text(b"\xff ok") == "\\xff ok"
    cut = plain_text("é" * 100, 30)
    assert len(cut) <= 30 and cut.isascii() and cut.endswith(" chars cut]")


def test_values_of_a_result_are_made_safe_keys_too() -> None:
    result = {"flowRunId": "f", "steps": [{"error": "boom \x00", "exitCode": 1, "k\x1b[1m": None}], "n": 2.5}
    assert safe_values(result) == {
        "flowRunId": "f",
        "steps": [{"error": "boom \\x00", "exitCode": 1, "k": None}],
        "n": 2.5,
    }


# --- properties --------------------------------------------------------------------------------
# Text of every category (surrogates included), with control characters, escape sequences and
# their pieces made frequent.
HOSTILE = st.sampled_from(
    [
        "\x00",
        "\x1b",
        "\x1b[",
        "\x1b[31m",
        "\x1b[0m",
        "\x1b]0;t\x07",
        "\r",
        "\n",
        "\t",
        "\x85",
        "\u202e",
        "\u2028",
    ]
)
TEXT = st.lists(st.one_of(st.characters(), HOSTILE), max_size=80).map("".join)


def storable(out: str) -> bool:
    """What PostgreSQL `text` takes: valid UTF-8 without NUL."""
    out.encode("utf-8")  # raises on a lone surrogate
    return "\x00" not in out


def printable_subsequence(text: str, out: str) -> bool:
    """The printable characters of `text` appear in `out`, in the same order."""
    rest = iter(out)
    return all(any(ch == o for o in rest) for ch in text if ch.isprintable())


@given(st.binary(max_size=300))
@example(b"\xed\xa0\x80 \xc3\x28 \xf4\x90\x80\x80 \x00")  # an encoded surrogate, bad continuations
def test_any_bytes_give_storable_text(raw: bytes) -> None:
    out = safe_text(raw)
    assert storable(out) and "\x1b" not in out
    assert printable_subsequence(ANSI_SEQUENCE.sub("", raw.decode("utf-8", "ignore")), out)


@given(TEXT)
def test_any_text_gives_storable_text_with_its_printable_characters_in_order(text: str) -> None:
    out = safe_text(text)
    assert storable(out) and "\x1b" not in out
    assert printable_subsequence(ANSI_SEQUENCE.sub("", text), out)
    assert safe_text(out) == out  # idempotent: every boundary may apply it again


@given(st.text(st.characters(exclude_characters="\x1b"), max_size=200))
def test_without_escape_sequences_every_printable_character_is_kept(text: str) -> None:
    assert printable_subsequence(text, safe_text(text))
    assert printable_subsequence(text, safe_text(text, multiline=False))


@given(st.one_of(TEXT, st.binary(max_size=300)), st.integers(min_value=0, max_value=120), st.booleans())
@settings(max_examples=300)
def test_a_limit_bounds_the_text_and_keeps_its_head(value: str | bytes, limit: int, multiline: bool) -> None:
    out = safe_text(value, limit, multiline=multiline)
    full = safe_text(value, multiline=multiline)
    assert storable(out) and len(out) <= limit
    if out != full:  # cut: what is shown is the head of the whole safe text, then the marker
        head, _, marker = out.rpartition("… [")
        # (a limit below the marker's length gets the marker's head alone)
        assert full.startswith(head) and marker.endswith(" chars cut]") or limit < len("… [999 chars cut]")
    if not multiline:
        assert "\n" not in out and "\t" not in out


@given(
    st.one_of(TEXT, st.binary(max_size=300)), st.one_of(st.none(), st.integers(min_value=0, max_value=120))
)
def test_plain_text_is_storable_ascii_in_any_encoding(value: str | bytes, limit: int | None) -> None:
    out = plain_text(value, limit)
    assert out.isascii() and storable(out) and (limit is None or len(out) <= limit)
    assert all(ch.isprintable() or ch in "\n\t" for ch in out)
