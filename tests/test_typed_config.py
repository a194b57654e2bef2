"""The typed config builder's scalar checks: exact kinds for bool, int and str; numbers for float."""

from __future__ import annotations

import pytest

from osediff.typed_config import ConfigError, coerce


@pytest.mark.parametrize(("hint", "value", "message"), [
    (int, True, "k: expected an integer, got True"),  # bool is an int to Python, not to a config
    (int, 2.0, "k: expected an integer, got 2.0"),
    (bool, 1, "k: expected true or false, got 1"),
    (str, 5, "k: expected a string, got 5"),
    (float, "fast", "k: expected a number, got 'fast'"),
    (float, False, "k: expected a number, got False"),
])
def test_wrong_kinds_are_refused_naming_the_key(hint, value, message):
    with pytest.raises(ConfigError) as err:
        coerce(hint, value, "k")
    assert str(err.value) == message


@pytest.mark.parametrize(("hint", "value", "expected"), [
    (int, 3, 3), (bool, False, False), (str, "x", "x"), (float, "8e-1", 0.8), (float, 2, 2.0),
    (int | None, None, None),
])
def test_right_kinds_pass_through(hint, value, expected):
    result = coerce(hint, value, "k")
    assert result == expected and type(result) is type(expected)
