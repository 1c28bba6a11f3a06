"""The one registry shape for everything chosen by name: registration, lookup, refusals naming file and field."""

from __future__ import annotations

import pytest

from dcsim.errors import UserError
from dcsim.registry import Registry, absolute_ref


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


# ---- classes of one's own: references and entry points -------------------------------------------
class Widget:
    """The base a widget found by reference must subclass."""


def widgets() -> Registry[Widget]:
    reg: Registry[Widget] = Registry("widget", base=Widget, group="dcsim.test_widgets")
    reg.register("plain")(type("Plain", (Widget,), {}))
    return reg


def write_module(folder, name: str, body: str):
    path = folder / f"{name}.py"
    path.write_text(body)
    return path


WIDGETS = "from test_registry import Widget\n\nclass Round(Widget):\n    pass\n\nclass NotOne:\n    pass\n\nN = 3\n"


def test_a_reference_to_a_module_or_a_file_finds_the_subclass(tmp_path, monkeypatch):
    write_module(tmp_path, "regtest_widgets_a", WIDGETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = widgets()
    cls = reg.get("regtest_widgets_a:Round", "s.yaml", "widget.name")
    assert cls.__name__ == "Round" and issubclass(cls, Widget) and cls.__module__ == "regtest_widgets_a"
    sub = tmp_path / "sub"
    sub.mkdir()
    write_module(sub, "mine", WIDGETS)
    by_file = reg.get("./sub/mine.py:Round", "s.yaml", "widget.name", relative_to=tmp_path)
    assert by_file.__name__ == "Round" and by_file is not cls
    # the same file is loaded once: named again (relatively or absolutely) it is the same class
    assert reg.get(f"{sub / 'mine.py'}:Round") is by_file
    assert reg.get("mine.py:Round", relative_to=sub) is by_file
    assert "./sub/mine.py:Round" not in reg and reg.names() == ["plain"]  # found, not registered


def test_absolute_ref_anchors_relative_files_only(tmp_path):
    assert absolute_ref("./r.py:R", tmp_path) == f"{(tmp_path / 'r.py').resolve()}:R"
    assert absolute_ref("lib/r.py:R", tmp_path) == f"{(tmp_path / 'lib' / 'r.py').resolve()}:R"
    assert absolute_ref("/abs/r.py:R", tmp_path) == "/abs/r.py:R"
    assert absolute_ref("pkg.mod:R", tmp_path) == "pkg.mod:R" and absolute_ref("plain", tmp_path) == "plain"
    assert absolute_ref(3, tmp_path) == 3


@pytest.mark.parametrize("name, says", [
    ("regtest_no_such_pkg.widgets:Round", "no module named 'regtest_no_such_pkg'"),
    ("regtest_widgets_b:Square", "module 'regtest_widgets_b' has no attribute 'Square' (it defines: Round)"),
    ("regtest_widgets_b:NotOne", "class NotOne is not a widget: it must subclass test_registry.Widget"),
    ("regtest_widgets_b:N", "'N' (a int, not a class) is not a widget"),
    ("./missing.py:Round", "file not found"),
    ("./notes.txt:Round", "is not a Python file"),
    ("regtest_widgets_b:", "is not a class name"),
    ("not a module:Round", "is not a module path"),
])
def test_a_reference_that_cannot_be_followed_is_refused_naming_file_and_field(tmp_path, monkeypatch, name, says):
    write_module(tmp_path, "regtest_widgets_b", WIDGETS)
    (tmp_path / "notes.txt").write_text("x")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError) as e:
        widgets().get(name, "s.yaml", "widget.name", relative_to=tmp_path)
    assert e.value.file == "s.yaml" and e.value.field == "widget.name"
    assert says in e.value.reason and e.value.reason.startswith(f"widget {name!r}: ")


@pytest.mark.parametrize("body, line, says", [
    ("import math\n\nx = 1 / 0\n", 3, "ZeroDivisionError: division by zero"),
    ("def f(:\n    pass\n", 1, "SyntaxError: "),
    ("import regtest_absent_dependency\n", 1, "ModuleNotFoundError: No module named 'regtest_absent_dependency'"),
    ("raise SystemExit('bye')\n", 1, "SystemExit: bye"),
])
def test_an_exception_while_importing_names_the_users_file_line_and_message(tmp_path, monkeypatch, body, line,
                                                                           says):
    path = write_module(tmp_path, "broken", body)
    with pytest.raises(UserError) as e:
        widgets().get("./broken.py:Round", "s.yaml", "widget.name", relative_to=tmp_path)
    assert f"importing it failed ({path.resolve()}, line {line}): {says}" in e.value.reason
    assert "\n" not in e.value.message
    # the same through a module path: the failing file is the module's own
    write_module(tmp_path, "regtest_broken_mod", body)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError) as e:
        widgets().get("regtest_broken_mod:Round", "s.yaml", "widget.name")
    assert f"({tmp_path / 'regtest_broken_mod.py'}, line {line}): {says}" in e.value.reason


def write_dist(folder, group: str, entries: dict[str, str]) -> None:
    """An installed distribution as importlib.metadata finds one on sys.path: METADATA and entry_points.txt."""
    info = folder / "regtest_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: regtest-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()))


def test_an_installed_packages_entry_point_is_found_by_plain_name(tmp_path, monkeypatch):
    write_module(tmp_path, "regtest_widgets_ep", WIDGETS)
    write_dist(tmp_path, "dcsim.test_widgets", {"round": "regtest_widgets_ep:Round",
                                                "wrong": "regtest_widgets_ep:NotOne"})
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = widgets()
    assert reg.get("round").__name__ == "Round" and reg.get("round").__module__ == "regtest_widgets_ep"
    with pytest.raises(UserError) as e:
        reg.get("wrong", "s.yaml", "widget.name")
    assert "entry point 'regtest_widgets_ep:NotOne' in dcsim.test_widgets, package regtest-plugin" in e.value.reason
    assert "is not a widget" in e.value.reason
    with pytest.raises(UserError) as e:  # the choices list the entry points beside the registered names
        reg.get("nope", "s.yaml", "widget.name")
    assert "(known: plain, round, wrong; or a class of your own as package.module:Class or " in e.value.reason


def test_a_registry_without_a_base_takes_registered_names_only(tmp_path, monkeypatch):
    write_module(tmp_path, "regtest_widgets_c", WIDGETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry[object] = Registry("widget")
    with pytest.raises(UserError, match="unknown widget 'regtest_widgets_c:Round'"):
        reg.get("regtest_widgets_c:Round", "s.yaml", "w")
