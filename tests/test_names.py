"""Section 2: the one set of rules for names that become part of object keys."""
import pytest

import tracecraft
from tracecraft import UsageError, check_agent, check_artifact_name, check_memory_key, check_name

BAD_NAMES = ["", ".", "..", "a/b", "/abs", "../x", "..\\x", "a\\b", "x\x00y", "tab\there",
             "new\nline", "del\x7f", " padded", "padded ", "n" * (tracecraft.MAX_NAME + 1),
             "bad\udcffutf8"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused(name):
    with pytest.raises(UsageError):
        check_name("step id", name)


@pytest.mark.parametrize("name", ["design", "step-1", "v1.2", "日本語", "with space", "_private",
                                  "a" * tracecraft.MAX_NAME])
def test_good_names_pass(name):
    assert check_name("step id", name) == name


def test_agents_may_not_start_with_underscore():
    with pytest.raises(UsageError, match="reserved"):
        check_agent("_broadcast")
    with pytest.raises(UsageError):
        check_agent("evil/../_broadcast")
    assert check_agent("designer") == "designer"


@pytest.mark.parametrize("key", ["", ".", "a..b", ".a", "a.", "a./b", "a/b", "a.\x01",
                                 "k" * (tracecraft.MAX_KEY + 1)])
def test_bad_memory_keys(key):
    with pytest.raises(UsageError):
        check_memory_key(key)


def test_memory_key_segments():
    assert check_memory_key("design.status") == "design.status"
    assert check_memory_key("phase1.result.score") == "phase1.result.score"


@pytest.mark.parametrize("name", [".hidden", "../x", "a/b", "..\\x", "/etc/passwd", ""])
def test_bad_artifact_names(name):
    with pytest.raises(UsageError):
        check_artifact_name(name)


@pytest.mark.parametrize("bucket", ["ab", "UPPER", "-lead", "trail-", "a..b", "under_score",
                                    "x" * 64, "ünï"])
def test_bad_buckets(bucket):
    with pytest.raises(UsageError):
        tracecraft.check_bucket(bucket)


def test_duration_parsing():
    assert tracecraft.parse_duration("90") == 90
    assert tracecraft.parse_duration("90s") == 90
    assert tracecraft.parse_duration("10m") == 600
    assert tracecraft.parse_duration("2h") == 7200
    assert tracecraft.parse_duration("0.5") == 0.5
    for bad in ["", "abc", "-1", "10x", "inf", "nan"]:
        with pytest.raises(UsageError):
            tracecraft.parse_duration(bad)


# -- names people read: nothing invisible, nothing that turns the text around (issue 11, #22) -------

SPOOFING = {
    "zero-width space": "alice\u200b", "zero-width joiner": "al\u200dice",
    "right-to-left override": "alice\u202egnp.exe", "left-to-right isolate": "\u2066alice",
    "byte order mark": "\ufeffalice", "C1 next line": "alice\u0085", "C1 CSI": "x\x9b1m",
    "soft hyphen": "al\u00adice", "no-break space": "alice\u00a0bob", "ideographic space": "a\u3000b",
    "line separator": "a\u2028b", "private use": "a\ue000", "unassigned": "a\U000e0fff",
    "noncharacter": "a\ufffe", "lone surrogate": "a\ud800", "hangul filler": "a\u3164b",
    "variation selector": "a\ufe0f", "combining grapheme joiner": "a\u034fb",
    "braille blank": "a\u2800b", "tag character": "a\U000e0041", "decomposed accent": "e\u0301",
}


@pytest.mark.parametrize("what", list(SPOOFING))
def test_names_refuse_invisible_control_and_direction_characters(what):
    for check in (lambda v: check_name("step id", v), check_agent, check_artifact_name,
                  lambda v: check_memory_key("a." + v)):
        with pytest.raises(UsageError) as refused:
            check(SPOOFING[what])
        # the message itself shows the name with the character escaped, never raw
        assert SPOOFING[what] not in str(refused.value)


@pytest.mark.parametrize("name", ["café", "Ünïcödé", "日本語", "Ελληνικά", "שלום", "emoji😀", "a b"])
def test_names_that_show_as_themselves_pass(name):
    assert check_name("step id", name) == name


# -- numbers and JSON values: finite, in range, not nested without end (issue 11, #9 and #19) ------

@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "1e400", "[1e999]",
                                  '{"a": NaN}', "9" * 30, "[" * 2000 + "]" * 2000])
def test_loads_takes_standard_json_only(text):
    with pytest.raises(ValueError):
        tracecraft.loads(text)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), [1, float("-inf")], 2 ** 63,
                                   {"a": {"b": -(2 ** 70)}}, {1: "key not text"}, {"set": {1}},
                                   "bad\udcffutf8", [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]
                                                  ]]]]]]]]]]]]]]]]]]]]] * 1])
def test_values_that_no_json_reader_takes_back_are_refused(value, monkeypatch):
    monkeypatch.setattr(tracecraft, "MAX_DEPTH", 30)
    with pytest.raises(UsageError):
        tracecraft.check_json("memory value", value)


def test_deep_but_allowed_values_pass():
    value = 1
    for _ in range(tracecraft.MAX_DEPTH):
        value = [value]
    assert tracecraft.check_json("v", value) is value
    with pytest.raises(UsageError, match="nested"):
        tracecraft.check_json("v", [value])


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -1, 0, True, "60",
                                 tracecraft.MAX_SECONDS * 2])
def test_durations_are_finite_and_in_range(bad):
    with pytest.raises(UsageError):
        tracecraft.check_number("the lease ttl", bad)


def test_shown_neutralises_terminal_escapes_and_keeps_text():
    assert tracecraft.shown("plain text, café, 日本語 😀") == "plain text, café, 日本語 😀"
    assert tracecraft.shown("a\tb") == "a\tb"
    dangerous = "\x1b]52;c;cm0gLXJm\x07\x1b[2J\r\x08\x9b31m\u202eevil\u2066"
    cleaned = tracecraft.shown(dangerous)
    assert cleaned.isprintable() and "\\x1b" in cleaned and "\\u202e" in cleaned
    assert "\u200d" in tracecraft.shown("👨\u200d👩")   # a joiner inside emoji is kept
