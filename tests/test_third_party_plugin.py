"""A plugin package written by a third party is found after installation, with no change to
kdcore, and what its component produces lands in the history."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from kdcore import History, PluginHost, load_recipe, run_recipe

PLUGIN_MODULE = textwrap.dedent('''
    """A third-party selector: keep samples whose index is divisible by `every`."""
    import attrs
    import torch

    import kdcore


    @attrs.frozen
    class EveryParams:
        every: int = 3


    class EveryNth(kdcore.Component):
        Params = EveryParams

        def select(self, ctx, batch):
            return batch.index % self.params.every == 0


    @kdcore.hookimpl
    def kdcore_add_components():
        return {"every_nth": EveryNth}
''')

PYPROJECT = textwrap.dedent('''
    [build-system]
    requires = ["setuptools>=61"]
    build-backend = "setuptools.build_meta"

    [project]
    name = "kdcore-every-nth"
    version = "0.3.1"

    [project.entry-points.kdcore]
    every_nth = "kdcore_every_nth"
''')


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    """Build and install the package with pip into a private target directory."""
    root = tmp_path_factory.mktemp("plugin")
    src = root / "src"
    src.mkdir()
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "kdcore_every_nth.py").write_text(PLUGIN_MODULE)
    target = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--no-build-isolation", "--target", str(target), str(src)],
        check=True,
    )
    sys.path.insert(0, str(target))
    yield target
    sys.path.remove(str(target))
    sys.modules.pop("kdcore_every_nth", None)


def test_installed_plugin_is_listed_with_its_distribution(installed_plugin):
    host = PluginHost()
    info = host.infos["every_nth"]
    assert (info.distribution, info.version) == ("kdcore-every-nth", "0.3.1")
    assert info.provides["components"] == ["every_nth"]
    assert "kdcore_add_components" in info.hooks
    assert host.components.get("every_nth").kinds() == ("select",)


def test_installed_plugin_component_lands_in_history(installed_plugin, tiny_recipe, tmp_path):
    text = tiny_recipe.read_text().replace(
        '[[stages.components]]\nuse = "ce"\n\n[[stages]]',
        '[[stages.components]]\nuse = "ce"\n\n[[stages.components]]\nuse = "every_nth"\n'
        'params = { every = 4 }\n\n[[stages]]', 1)
    tiny_recipe.write_text(text)
    recipe = load_recipe(tiny_recipe, ["stages.teacher.epochs=1", "stages.student.epochs=1"])
    run_recipe(recipe, out=str(tmp_path / "run"))
    with History(tmp_path / "run") as h:
        mask = h.column("select/every_nth", 0)
        np.testing.assert_array_equal(mask, np.arange(mask.shape[0]) % 4 == 0)
        assert h.producers("select/every_nth")[0] == "every_nth"
        assert h.versions["kdcore-every-nth"] == "0.3.1"


def test_broken_plugin_is_named_and_skipped(tmp_path, monkeypatch):
    dist = tmp_path / "kdcore_broken-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kdcore-broken\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[kdcore]\nbroken = kdcore_broken_mod\n")
    (tmp_path / "kdcore_broken_mod.py").write_text("raise ImportError('missing dependency x')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    messages = []
    from loguru import logger

    sink = logger.add(messages.append, level="WARNING")
    try:
        host = PluginHost()
    finally:
        logger.remove(sink)
    assert host.infos["broken"].error and "missing dependency x" in host.infos["broken"].error
    assert "ce" in host.components  # the others keep working
    assert any("'broken'" in str(m) and "kdcore-broken" in str(m) for m in messages)
    from kdcore.errors import KdcoreError

    with pytest.raises(KdcoreError, match="plugin 'broken'"):
        PluginHost(strict=True)
