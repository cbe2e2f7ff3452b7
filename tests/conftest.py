import shutil

import pytest
import torch

from seqbench import registry, testing


@pytest.fixture(scope="session")
def fake_data(tmp_path_factory):
    """Generated data for every task, written once per session (about 0.5 s; 650 tests use it).
    Tests never touch this folder: ``env`` gives each its own copy to change or corrupt."""
    data = tmp_path_factory.mktemp("fake") / "data"
    for entry in registry.tasks().values():
        entry.cls.write_fake_data(data)
    return data


@pytest.fixture
def env(tmp_path, monkeypatch, fake_data):
    """An isolated data root with generated data for every task, and a results folder.
    Checksums are off (the files are generated) and downloads are off (tests never use the network)."""
    data, results = tmp_path / "data", tmp_path / "results"
    shutil.copytree(fake_data, data)
    monkeypatch.setenv("SEQBENCH_DATA", str(data))
    monkeypatch.setenv("SEQBENCH_RESULTS", str(results))
    monkeypatch.setenv("SEQBENCH_VERIFY", "0")
    monkeypatch.setenv("SEQBENCH_DOWNLOAD", "0")
    return {"data": data, "results": results, "tmp": tmp_path}


def refusal_lines(err: str) -> list[str]:
    """The non-blank lines of stderr less its warnings: what a refusal said. A tiny preset's subsets are larger
    than the generated splits, which is said once per process (``data.warn_once``): before a refusal only in
    the test that happens to run first."""
    return [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("seqbench: warning:")]


# Settings that keep a run to a couple of steps: used by the cross-product and runner tests.
QUICK = testing.QUICK


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread avoids OpenMP wake-ups on shared, busy cores (restored after)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
