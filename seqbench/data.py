"""Data root, checksummed files, and a fast in-memory batch loader.

The data root is ``$SEQBENCH_DATA`` (default ``~/.cache/seqbench``). Every dataset lives in its
own folder below it, in the layout of its canonical source (MNIST: torchvision's
``mnist/MNIST/raw/*.gz``). Files are checked against their published checksums before use;
``SEQBENCH_VERIFY=0`` turns that off, for data a test generates. When a file is missing, it is
downloaded if ``SEQBENCH_DOWNLOAD`` is not ``0`` and the network answers; otherwise the run stops
with one line naming the files and where they go.
"""
from __future__ import annotations

import hashlib
import os
import stat
import sys
import tempfile
from pathlib import Path

import torch

from .errors import SeqbenchError


def data_root() -> Path:
    root = Path(os.environ.get("SEQBENCH_DATA", "~/.cache/seqbench")).expanduser()
    if root.exists() and not root.is_dir():
        raise SeqbenchError(f"data root {root} (SEQBENCH_DATA) is a file, not a folder")
    return root


def writable_dir(d: Path) -> bool:
    """Whether files may be created in ``d`` (or in the folders that would be made for it): its
    nearest existing folder grants write access and has a write permission bit set. The second
    test keeps root, for whom ``os.access`` is always true, out of a data root marked read-only."""
    p = Path(d)
    while not p.exists():
        if p.parent == p:
            return False
        p = p.parent
    try:
        mode = p.stat().st_mode
    except OSError:
        return False
    return p.is_dir() and os.access(p, os.W_OK) and bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


_WARNED: set = set()


def warn_once(msg: str) -> None:
    """``seqbench: warning: <msg>`` on stderr, once per process and message (rank 0 only in a distributed run)."""
    if msg in _WARNED or os.environ.get("RANK", "0") != "0":
        return
    _WARNED.add(msg)
    print(f"seqbench: warning: {msg}", file=sys.stderr, flush=True)


def subset_size(asked: int | None, available: int, key: str, split: str, unit: str, notes: dict) -> int:
    """How many of the ``available`` items (``unit``: "images") of ``split`` the subset setting ``key``
    (``asked``; None or 0: all) takes. Asking for more than there are takes them all; that is kept in
    ``notes[split]`` (key, asked, available: for the record's task info) and said once on stderr."""
    if not asked:
        return available
    if asked > available:
        notes[split] = {"key": key, "asked": int(asked), "available": int(available)}
        warn_once(f"{key}={asked} asks for more than the {count(available, unit)} of the {split} split: all "
                  f"{available} are used")
    return min(int(asked), available)


def take_subsets(parts: dict, params, unit: str, notes: dict) -> dict:
    """Each split's items (``parts``: {split: indices}) cut to its ``task.<split>_subset`` setting of
    ``params`` by ``subset_size`` (what was asked beyond a split goes to ``notes``)."""
    return {s: idx[: subset_size(getattr(params, f"{s}_subset"), len(idx), f"task.{s}_subset", s, unit, notes)]
            for s, idx in parts.items()}


def check_training_part(n: int, batch_size: int, what: str, cause: str) -> None:
    """A training part must hold at least one full batch: ``n`` (``what``: "images") fewer than
    ``batch_size`` refuses the run in one line naming ``cause`` (the setting that left so few)."""
    if n < batch_size:
        raise SeqbenchError(f"{cause} leaves {count(n, what)} for training, fewer than one batch ({batch_size}); "
                            f"a training part must hold at least one batch")


def count(n: int, unit: str) -> str:
    """``n`` and its plural ``unit`` ("images"), singular for one: "1 image", "0 images"."""
    return f"{n} {unit[:-1] if n == 1 and unit.endswith('s') else unit}"


def verify_enabled() -> bool:
    return os.environ.get("SEQBENCH_VERIFY", "1") != "0"


def download_enabled() -> bool:
    return os.environ.get("SEQBENCH_DOWNLOAD", "1") != "0"


def file_digest(path: Path, algo: str = "md5") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ensure_files(
    folder: Path, files: dict[str, str], urls: dict[str, list[str]], dataset: str, algo: str = "md5"
) -> dict[str, Path]:
    """Return paths to ``files`` (name -> checksum) in ``folder``, downloading what is missing.

    ``urls`` maps a name to candidate URLs. Raises SeqbenchError with one line when a file is
    missing and cannot be fetched, or when a checksum does not match.
    """
    missing = [n for n in files if not (folder / n).is_file()]
    why = "downloads are off (SEQBENCH_DOWNLOAD=0)"
    if missing and download_enabled():
        why = fetch_files(folder, missing, urls, files, algo)
        missing = [n for n in files if not (folder / n).is_file()]
    if missing:
        raise SeqbenchError(
            f"{dataset} data not found: missing {', '.join(missing)} in {folder}; {why} "
            f"(set SEQBENCH_DATA to a folder holding them)"
        )
    return _verified_paths(folder, files, dataset, algo)


def _verified_paths(folder: Path, files: dict[str, str], dataset: str, algo: str) -> dict[str, Path]:
    paths = {n: folder / n for n in files}
    if verify_enabled():
        for n, want in files.items():
            if want is None:  # no published checksum for this file (ADE20K's: the archive's md5 covers it)
                continue
            got = file_digest(paths[n], algo)
            if got != want:
                raise SeqbenchError(
                    f"{dataset} file {paths[n]} is corrupted: {algo} {got} != expected {want} "
                    f"(delete it to download again, or SEQBENCH_VERIFY=0 for generated test data)"
                )
    return paths


def ensure_archive(folder: Path, files: dict[str, str], url: str, archive: str, archive_md5: str,
                   dataset: str, inner: str | None = None) -> dict[str, Path]:
    """Return paths to ``files`` (name -> md5, or None where no checksum is published: only present)
    in ``folder``; when some are missing and downloads are allowed, the archive at ``url`` (md5
    ``archive_md5``) is fetched and unpacked by ``fetch_archive`` (``inner``: where the files sit
    inside it; None: the archive's own layout puts them in ``folder``). One-line SeqbenchError as
    ``ensure_files``."""
    missing = [n for n in files if not (folder / n).is_file()]
    why = "downloads are off (SEQBENCH_DOWNLOAD=0)"
    if missing and download_enabled():
        why = fetch_archive(folder, missing, url, archive, archive_md5, inner)
        missing = [n for n in files if not (folder / n).is_file()]
    if missing:
        raise SeqbenchError(f"{dataset} data not found: missing {', '.join(missing)} in {folder}; {why} "
                            f"(set SEQBENCH_DATA to a folder holding them)")
    return _verified_paths(folder, files, dataset, "md5")


def fetch_archive(folder: Path, names, url: str, archive: str, md5: str | None = None,
                  inner: str | None = None) -> str:
    """Download the archive at ``url`` as ``archive`` (md5 ``md5``; None: unchecked) and unpack it
    with torchvision's ``download_and_extract_archive``. ``inner=None``: into folder's parent, the
    archive's own layout putting ``names`` in ``folder``. Otherwise into a temporary folder inside
    ``folder``, from whose ``inner`` folder each of ``names`` not yet in ``folder`` is moved there;
    the rest is removed. Returns why a name is still missing ('' when none is)."""
    from torchvision.datasets.utils import download_and_extract_archive

    if inner is not None and not writable_dir(folder):
        return f"the download cannot write to {folder}"
    try:
        if inner is None:
            folder.parent.mkdir(parents=True, exist_ok=True)
            download_and_extract_archive(url, download_root=str(folder.parent), filename=archive, md5=md5,
                                         remove_finished=True)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=".download-", dir=folder) as tmp:
                download_and_extract_archive(url, download_root=tmp, filename=archive, md5=md5)
                for n in names:
                    src = Path(tmp, inner, n)
                    if src.is_file() and not (folder / n).exists():
                        os.replace(src, folder / n)
    except Exception as e:  # offline, mirror down, a truncated archive
        return f"the download failed ({short_reason(e)}: {url})"
    left = [n for n in names if not (folder / n).is_file()]
    where = archive if inner is None else f"{archive}/{inner}"
    return f"the download failed (no {', '.join(left)} in {where}: {url})" if left else ""


def fetch_files(folder: Path, names, urls: dict[str, list[str]], files: dict[str, str | None] | None = None,
                algo: str = "md5") -> str:
    """Download each of ``names`` from its candidate ``urls`` with torchvision's ``download_url``
    (md5-checked there when ``files`` gives its md5; None: unchecked); a failed attempt's partial
    file is removed. Returns why the last one that failed did (for the error line)."""
    from torchvision.datasets.utils import download_url

    files = files or {}
    why = "no download address is known for them"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"the download could not create {folder} ({e.strerror or type(e).__name__})"
    for n in names:
        want = files.get(n)
        for url in urls.get(n, []):
            try:
                # torchvision checks md5 itself; other algorithms are checked in ensure_files.
                download_url(url, str(folder), filename=n, md5=want if algo == "md5" else None)
                break
            except Exception as e:  # offline or mirror down: try the next mirror, then give up
                why = f"the download failed ({short_reason(e)}: {url})"
                part = folder / n
                if part.exists() and (want is None or (verify_enabled() and file_digest(part, algo) != want)):
                    part.unlink()
    return why


def short_reason(e: Exception) -> str:
    """A network error's short cause: 'URLError: [Errno -3] Temporary failure in name resolution'."""
    inner = getattr(e, "reason", None)
    text = str(inner if inner is not None else e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:120]}" if text else type(e).__name__


def epoch_key(seed: int, epoch: int) -> int:
    """One integer for (seed, epoch): the seed of an epoch's order, and what the per-sample or
    per-batch draws (augmentation) of the image and dense loaders derive theirs from."""
    return seed * 100_003 + epoch


class EpochLoader:
    """What every sample loader gives the runner: ``set_epoch``, ``num_samples``, ``len`` (batches,
    the last partial one kept) and, when ``shuffle``, an order drawn from a generator seeded by
    (seed, epoch) only, so a resumed run sees the same batches as an uninterrupted one. A subclass
    defines ``num_samples`` and ``__iter__``."""

    def __init__(self, batch_size: int, shuffle: bool = False, seed: int = 0):
        self.batch_size, self.shuffle, self.seed, self.epoch = batch_size, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def num_samples(self) -> int:
        raise NotImplementedError

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def epoch_key(self) -> int:
        return epoch_key(self.seed, self.epoch)

    def generator(self) -> torch.Generator:
        """This epoch's generator (the same two numbers, the same draws)."""
        return torch.Generator().manual_seed(self.epoch_key())

    def order(self) -> torch.Tensor | None:
        """This epoch's permutation of the samples; None (their own order) when not shuffling."""
        return torch.randperm(self.num_samples, generator=self.generator()) if self.shuffle else None


class TensorLoader(EpochLoader):
    """Mini-batches over in-memory tensors: no per-sample Python work, no worker processes."""

    def __init__(self, *tensors, batch_size: int, shuffle: bool = False, seed: int = 0):
        n = tensors[0].shape[0]
        assert all(t.shape[0] == n for t in tensors)
        super().__init__(batch_size, shuffle, seed)
        self.tensors = tensors

    @property
    def num_samples(self) -> int:
        return self.tensors[0].shape[0]

    def __iter__(self):
        n, order = self.num_samples, self.order()
        for i in range(0, n, self.batch_size):
            if order is None:
                yield tuple(t[i : i + self.batch_size] for t in self.tensors)
            else:
                idx = order[i : i + self.batch_size]
                yield tuple(t[idx] for t in self.tensors)
