"""seqbench show / list --json: generated from the declarations, for every registered entry."""
import dataclasses
import json

import pytest

from seqbench import registry
from seqbench.cli import main
from seqbench.config import params_class
from seqbench.models.rnn import LSTM
from seqbench.show import CITATION_KEYS, citation, describe, is_none, text

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


# ------------------------------------------------------------------ citations: paper and reference code
TABLES = {"model": registry.models, "task": registry.tasks, "strategy": registry.strategies}
BUILTIN = [(what, name) for what, name in ENTRIES
           if getattr(TABLES[what]()[name], "source", "built-in") == "built-in"]


def _declared_none_or_url(value: str) -> bool:
    """An https URL, or a declared absence with its reason ("none: why")."""
    return value.startswith("https://") or (is_none(value) and bool(value[len("none:"):].strip()))


@pytest.mark.parametrize("what,name", BUILTIN)
def test_every_builtin_entry_declares_its_paper_and_reference_and_show_prints_them(what, name, capsys, tmp_path,
                                                                                    monkeypatch):
    entry = TABLES[what]()[name]
    c = citation(entry.cls)
    assert c["paper"], f"{what} {name}: declare `paper = \"Authors, Title, Venue Year\"` (or \"none: why\")"
    assert not is_none(c["paper"]) or c["paper"][len("none:"):].strip(), f"{what} {name}: say why there is no paper"
    assert c["reference"], f"{what} {name}: declare `reference = \"https://...\"` (or \"none: why\": no public code)"
    assert _declared_none_or_url(c["reference"]), f"{what} {name}: reference {c['reference']!r}"
    assert not c["paper_url"] or c["paper_url"].startswith("https://"), f"{what} {name}: {c['paper_url']!r}"
    assert all(c[k] == c[k].strip() and "\n" not in c[k] for k in c), f"{what} {name}: one line each"

    d = describe(what, entry)
    assert {k: d[k] for k in CITATION_KEYS} == c and d["source"] == "built-in"

    monkeypatch.setenv("SEQBENCH_DATA", str(tmp_path / "none"))
    assert main(["show", name]) == 0
    lines = capsys.readouterr().out.splitlines()  # a model and a strategy may share a name (mptt): two pages
    top = lines.index(f"{name} ({what}: {entry.module}.{entry.cls.__name__}) [built-in]")
    paper, reference = lines[top + 1], lines[top + 2]  # near the top: right under the header line
    assert paper.startswith("paper: ") and reference.startswith("reference: ")
    for key, line in (("paper", paper), ("reference", reference)):
        value = c[key]
        if is_none(value):
            assert line == f"{key}: none ({value[len('none:'):].strip()})"
        else:
            assert line.startswith(f"{key}: {value}")
    if c["paper_url"]:
        assert paper.endswith(f" <{c['paper_url']}>")


def test_list_json_carries_source_and_citations(capsys):
    assert main(["list", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    hippo = next(m for m in d["models"] if m["name"] == "hippo")
    assert hippo["source"] == "built-in" and hippo["reference"] == "https://github.com/HazyResearch/hippo-code"
    assert hippo["paper"].startswith("Gu, Dao") and hippo["paper_url"] == "https://arxiv.org/abs/2008.07669"
    legt = next(m for m in d["models"] if m["name"] == "hippo-legt")
    assert {k: legt[k] for k in CITATION_KEYS} == {k: hippo[k] for k in CITATION_KEYS}  # inherited, same module
    pmnist = next(t for t in d["tasks"] if t["name"] == "pmnist")
    assert pmnist["reference"] == "https://yann.lecun.com/exdb/mnist/" and pmnist["paper_url"] == ""


class PluginLSTM(LSTM):
    """A plugin's variant of a built-in: its parent's paper is not its paper."""


def test_a_citation_from_another_module_does_not_count_and_a_plugin_source_is_shown():
    entry = registry.Entry("plugin-lstm", PluginLSTM, __name__, frozenset({registry.SEQUENCE}))
    entry.source = "file /home/me/my_cells.py"
    d = describe("model", entry)
    assert {k: d[k] for k in CITATION_KEYS} == {"paper": "", "paper_url": "", "reference": ""}
    page = text(d).splitlines()
    assert page[0] == f"plugin-lstm (model: {__name__}.PluginLSTM) [plugin: file /home/me/my_cells.py]"
    assert page[1:3] == ["paper: (not declared)", "reference: (not declared)"]


def test_a_model_says_what_runs_its_recurrence():
    from seqbench import show

    assert "implementation: library kernel" in show.show("lstm")
    assert "implementation: eager" in show.show("dag-rnn")
    assert "implementation: set by model.impl" in show.show("hippo")  # fused or eager (seqbench/fused.py)
    assert show.describe("model", registry.get_model("gru"))["implementation"] == "library kernel"
