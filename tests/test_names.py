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
