"""``--plugin`` objects that are not plugins, and plugins that cannot register: one line under
``--strict-plugins``, listed as failed without it."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from kdcore.cli import main
from tests.cli_helpers import one_line_error


def test_a_plugin_that_cannot_register_is_one_line_under_strict_plugins():
    result = CliRunner().invoke(main, ["plugins", "--plugin", "kdcore_almkd",
                                       "--strict-plugins"], catch_exceptions=False)
    line = one_line_error(result, "failed to register")
    assert line.startswith("kdcore: error: plugin 'kdcore_almkd' (in-process): "), line


@pytest.mark.parametrize("plugin", ["builtins:None", "os", "sys:modules"])
def test_an_object_that_implements_no_hook_is_not_a_plugin(plugin):
    one_line_error(CliRunner().invoke(main, ["plugins", "--plugin", plugin, "--strict-plugins"],
                                      catch_exceptions=False), "implements no kdcore hook")
    result = CliRunner().invoke(main, ["plugins", "--plugin", plugin], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "(in-process)\n  FAILED: implements no kdcore hook" in result.output
    # the warning is kdcore's one line, not loguru's default record (level, module, line)
    (warning,) = [line for line in result.output.splitlines() if "skipped" in line]
    assert warning.endswith("(in-process) skipped: implements no kdcore hook (a "
                            "@kdcore.hookimpl function or method named kdcore_*)")
    assert "WARNING" not in warning and "kdcore.plugins:" not in warning
