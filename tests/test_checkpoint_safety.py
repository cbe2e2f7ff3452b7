"""Checkpoints are read as data: a file whose unpickling would run code is refused in one line by
resume, --init-from and bench --run, and the code never runs."""
import torch

from seqbench import config, registry
from seqbench.cli import main
from seqbench.runner import Runner
from conftest import QUICK, refusal_lines


class Planted:
    """Unpickling it would create a file (what a crafted checkpoint could do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _run(env, **over):
    cfg = config.resolve(registry.get_model("lstm"), registry.get_task("pmnist"), "tiny", {**QUICK, **over})
    return Runner(cfg, quiet=True)


def one_line(capsys, args, says):
    code = main(args)
    err = refusal_lines(capsys.readouterr().err)
    assert code == 2 and len(err) == 1 and says in err[0], err
    return err[0]


def test_crafted_checkpoints_are_refused_without_running_them(env, capsys, tmp_path):
    res = env["results"]
    marker = tmp_path / "ran"
    stopped = _run(env, epochs=2)
    assert stopped.fit(stop_after_epochs=1) is None
    last = stopped.dir / "last.pt"
    ck = torch.load(last, weights_only=True)  # what seqbench writes loads as data
    torch.save({**ck, "model": Planted(marker)}, last)
    line = one_line(capsys, ["run", "--resume", stopped.run_id, "--results", str(res)], "is not plain data")
    assert "io.open" in line and not marker.exists()  # named, never called

    done = _run(env)
    assert done.fit()["status"] == "completed"
    torch.save({"model": Planted(marker), "epoch": 1}, done.dir / "best.pt")
    one_line(capsys, ["run", "--model", "lstm", "--task", "pmnist", "--preset", "tiny", "--set", "limit_batches=2",
                      "--init-from", done.run_id, "--results", str(res)], "is not plain data")
    one_line(capsys, ["bench", "--run", done.run_id, "--results", str(res), "--mode", "infer", "--rounds", "1",
                      "--min-run-time", "0.01"], "is not plain data")
    assert not marker.exists()
    assert sorted(p.name for p in (res / "checkpoints").iterdir()) == sorted([stopped.run_id, done.run_id])


def test_a_refused_or_failed_start_leaves_nothing(env, capsys):
    """Every refused --init-from (no such run, weights that do not fit, a corrupted best.pt) and a data
    file found corrupted in the first epoch: one line, and no folder of the new run (nor results/)."""
    res = env["tmp"] / "fresh"
    args = ["run", "--model", "lstm", "--task", "pmnist", "--preset", "tiny", "--set", "limit_batches=2",
            "--results", str(res)]
    one_line(capsys, [*args, "--init-from", "no-such-run"], "no best.pt or last.pt")
    assert not res.exists()
    src = _run(env)  # another model's run in the default results folder of the env
    assert src.fit()["status"] == "completed"
    other = ["--results", str(env["results"])]
    one_line(capsys, [*args[:-2], *other, "--hidden", "8", "--init-from", src.run_id], "do not fit this model")
    (src.dir / "best.pt").write_bytes(b"truncated")
    one_line(capsys, [*args[:-2], *other, "--init-from", src.run_id], "is unreadable")
    assert [p.name for p in (env["results"] / "checkpoints").iterdir()] == [src.run_id]
    img = sorted((env["data"] / "camvid" / "train").glob("*.png"))[0]
    img.write_bytes(img.read_bytes()[:40])  # a truncated PNG, read in the first epoch
    one_line(capsys, ["run", "--model", "fcn", "--task", "camvid", "--preset", "tiny", "--results", str(res)],
             "unreadable")
    assert not res.exists()


def test_a_resumed_run_takes_this_machine_s_settings_not_new_config(env, capsys):
    """Threads, device and the log settings are the machine's: accepted on resume; anything else is refused."""
    run = _run(env, epochs=2)
    assert run.fit(stop_after_epochs=1) is None
    res = ["--results", str(env["results"])]
    one_line(capsys, ["run", "--resume", run.run_id, *res, "--set", "lr=0.5"], "only this machine's settings")
    assert main(["run", "--resume", run.run_id, *res, "--threads", "1", "--set", "log_every=5", "--quiet"]) == 0
    assert "completed" in capsys.readouterr().out
