"""Bad input: one clear line on stderr, a non-zero exit, no traceback, nothing written."""
import os
import subprocess
import sys


from seqbench import registry
from seqbench.cli import main
from seqbench.model import RecurrentBackbone

TINY = ["--preset", "tiny", "--set", "limit_batches=1", "--set", "latency_time=0.01", "--quiet"]


def run_cli(capsys, *args):
    code = main(list(args))
    err = capsys.readouterr().err.strip()
    return code, err


def assert_one_line(code, err, *needles):
    assert code != 0
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("seqbench: error: ")
    for n in needles:
        assert n in lines[0], lines[0]


def test_unknown_model(env, capsys):
    assert_one_line(*run_cli(capsys, "run", "--model", "nope", "--task", "pmnist"), "unknown model 'nope'", "lstm")


def test_unknown_task(env, capsys):
    assert_one_line(*run_cli(capsys, "run", "--model", "lstm", "--task", "nope"), "unknown task 'nope'", "pmnist")


def test_bad_preset_key_lists_valid_keys(env, capsys):
    code, err = run_cli(capsys, "run", "--model", "lstm", "--task", "pmnist", "--set", "model.hiden=3")
    assert_one_line(code, err, "unknown key 'model.hiden'", "model.hidden", "task.permutation", "epochs")


def test_bad_value_type(env, capsys):
    assert_one_line(*run_cli(capsys, "run", "--model", "lstm", "--task", "pmnist", "--epochs", "two"),
                    "bad value 'two' for 'epochs'", "int")


def test_bad_choice(env, capsys):
    assert_one_line(*run_cli(capsys, "run", "--model", "lstm", "--task", "pmnist", "--set", "optimizer=lbfgs"),
                    "choose one of", "adam")


def test_unknown_preset(env, capsys):
    assert_one_line(*run_cli(capsys, "run", "--model", "lstm", "--task", "pmnist", "--preset", "huge"),
                    "unknown preset 'huge'", "tiny")


def test_unknown_flag(env, capsys):
    assert_one_line(*run_cli(capsys, "run", "--modle", "lstm"), "unrecognized arguments")


class _ImageOnly(RecurrentBackbone):
    kinds = frozenset({"image"})


def test_incompatible_pair(env, capsys):
    registry.register_model("image-only-test")(_ImageOnly)
    try:
        assert_one_line(*run_cli(capsys, "run", "--model", "image-only-test", "--task", "pmnist"),
                        "cannot run task 'pmnist'", "'sequence'", "image")
    finally:
        registry.unregister("image-only-test")


def test_missing_data_offline(env, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SEQBENCH_DATA", str(tmp_path / "empty"))
    code, err = run_cli(capsys, "run", "--model", "lstm", "--task", "pmnist", *TINY)
    assert_one_line(code, err, "MNIST data not found", "train-images-idx3-ubyte.gz", str(tmp_path / "empty"))
    assert not (env["results"] / "runs").exists()


def test_corrupted_data_checksum(env, capsys, monkeypatch):
    monkeypatch.setenv("SEQBENCH_VERIFY", "1")  # generated files cannot match the published md5s
    code, err = run_cli(capsys, "run", "--model", "lstm", "--task", "smnist", *TINY)
    assert_one_line(code, err, "is corrupted", "md5")


def test_truncated_data_file(env, capsys):
    f = env["data"] / "mnist" / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:200])
    assert_one_line(*run_cli(capsys, "run", "--model", "lstm", "--task", "smnist", *TINY), "unreadable")


def test_resume_unknown_run(env, capsys):
    assert_one_line(*run_cli(capsys, "run", "--resume", "no-such-run"), "cannot resume 'no-such-run'")


def test_resume_with_conflicting_flags(env, capsys):
    assert_one_line(*run_cli(capsys, "run", "--resume", "x", "--lr", "1"), "--resume takes the run's own config")


def test_real_process_exit_code_and_no_traceback(env):
    """The installed console script, as a user runs it."""
    out = subprocess.run([sys.executable, "-m", "seqbench", "run", "--model", "nope", "--task", "pmnist"],
                         capture_output=True, text=True, env=os.environ.copy())
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("seqbench: error: unknown model 'nope'")


def test_run_list_report_end_to_end(env, capsys):
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "lstm" in listing and "pmnist" in listing and "compatible pairs" in listing
    assert main(["run", "--model", "gru", "--task", "pmnist", *TINY]) == 0
    out = capsys.readouterr().out
    assert "completed" in out and "latency b1" in out and "FLOPs/sample" in out
    assert main(["report"]) == 0
    assert (env["results"] / "report.md").exists() and (env["results"] / "summary.csv").exists()


def test_list_without_data_still_lists(tmp_path, monkeypatch, capsys):
    """A fresh install with no data: list names every task with its declared shapes (no task needs its
    files for them) and every strategy, and exits 0."""
    monkeypatch.setenv("SEQBENCH_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("SEQBENCH_DOWNLOAD", "0")
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith("  ")}
    assert "input 365x2 " in lines["climate-melbourne"] and "shape unknown" not in out
    assert "d_output 10000" in lines["ptb"]  # Mikolov's vocabulary: the shape needs no files
    assert "mptt " in out and "series tasks" in out and "copy " in out
