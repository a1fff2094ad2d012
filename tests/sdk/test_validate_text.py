"""``require_text`` refuses exactly the strings with a C0 control character."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmsnap_sdk._errors import InvalidArgument
from vmsnap_sdk._validate import require_text


@given(st.text(max_size=40))
def test_refused_exactly_when_a_control_character_is_in_it(value: str) -> None:
    control = any(ord(c) < 32 for c in value)
    if control:
        with pytest.raises(InvalidArgument, match="control characters"):
            require_text("name", value, required=False)
    else:
        assert require_text("name", value, required=False) == value


@pytest.mark.parametrize("value", ["a\tb", "line\n", "\x00", "x\x1f", "\r"])
def test_each_control_character_is_named_in_the_error(value: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        require_text("description", value)
    assert "description" in str(caught.value) and "control characters" in str(caught.value)
