"""PTB download (tasks/ptb.py through seqbench.data's fetch_archive / fetch_files): Mikolov's archive,
the raw mirror for word files, offline and failure messages. torchvision's ``download_url`` is
replaced by a copy of local files: never the network."""
import gzip
import hashlib
import io
import os
import shutil
import tarfile
import urllib.error

import pytest
import torchvision.datasets.utils as tvu

from seqbench import data, registry
from seqbench.errors import SeqbenchError
from seqbench.tasks import ptb as P

WORDS = {"train": " a b c \n b c a \n c c \n", "valid": " a b \n", "test": " c a \n"}
TEXTS = {f"ptb.{s}.txt": t for s, t in WORDS.items()}
TEXTS.update({f"ptb.char.{s}.txt": "".join(f" {' '.join('_'.join(ln.split()))} \n" for ln in t.splitlines())
              for s, t in WORDS.items()})
SUMS = {n: hashlib.md5(t.encode()).hexdigest() for n, t in TEXTS.items()}
OFFLINE = "[Errno -3] Temporary failure in name resolution"


def _tgz(path, names=tuple(TEXTS)):
    """A small simple-examples.tgz: ``names`` under ./simple-examples/data/, plus files PTB does not use."""
    with tarfile.open(path, "w:gz") as tar:
        members = {f"./simple-examples/data/{n}": TEXTS[n] for n in names}
        members.update({"./simple-examples/data/README": "fake\n", "./simple-examples/models/model.bin": "x"})
        for name, text in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return path


@pytest.fixture
def net(env, monkeypatch):
    """Downloads on, a data root of its own, and a fake ``download_url`` serving ``net["serve"]``
    (url -> local file; other urls fail as offline). ``net["calls"]`` lists the urls asked for."""
    root = env["tmp"] / "root"
    state = {"root": root, "folder": root / "ptb", "serve": {}, "calls": [], "partial": False}

    def download_url(url, root, filename=None, md5=None, max_redirect_hops=3):
        state["calls"].append(url)
        dest = os.path.join(root, filename or os.path.basename(url))
        os.makedirs(root, exist_ok=True)
        if url not in state["serve"]:
            if state["partial"]:  # a transfer cut off half way leaves part of a file behind
                with open(dest, "wb") as f:
                    f.write(b" a b")
            raise urllib.error.URLError(OFFLINE)
        shutil.copyfile(state["serve"][url], dest)
        if md5 is not None and data.file_digest(dest) != md5:
            raise RuntimeError("File not found or corrupted.")

    monkeypatch.setattr(tvu, "download_url", download_url)
    monkeypatch.setenv("SEQBENCH_DOWNLOAD", "1")
    monkeypatch.setenv("SEQBENCH_VERIFY", "1")
    monkeypatch.setattr(P.PTB, "md5", {n: SUMS[n] for n in P.WORD_MD5})
    monkeypatch.setattr(P.PTBChar, "md5", {n: SUMS[n] for n in P.CHAR_MD5})
    return state


def _task(name, root):
    cls = registry.get_task(name).cls
    return cls(cls.Params(), root)


def _raises_one_line(name, root, *parts):
    with pytest.raises(SeqbenchError) as e:
        _task(name, root).corpus()
    msg = str(e.value)
    assert "\n" not in msg, msg
    for p in parts:
        assert p in msg, msg
    return msg


def test_archive_files_land_in_the_ptb_folder_and_the_tasks_load(net, tmp_path):
    net["serve"][P.TGZ_URL] = _tgz(tmp_path / "simple-examples.tgz")
    folder = net["folder"]
    folder.mkdir(parents=True)
    with gzip.open(folder / "ptb.test.txt.gz", "wb") as f:  # already here: kept, not downloaded again
        f.write(TEXTS["ptb.test.txt"].encode())
    before = (folder / "ptb.test.txt.gz").read_bytes()

    w = _task("ptb", net["root"])
    assert w.info()["md5_checked"] == {n: SUMS[n] for n in P.WORD_MD5}  # the sums of the texts
    assert w.info()["vocab_size"] == 4  # a b c <eos>
    assert sorted(os.listdir(folder)) == sorted({*TEXTS, "ptb.test.txt.gz"} - {"ptb.test.txt"})
    assert (folder / "ptb.test.txt.gz").read_bytes() == before
    assert (folder / "ptb.train.txt").read_text() == TEXTS["ptb.train.txt"]
    assert os.listdir(net["root"]) == ["ptb"]  # no archive or temporary folder left behind
    assert net["calls"] == [P.TGZ_URL]

    c = _task("ptb-char", net["root"])  # the char files came with the same archive: no new download
    assert c.info()["md5_checked"] == {n: SUMS[n] for n in P.CHAR_MD5}
    assert "_" in c.corpus()["vocab"] and net["calls"] == [P.TGZ_URL]


def test_raw_mirror_gives_the_word_files_when_the_archive_fails(net, tmp_path):
    for n in P.WORD_MD5:
        (tmp_path / n).write_text(TEXTS[n])
        net["serve"][P.RAW_MIRROR + n] = tmp_path / n
    net["partial"] = True  # the failing archive download leaves a partial file: it must not remain
    assert _task("ptb", net["root"]).info()["md5_checked"] == {n: SUMS[n] for n in P.WORD_MD5}
    assert net["calls"] == [P.TGZ_URL] + [P.RAW_MIRROR + n for n in P.WORD_MD5]
    assert sorted(os.listdir(net["folder"])) == sorted(P.WORD_MD5)

    # the char files have no mirror: one line naming them, the folder and the archive's failure
    _raises_one_line("ptb-char", net["root"], "PTB data not found", "ptb.char.train.txt[.gz]", str(net["folder"]),
                     f"the download failed (URLError: {OFFLINE}: {P.TGZ_URL})")


def test_raw_mirror_gives_a_word_file_the_archive_lacks(net, tmp_path):
    net["serve"][P.TGZ_URL] = _tgz(tmp_path / "simple-examples.tgz", [n for n in TEXTS if n != "ptb.valid.txt"])
    (tmp_path / "ptb.valid.txt").write_text(TEXTS["ptb.valid.txt"])
    net["serve"][P.RAW_MIRROR + "ptb.valid.txt"] = tmp_path / "ptb.valid.txt"
    _task("ptb", net["root"]).corpus()
    assert net["calls"] == [P.TGZ_URL, P.RAW_MIRROR + "ptb.valid.txt"]


def test_a_char_file_the_archive_lacks_is_named(net, tmp_path):
    net["serve"][P.TGZ_URL] = _tgz(tmp_path / "simple-examples.tgz", [n for n in TEXTS if n != "ptb.char.valid.txt"])
    msg = _raises_one_line("ptb-char", net["root"], "missing ptb.char.valid.txt[.gz] in",
                           f"no ptb.char.valid.txt in simple-examples.tgz/simple-examples/data: {P.TGZ_URL}")
    assert "ptb.char.train.txt" not in msg


def test_failed_download_is_one_line_naming_the_url(net):
    net["partial"] = True
    _raises_one_line("ptb", net["root"], "PTB data not found", "ptb.train.txt[.gz]",
                     f"the download failed (URLError: {OFFLINE}: {P.RAW_MIRROR}ptb.test.txt)")
    assert os.listdir(net["folder"]) == []  # no partial file taken for the real one
    _raises_one_line("ptb-char", net["root"], f"the download failed (URLError: {OFFLINE}: {P.TGZ_URL})")


def test_downloads_off_never_call_the_network(net, monkeypatch):
    monkeypatch.setenv("SEQBENCH_DOWNLOAD", "0")
    for name in ("ptb", "ptb-char"):
        _raises_one_line(name, net["root"], "PTB data not found", str(net["folder"]),
                         "downloads are off (SEQBENCH_DOWNLOAD=0)")
    assert net["calls"] == [] and not net["root"].exists()


@pytest.mark.parametrize("made", [False, True])
def test_a_read_only_data_root_is_one_line(net, made):
    net["root"].mkdir()
    if made:
        net["folder"].mkdir()
    (net["folder"] if made else net["root"]).chmod(0o555)
    try:
        _raises_one_line("ptb", net["root"], "PTB data not found", f"the download cannot write to {net['folder']}")
    finally:
        (net["folder"] if made else net["root"]).chmod(0o755)
    assert net["calls"] == []


def test_ensure_archive_takes_files_from_an_inner_folder(net, tmp_path):
    net["serve"][P.TGZ_URL] = _tgz(tmp_path / "simple-examples.tgz")
    folder = tmp_path / "elsewhere" / "ptb"
    files = {"ptb.train.txt": SUMS["ptb.train.txt"], "ptb.char.test.txt": None}
    paths = data.ensure_archive(folder, files, P.TGZ_URL, "simple-examples.tgz", None, "PTB",
                                inner="simple-examples/data")
    assert paths == {n: folder / n for n in files} and sorted(os.listdir(folder)) == sorted(files)
    assert data.ensure_archive(folder, files, "http://unused", "x.tgz", None, "PTB", inner="x") == paths
    assert net["calls"] == [P.TGZ_URL]
