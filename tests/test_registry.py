"""The one registry shape for everything chosen by name: registration, lookup, refusals naming file and field."""

from __future__ import annotations

import pytest

from dcsim.errors import UserError
from dcsim.registry import Registry


def test_a_class_registers_by_name_and_is_found_again():
    reg: Registry[object] = Registry("widget")

    @reg.register("b")
    class B:
        pass

    @reg.register("a")
    class A:
        pass

    assert reg.get("a", "s.yaml", "widget.name") is A and reg["b"] is B
    assert "a" in reg and "c" not in reg and len(reg) == 2
    assert reg.names() == ["a", "b"] and sorted(reg) == ["a", "b"] and dict(reg.items()) == {"a": A, "b": B}


def test_an_unknown_name_is_refused_naming_file_field_and_choices():
    reg: Registry[object] = Registry("widget")
    reg.register("only")(type("Only", (), {}))
    with pytest.raises(UserError) as e:
        reg.get("nope", "s.yaml", "fleet[0].widget")
    msg = str(e.value)
    assert "s.yaml" in msg and "fleet[0].widget" in msg and "unknown widget 'nope'" in msg and "only" in msg
    with pytest.raises(UserError):
        reg.get(3, "s.yaml", "fleet[0].widget")  # not a string


def test_two_classes_under_one_name_are_a_programming_error():
    reg: Registry[object] = Registry("widget")
    reg.register("x")(type("X1", (), {}))
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("x")(type("X2", (), {}))
