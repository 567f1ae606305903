import subprocess
import sys
import textwrap

import pytest

from dplbench.errors import UnknownNameError
from dplbench.registry import Registry


def test_decorator_and_listing_with_wildcards():
    reg = Registry("thing")

    @reg.register("coop", description="context optimisation", aliases=("co",))
    class CoOp:
        pass

    reg.add("kgcoop", object(), description="knowledge-guided")
    reg.add("zsclip", object())
    assert reg.list() == ["coop", "kgcoop", "zsclip"]
    assert reg.list("*coop") == ["coop", "kgcoop"]
    assert reg.get("co") is CoOp
    assert reg.canonical("co") == "coop"
    assert reg.describe("coop") == "context optimisation"
    assert "co" in reg and "nope" not in reg


def test_unknown_name_lists_choices_and_suggests():
    reg = Registry("method")
    reg.add("promptsrc", 1)
    reg.add("kgcoop", 2)
    with pytest.raises(UnknownNameError) as info:
        reg.get("promtsrc")
    message = str(info.value)
    assert "did you mean 'promptsrc'" in message
    assert "kgcoop, promptsrc" in message
    assert "\n" not in message


def test_lazy_entry_imports_only_on_get(tmp_path, monkeypatch):
    module = tmp_path / "lazy_mod_for_test.py"
    module.write_text("LOADED = True\nclass Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("thing")
    reg.add_lazy("thing", "lazy_mod_for_test:Thing", description="lazy one")
    assert "lazy_mod_for_test" not in sys.modules
    assert reg.list() == ["thing"] and reg.describe("thing") == "lazy one"
    assert "lazy_mod_for_test" not in sys.modules
    obj = reg.get("thing")
    assert obj.__name__ == "Thing" and "lazy_mod_for_test" in sys.modules


def test_entry_point_group_is_read(tmp_path, monkeypatch):
    dist = tmp_path / "plugin_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: plugin-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[dplbench.test_plugins]\nmyplug = plugin_mod_for_test:Plug\n")
    (tmp_path / "plugin_mod_for_test.py").write_text("class Plug:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("method", entry_point_group="dplbench.test_plugins")
    assert reg.list() == ["myplug"]
    assert reg.get("myplug").__name__ == "Plug"


def test_builtin_methods_are_discovered_without_importing_them():
    code = textwrap.dedent("""
        import sys
        from dplbench.catalog import METHODS
        names = METHODS.list()
        assert "coop" in names and "zsclip" in names, names
        assert METHODS.describe("coop")
        heavy = [m for m in ("torch", "open_clip", "ray", "mlflow") if m in sys.modules]
        assert not heavy, heavy
        assert not any(m.startswith("dplbench.methods.") for m in sys.modules)
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


def _adapter_package(tmp_path, monkeypatch, name: str, source: str) -> str:
    """A temporary adapter package (``name`` made unique per test: importlib keeps packages it has seen) with one
    module ``adapter.py`` holding ``source``; returns the package name."""
    name = f"{name}_{tmp_path.name.replace('-', '_')}"
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "adapter.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


@pytest.mark.parametrize("decorator, problem", [
    ('register_method(NAME, description="x")', "the method name of register_method must be a literal"),
    ('register_method("dummy", description=DESCRIPTION)', "description of register_method must be a literal"),
    ('register_method("dummy", aliases=tuple(ALIASES))', "aliases of register_method must be a literal"),
    ('register_method("dummy", **OPTIONS)', "register_method got **OPTIONS"),
    ('register_method(description="x")', "needs the method name as its one positional argument"),
    ('register_method(3)', "the method name of register_method must be a str"),
    ('register_method("dummy", aliases=("a", 1))', "aliases must be strings"),
])
def test_non_literal_register_method_is_an_error_naming_file_and_line(tmp_path, monkeypatch, decorator, problem):
    from dplbench.catalog import _discover_methods
    from dplbench.errors import RegistryError

    package = _adapter_package(tmp_path, monkeypatch, "bad_adapters_for_test", f"""
        NAME = "dummy"
        DESCRIPTION = ALIASES = OPTIONS = None


        @{decorator}
        class Dummy:
            pass
        """)
    reg = Registry("method")
    reg.add_discoverer(lambda r: _discover_methods(r, package))
    path = tmp_path / package / "adapter.py"
    for _ in range(2):  # a failed discovery fails again on the next query instead of leaving the method unknown
        with pytest.raises(RegistryError) as info:
            reg.list()
        assert f"{path}:6: " in str(info.value) and problem in str(info.value)


def test_literal_register_method_arguments_are_read(tmp_path, monkeypatch):
    from dplbench.catalog import _discover_methods

    package = _adapter_package(tmp_path, monkeypatch, "good_adapters_for_test", """
        @register_method("dummy", aliases=["dm"], description="a " "dummy")
        class Dummy:
            pass
        """)
    reg = Registry("method")
    reg.add_discoverer(lambda r: _discover_methods(r, package))
    assert reg.list() == ["dummy"] and reg.canonical("dm") == "dummy" and reg.describe("dummy") == "a dummy"
