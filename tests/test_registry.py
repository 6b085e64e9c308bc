"""Registry: decorator, lookup with suggestions, listing, entry-point plugins."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import armetrics as am
from armetrics.errors import ConfigError
from armetrics.probe import Probe, ProbeResult
from armetrics.registry import _PROBES, register_probe


def test_builtin_listed_and_described():
    assert "accuracy" in am.list_probes()
    assert am.list_probes("acc*") == ["accuracy"]
    assert am.get_probe("accuracy").description.startswith("Top-1 accuracy")


def test_unknown_probe_suggests():
    with pytest.raises(ConfigError, match="did you mean accuracy"):
        am.get_probe("acuracy")


def test_register_and_duplicate_name():
    @register_probe("_test_dummy")
    class Dummy(Probe):
        """A dummy."""

        needs_data = False

        def compute(self):
            return ProbeResult(summary={"x": 1.0})

    try:
        assert am.get_probe("_test_dummy") is Dummy
        with pytest.raises(ConfigError, match="already registered"):
            @register_probe("_test_dummy")
            class Other(Probe):
                pass
    finally:
        _PROBES.pop("_test_dummy", None)


def _fake_distribution(root, name, ep_value, module_src):
    (root / f"{name}_mod.py").write_text(textwrap.dedent(module_src))
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[armetrics.probes]\n{ep_value}\n")


def test_entry_point_plugins(tmp_path):
    _fake_distribution(tmp_path, "goodplugin", "weightcount = goodplugin_mod:WeightCount", """
        from armetrics.probe import Probe, ProbeResult

        class WeightCount(Probe):
            '''Number of parameters (a plugin probe).'''
            needs_data = False

            def __init__(self, *, scale: float = 1.0):
                super().__init__()
                self.scale = scale

            def compute(self):
                n = sum(p.numel() for p in self.ctx.model.parameters())
                return ProbeResult(summary={"count": n * self.scale})
        """)
    _fake_distribution(tmp_path, "badplugin", "broken = badplugin_mod:Nope", "raise ImportError('boom')\n")
    code = textwrap.dedent("""
        import warnings, torch, armetrics as am
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            names = am.list_probes()
        print("weightcount" in names, "broken" in names, any("broken" in str(x.message) for x in w))
        r = am.analyze(torch.nn.Linear(3, 2), None, ["weightcount"], options={"weightcount": {"scale": 2.0}})
        print(r.summary("weightcount")["count"])
    """)
    env = {"PYTHONPATH": str(tmp_path)}
    import os

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False", "True", "16.0"]


# ------------------------------------------- plugins that are not probes, or reuse a name
@pytest.fixture
def fake_entry_points(monkeypatch):
    """Install entry points (name -> "module:attr") for one fresh registry load; a fake
    plugin module ``_armetrics_fake_plugins`` holds the objects they point at."""
    import importlib.metadata as md
    import types

    import armetrics.registry as registry

    module = types.ModuleType("_armetrics_fake_plugins")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    registry._load_all()  # built-ins first, then the fake entry points on a fresh load
    added: list[str] = []

    def install(eps: dict[str, str], **objects):
        for k, v in objects.items():
            setattr(module, k, v)
        found = [md.EntryPoint(name, value, registry.ENTRY_POINT_GROUP) for name, value in eps.items()]
        monkeypatch.setattr(registry, "entry_points", lambda group: found if group == registry.ENTRY_POINT_GROUP else [])
        monkeypatch.setattr(registry, "_loaded", False)
        added.extend(n for n in eps if n not in _PROBES)
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            names = am.list_probes()
        return names, [str(w.message) for w in caught]

    yield install
    for name in added:
        _PROBES.pop(name, None)


class _PluginProbe(Probe):
    """A plugin probe."""

    needs_data = False

    def compute(self):
        return ProbeResult(summary={"x": 1.0})


def test_plugin_not_a_probe_is_skipped_with_a_warning(fake_entry_points):
    class NotAProbe:
        pass

    names, messages = fake_entry_points(
        {"notaprobe": "_armetrics_fake_plugins:NotAProbe", "afunction": "_armetrics_fake_plugins:func",
         "goodone": "_armetrics_fake_plugins:Good"},
        NotAProbe=NotAProbe, func=lambda: None, Good=_PluginProbe)
    assert "notaprobe" not in names and "afunction" not in names
    assert am.get_probe("goodone") is _PluginProbe
    assert len(messages) == 2, messages
    for name, what in (("notaprobe", "the class test_registry.test_plugin_not_a_probe_is_skipped_with_a_warning.<locals>.NotAProbe"),
                       ("afunction", "a function")):
        msg = next(m for m in messages if repr(name) in m)
        assert "\n" not in msg
        assert f"skipping probe plugin {name!r} (_armetrics_fake_plugins:" in msg
        assert f"it names {what}, not a subclass of armetrics.probe.Probe; point the entry point at one" in msg


def test_plugin_reusing_a_builtin_name_warns_and_builtin_wins(fake_entry_points):
    builtin = am.get_probe("accuracy")
    # the plugin is never imported: its module does not even exist
    names, messages = fake_entry_points({"accuracy": "_armetrics_no_such_module:Accuracy"})
    assert am.get_probe("accuracy") is builtin
    assert len(messages) == 1, messages
    assert "\n" not in messages[0]
    assert messages[0] == (
        "armetrics: ignoring probe plugin 'accuracy' (_armetrics_no_such_module:Accuracy): the name belongs to "
        f"the built-in probe {builtin.__module__}.{builtin.__qualname__}, which wins; give the entry point another name")
