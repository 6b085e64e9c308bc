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
