"""seqbench show / list --json: generated from the declarations, for every registered entry."""
import dataclasses
import json

import pytest

from seqbench import registry
from seqbench.cli import main
from seqbench.config import params_class

ENTRIES = [("model", n) for n in registry.models()] + [("task", n) for n in registry.tasks()] + \
          [("strategy", n) for n in registry.strategies()]


@pytest.mark.parametrize("what,name", ENTRIES)
def test_show_prints_every_setting_and_preset_of_every_entry(what, name, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SEQBENCH_DATA", str(tmp_path / "none"))  # declarations only: no data needed
    assert main(["show", name]) == 0
    out = capsys.readouterr().out
    entry = getattr(registry, {"model": "models", "task": "tasks", "strategy": "strategies"}[what])()[name]
    assert f"{name} ({what}: {entry.module}." in out
    if what != "strategy":
        prefix = "model." if what == "model" else "task."
        for f in dataclasses.fields(params_class(entry.cls)):
            assert f"  {prefix}{f.name} = " in out, f.name
        for preset in getattr(entry.cls, "presets", None) or {}:
            assert f"  {preset}: " in out, preset
    assert not list(tmp_path.iterdir())


def test_list_json_is_the_registry_as_data(capsys):
    assert main(["list", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in d["models"]] == list(registry.models())
    assert [t["name"] for t in d["tasks"]] == list(registry.tasks())
    assert [s["name"] for s in d["strategies"]] == list(registry.strategies())
    hippo = next(m for m in d["models"] if m["name"] == "hippo")
    step = next(s for s in hippo["settings"] if s["key"] == "step")
    assert step["default"] == "auto" and step["domain"] == "one of auto, dense, fast" and step["help"]
    assert "pmnist" in hippo["compatible_tasks"] and "camvid" not in hippo["compatible_tasks"]
    assert hippo["presets"]["fast"] == {"model.hidden": 64}


def test_show_json_and_an_unknown_name(capsys):
    assert main(["show", "pmnist", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["what"] == "task" and d["kind"] == "sequence" and "lstm" in d["compatible_models"]
    assert main(["show", "no-such-thing"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("seqbench: error: nothing is registered as 'no-such-thing'; known: ")
