"""CIFAR-10 / CIFAR-100: read out of archives written here in the published "python version"
format (a real tar.gz, the real folder and member names, pickled dicts with bytes keys), pixels
where the published layout puts them, split by seed, found in the documented order, downloaded
atomically and checked (MD5), refused with one clear line when damaged, and run end to end.

Nothing outside tmp_path is touched; the only download is from a server this module starts on
127.0.0.1."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import pickle
import socket
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

import prunelab.data.cifar as cifar
from prunelab.data import DataError, cifar10, cifar100
from prunelab.data.cifar import find_cifar
from prunelab.names import Metric, Tag

TRAIN, TEST = 20, 10  # images per training batch file, in the test file
ARCHIVE = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}
FOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
# A known pixel of the first test image: (plane, row, col) -> value.
KNOWN = {(0, 5, 7): 201, (1, 5, 7): 102, (2, 5, 7): 53, (0, 7, 5): 9}


def batch(rng, n: int, name: str) -> dict[bytes, object]:
    """A batch dict as the authors pickled it: N x 3072 uint8 rows of R, G, B planes, labels as lists."""
    d: dict[bytes, object] = {b"batch_label": b"a tiny batch", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
    d[b"filenames"] = [f"img_{i}.png".encode() for i in range(n)]
    if name == "cifar10":
        d[b"labels"] = rng.integers(0, 10, n).tolist()
    else:
        d[b"fine_labels"] = rng.integers(0, 100, n).tolist()
        d[b"coarse_labels"] = rng.integers(0, 20, n).tolist()
    return d


def members(name: str, seed: int = 0) -> dict[str, dict]:
    """The batch dicts of a tiny archive, by member name (the first test image holds KNOWN)."""
    rng = np.random.default_rng(seed)
    if name == "cifar10":
        found = {f"data_batch_{i}": batch(rng, TRAIN, name) for i in range(1, 6)}
        found["test_batch"] = batch(rng, TEST, name)
        found["batches.meta"] = {b"label_names": [b"airplane", b"automobile"], b"num_vis": 3072}
        test = found["test_batch"]
    else:
        found = {"train": batch(rng, 5 * TRAIN, name), "test": batch(rng, TEST, name)}
        found["meta"] = {b"fine_label_names": [b"apple"], b"coarse_label_names": [b"fruit"]}
        test = found["test"]
    for (plane, row, col), value in KNOWN.items():
        test[b"data"][0, plane * 1024 + row * 32 + col] = value
    return found


class Py2Pickler(pickle._Pickler):
    """Python 2's cPickle as the authors used it: str and bytes both written as Python 2 str."""

    def save_bytes(self, obj):
        n = len(obj)
        self.write(
            pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256 else pickle.BINSTRING + struct.pack("<i", n) + obj
        )
        self.memoize(obj)

    def save_str(self, obj):
        self.save_bytes(obj.encode("latin-1"))

    dispatch = {**pickle._Pickler.dispatch, bytes: save_bytes, str: save_str}


def pickled(obj, protocol: int | str = 2) -> bytes:
    """``obj`` pickled; protocol "python 2": as the published files are (numpy 1 names, Python 2 strings)."""
    if protocol != "python 2":
        return pickle.dumps(obj, protocol=int(protocol))
    out = io.BytesIO()
    Py2Pickler(out, protocol=2).dump(obj)
    return out.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def write_archive(folder: Path, name: str, contents: dict[str, bytes] | None = None, seed: int = 0) -> dict:
    """``folder/<archive>`` as published: a gzip'd tar of ``<FOLDER>/<member>``; returns the dicts."""
    dicts = members(name, seed)
    contents = {m: pickled(d) for m, d in dicts.items()} if contents is None else contents
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / ARCHIVE[name], "w:gz") as tar:
        info = tarfile.TarInfo(FOLDER[name])
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for member, data in contents.items():
            info = tarfile.TarInfo(f"{FOLDER[name]}/{member}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return dicts


def write_extracted(folder: Path, name: str) -> dict:
    """``folder/<FOLDER>/<member>``: the archive as ``tar xzf`` leaves it."""
    dicts = members(name)
    (folder / FOLDER[name]).mkdir(parents=True, exist_ok=True)
    for member, d in dicts.items():
        (folder / FOLDER[name] / member).write_bytes(pickled(d))
    return dicts


def images(dicts: dict, names) -> torch.Tensor:
    return torch.from_numpy(np.concatenate([dicts[n][b"data"] for n in names])).reshape(-1, 3, 32, 32)


def labels(dicts: dict, names, key=b"labels") -> torch.Tensor:
    return torch.tensor([y for n in names for y in dicts[n][key]])


TRAIN_MEMBERS = [f"data_batch_{i}" for i in range(1, 6)]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def pixels(splits, x: torch.Tensor) -> torch.Tensor:
    """Standardisation undone: back to 0..255 pixel values."""
    return (splits.raw(x) * 255).round().to(torch.uint8)


@pytest.fixture(autouse=True)
def no_real_locations(tmp_path, monkeypatch):
    """Keep every lookup inside tmp_path: no $PRUNELAB_DATA, a fresh user cache, no proxies."""
    monkeypatch.delenv("PRUNELAB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


# --- reading ------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["python 2", 2, 4, 5])
def test_cifar10_images_labels_and_shapes_are_the_published_ones(tmp_path, protocol):
    dicts = members("cifar10")
    write_archive(tmp_path, "cifar10", {m: pickled(d, protocol) for m, d in dicts.items()})

    splits = cifar10(root=tmp_path, val_size=10, url=None, verify=False)

    assert (len(splits.train), len(splits.val), len(splits.test)) == (5 * TRAIN - 10, 10, TEST)
    assert splits.in_shape == (3, 32, 32)
    assert splits.num_classes == 10
    assert splits.name == "cifar10"
    assert splits.train.x.dtype == torch.float32
    assert splits.train.y.dtype == torch.int64
    assert abs(splits.train.x.mean().item()) < 1e-5  # standardised with the training statistics
    # The test split is the test file, in order, each pixel where the published layout puts it.
    assert torch.equal(pixels(splits, splits.test.x), images(dicts, ["test_batch"]))
    assert torch.equal(splits.test.y, labels(dicts, ["test_batch"]))
    for (plane, row, col), value in KNOWN.items():
        assert pixels(splits, splits.test.x)[0, plane, row, col] == value
    torch.testing.assert_close(splits.test_raw * 255, images(dicts, ["test_batch"]).float())


@pytest.mark.parametrize(("kind", "key", "classes"), [("fine", b"fine_labels", 100), ("coarse", b"coarse_labels", 20)])
def test_cifar100_fine_or_coarse_labels(tmp_path, kind, key, classes):
    dicts = write_archive(tmp_path, "cifar100")

    splits = cifar100(root=tmp_path, val_size=10, url=None, verify=False, labels=kind)

    assert splits.num_classes == classes
    assert splits.in_shape == (3, 32, 32)
    assert splits.name == "cifar100"
    assert torch.equal(splits.test.y, labels(dicts, ["test"], key))
    assert torch.equal(pixels(splits, splits.test.x), images(dicts, ["test"]))
    pooled = torch.cat([splits.train.y, splits.val.y]).sort().values
    assert torch.equal(pooled, labels(dicts, ["train"], key).sort().values)


def test_cifar100_refuses_another_label_kind(tmp_path):
    write_archive(tmp_path, "cifar100")
    with pytest.raises(DataError, match="dataset.labels='medium' must be 'fine' .* or 'coarse'"):
        cifar100(root=tmp_path, url=None, verify=False, labels="medium")


def test_validation_is_held_out_of_training_and_chosen_by_seed(tmp_path):
    dicts = write_archive(tmp_path, "cifar10")

    def split(seed):
        return cifar10(root=tmp_path, val_size=10, seed=seed, url=None, verify=False)

    first, again, other = split(0), split(0), split(1)
    assert torch.equal(first.val.x, again.val.x)
    assert torch.equal(first.train.y, again.train.y)
    assert not torch.equal(first.val.x, other.val.x)
    # Train and validation together are the 100 training images, each exactly once.
    rows = [tuple(r) for s in (first.train, first.val) for r in pixels(first, s.x).flatten(1).tolist()]
    assert sorted(rows) == sorted(tuple(r) for r in images(dicts, TRAIN_MEMBERS).flatten(1).tolist())
    assert len(set(rows)) == 5 * TRAIN
    pooled = torch.cat([first.train.y, first.val.y]).sort().values
    assert torch.equal(pooled, labels(dicts, TRAIN_MEMBERS).sort().values)


def test_the_archive_is_parsed_once_per_process_until_it_changes(tmp_path, monkeypatch):
    """Sweep points in one process share the parsed arrays, whatever their seed."""
    write_archive(tmp_path, "cifar10")
    reads = []
    real = cifar.read_cifar
    monkeypatch.setattr(cifar, "read_cifar", lambda path, name: reads.append(path) or real(path, name))

    cifar10(root=tmp_path, val_size=10, seed=0, url=None, verify=False)
    cifar10(root=tmp_path, val_size=10, seed=1, url=None, verify=False)
    assert len(reads) == 1
    dicts = write_archive(tmp_path, "cifar10", seed=7)  # rewritten: read again
    changed = cifar10(root=tmp_path, val_size=10, url=None, verify=False)
    assert len(reads) == 2
    assert torch.equal(changed.test.y, labels(dicts, ["test_batch"]))


# --- checksums ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def md5_only(monkeypatch):
    """The tests' archives stand in for the published ones by their MD5 (patched in per test); the
    published SHA-256s are checked by the one test that sets its own."""
    monkeypatch.setattr(cifar, "CIFAR10_SHA256", None)
    monkeypatch.setattr(cifar, "CIFAR100_SHA256", None)


PUBLISHED_SHA256 = (cifar.CIFAR10_SHA256, cifar.CIFAR100_SHA256)  # before the fixture patches them away


def test_the_published_sha256s_are_the_ones_keras_and_torchvision_check():
    assert PUBLISHED_SHA256 == (
        "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
        "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
    )


def test_verify_checks_the_archive_against_the_published_md5(tmp_path, monkeypatch):
    write_archive(tmp_path, "cifar10")
    with pytest.raises(DataError, match=f"{tmp_path / ARCHIVE['cifar10']} does not match its published MD5"):
        cifar10(root=tmp_path, val_size=10, url=None)  # a tiny archive is not the published one
    monkeypatch.setattr(cifar, "CIFAR10_MD5", md5(tmp_path / ARCHIVE["cifar10"]))
    assert len(cifar10(root=tmp_path, val_size=10, url=None).test) == TEST
    monkeypatch.setattr(cifar, "CIFAR10_SHA256", "0" * 64)  # and the SHA-256
    with pytest.raises(DataError, match="does not match its published SHA-256"):
        cifar10(root=tmp_path, val_size=10, url=None)
    monkeypatch.setattr(
        cifar, "CIFAR10_SHA256", hashlib.sha256((tmp_path / ARCHIVE["cifar10"]).read_bytes()).hexdigest()
    )
    assert len(cifar10(root=tmp_path, val_size=10, url=None).test) == TEST


def test_verify_checks_an_extracted_folder_file_by_file(tmp_path, monkeypatch):
    write_extracted(tmp_path, "cifar100")
    with pytest.raises(DataError, match="cifar-100-python/train does not match its expected"):
        cifar100(root=tmp_path, val_size=10, url=None)
    known = {m: md5(tmp_path / FOLDER["cifar100"] / m) for m in ("train", "test")}
    monkeypatch.setitem(cifar.MEMBER_MD5, "cifar100", known)
    assert cifar100(root=tmp_path, val_size=10, url=None).num_classes == 100


# --- where the files are looked for -------------------------------------------------------------


def test_found_in_dataset_root_as_archive_or_extracted_folder(tmp_path):
    archive = tmp_path / "archive"
    dicts = write_archive(archive, "cifar10")
    extracted = tmp_path / "extracted"
    write_extracted(extracted, "cifar10")

    assert find_cifar("cifar10", archive) == archive / ARCHIVE["cifar10"]
    assert find_cifar("cifar10", extracted) == extracted / FOLDER["cifar10"]
    assert find_cifar("cifar10", extracted / FOLDER["cifar10"]) == extracted / FOLDER["cifar10"]
    from_folder = cifar10(root=extracted, val_size=10, url=None, verify=False)
    assert torch.equal(pixels(from_folder, from_folder.test.x), images(dicts, ["test_batch"]))
    write_archive(extracted, "cifar10")  # beside the folder: the archive (checkable) wins
    assert find_cifar("cifar10", extracted) == extracted / ARCHIVE["cifar10"]


def test_found_via_prunelab_data_then_the_user_cache(tmp_path, monkeypatch):
    env, cache = tmp_path / "env", tmp_path / "xdg-cache" / "prunelab" / "cifar100"
    write_archive(env / "cifar100", "cifar100")
    write_archive(cache, "cifar100", seed=3)
    monkeypatch.setenv("PRUNELAB_DATA", str(env))

    assert find_cifar("cifar100") == env / "cifar100" / ARCHIVE["cifar100"]
    assert cifar100(val_size=10, url=None, verify=False).num_classes == 100
    monkeypatch.delenv("PRUNELAB_DATA")
    assert find_cifar("cifar100") == cache / ARCHIVE["cifar100"]


def test_a_given_root_is_the_only_place_looked_at(tmp_path, monkeypatch):
    write_archive(tmp_path / "env" / "cifar10", "cifar10")  # a complete copy that must not be used
    monkeypatch.setenv("PRUNELAB_DATA", str(tmp_path / "env"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as error:
        cifar10(root=tmp_path / "empty", url=None)
    assert str(error.value) == (
        f"dataset.root={tmp_path / 'empty'} holds neither cifar-10-python.tar.gz nor cifar-10-batches-py/ and "
        "downloading is disabled (dataset.url=null): put cifar-10-python.tar.gz there, or leave dataset.root unset"
    )
    with pytest.raises(DataError, match="dataset.root=/nonexistent/dir is not a folder"):
        cifar10(root="/nonexistent/dir", url=None)


# --- downloading --------------------------------------------------------------------------------


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(tmp_path):
    """A local HTTP server on 127.0.0.1 serving ``tmp_path/mirror``: its base URL."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_download_lands_checked_in_the_user_cache_atomically(tmp_path, mirror, monkeypatch):
    dicts = write_archive(tmp_path / "mirror", "cifar10")
    served = tmp_path / "mirror" / ARCHIVE["cifar10"]
    monkeypatch.setattr(cifar, "CIFAR10_MD5", md5(served))
    cache = tmp_path / "xdg-cache" / "prunelab" / "cifar10"
    replaced = []
    real_replace = os.replace

    def spy(src, dst):  # the archive appears under its name in one rename, complete
        replaced.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)

    splits = cifar10(val_size=10, url=mirror + ARCHIVE["cifar10"])

    assert replaced == [(replaced[0][0], cache / ARCHIVE["cifar10"])]
    assert replaced[0][0].suffix == ".part"
    assert [p.name for p in cache.iterdir()] == [ARCHIVE["cifar10"]]
    assert (cache / ARCHIVE["cifar10"]).read_bytes() == served.read_bytes()
    assert torch.equal(splits.test.y, labels(dicts, ["test_batch"]))
    served.unlink()  # now found in the cache: not downloaded again
    assert len(cifar10(val_size=10, url=mirror + ARCHIVE["cifar10"]).test) == TEST


@pytest.mark.parametrize("damage", ["wrong MD5", "corrupted in transit"])
def test_a_download_that_does_not_match_is_refused_and_left_out(tmp_path, mirror, monkeypatch, damage):
    write_archive(tmp_path / "mirror", "cifar10")
    served = tmp_path / "mirror" / ARCHIVE["cifar10"]
    if damage == "corrupted in transit":
        monkeypatch.setattr(cifar, "CIFAR10_MD5", md5(served))
        served.write_bytes(served.read_bytes()[:-100])
    url = mirror + ARCHIVE["cifar10"]
    with pytest.raises(DataError, match=f"the download from {url} does not match the published MD5"):
        cifar10(val_size=10, url=url)
    cache = tmp_path / "xdg-cache" / "prunelab" / "cifar10"
    assert list(cache.iterdir()) == []  # neither the archive nor a .part file


def test_offline_with_no_copy_says_where_it_looked_and_what_to_do(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("PRUNELAB_DATA", str(tmp_path / "env"))
    url = f"http://127.0.0.1:{port}/cifar-100-python.tar.gz"
    with pytest.raises(DataError) as error:
        cifar100(url=url)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("CIFAR-100 not found in ")
    for text in (
        str(tmp_path / "env" / "cifar100"),
        str(tmp_path / "xdg-cache" / "prunelab" / "cifar100"),
        f"download from {url} failed (",
        "put cifar-100-python.tar.gz in a folder and pass dataset.root=FOLDER (or set PRUNELAB_DATA)",
    ):
        assert text in message
    with pytest.raises(DataError, match=r"downloading is disabled \(dataset.url=null\)"):
        cifar100(url=None)


# --- damaged files ------------------------------------------------------------------------------


class Evil:
    def __reduce__(self):
        return (os.getcwd, ())  # harmless here, but a pickle may name any callable


def damaged(kind: str, folder: Path) -> tuple[Path, str]:
    """A cifar-10 archive damaged as ``kind``: its path and words the refusal must hold."""
    path = folder / ARCHIVE["cifar10"]
    dicts = members("cifar10")
    contents = {m: pickled(d) for m, d in dicts.items()}
    if kind == "truncated":
        write_archive(folder, "cifar10")
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return path, "is not a readable CIFAR-10 archive"
    if kind == "not gzip":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"<html>Service unavailable</html>")
        return path, "is not a readable CIFAR-10 archive"
    if kind == "missing member":
        del contents["test_batch"]
        write_archive(folder, "cifar10", contents)
        return path, "lacks cifar-10-batches-py/test_batch"
    if kind == "wrong shape":
        dicts["data_batch_3"][b"data"] = dicts["data_batch_3"][b"data"][:, :3000]
        words = "data_batch_3) holds b'data' of uint8 (20, 3000), not N x 3072 uint8"
    elif kind == "wrong dtype":
        dicts["data_batch_3"][b"data"] = dicts["data_batch_3"][b"data"].astype(np.float32)
        words = "holds b'data' of float32 (20, 3072)"
    elif kind == "labels count":
        dicts["test_batch"][b"labels"] = dicts["test_batch"][b"labels"][:-1]
        words = "test_batch) does not hold 10 labels in [0, 10)"
    elif kind == "labels range":
        dicts["data_batch_1"][b"labels"][0] = 10
        words = "data_batch_1) does not hold 20 labels in [0, 10)"
    elif kind == "not a dict":
        dicts["data_batch_2"] = [1, 2, 3]
        words = "data_batch_2) holds b'data' of NoneType"
    elif kind == "truncated pickle":
        contents["data_batch_4"] = contents["data_batch_4"][:1000]
        write_archive(folder, "cifar10", contents)
        return path, "data_batch_4) is not a readable CIFAR batch"
    elif kind == "a callable":
        contents["data_batch_5"] = pickled({b"data": Evil()})
        write_archive(folder, "cifar10", contents)
        return path, "names posix.getcwd, which a CIFAR batch does not"
    write_archive(folder, "cifar10", {m: pickled(d) for m, d in dicts.items()})
    return path, words


@pytest.mark.parametrize(
    "kind",
    [
        "truncated",
        "not gzip",
        "missing member",
        "wrong shape",
        "wrong dtype",
        "labels count",
        "labels range",
        "not a dict",
        "truncated pickle",
        "a callable",
    ],
)
def test_a_damaged_archive_is_refused_with_a_clear_message(tmp_path, kind):
    path, words = damaged(kind, tmp_path)
    with pytest.raises(DataError) as error:
        cifar10(root=tmp_path, val_size=10, url=None, verify=False)
    message = str(error.value)
    assert message.startswith(str(path))
    assert words in message
    assert "\n" not in message


def test_only_the_expected_members_are_unpickled(tmp_path):
    """batches.meta (and anything else) is never read: a hostile one changes nothing."""
    contents = {m: pickled(d) for m, d in members("cifar10").items()}
    contents["batches.meta"] = pickled({b"label_names": Evil()})
    contents["readme.html"] = b"not a pickle"
    write_archive(tmp_path, "cifar10", contents)
    assert len(cifar10(root=tmp_path, val_size=10, url=None, verify=False).test) == TEST


def test_a_damaged_extracted_batch_names_its_file(tmp_path):
    write_extracted(tmp_path, "cifar10")
    bad = tmp_path / FOLDER["cifar10"] / "data_batch_2"
    bad.write_bytes(bad.read_bytes()[:500])
    with pytest.raises(DataError, match=f"^{bad} is not a readable CIFAR batch"):
        cifar10(root=tmp_path, val_size=10, url=None, verify=False)


# --- end to end ---------------------------------------------------------------------------------


def test_a_run_prunes_resnet20_on_cifar10(tmp_path, make_cfg, monkeypatch):
    from prunelab.experiment.runner import run

    write_archive(tmp_path / "data", "cifar10")
    monkeypatch.setattr(cifar, "CIFAR10_MD5", md5(tmp_path / "data" / ARCHIVE["cifar10"]))  # verified as configured
    cfg = make_cfg("dataset=cifar10", f"dataset.root={tmp_path / 'data'}", "dataset.val_size=10", "model=resnet20")

    metrics = run(cfg)

    assert 0 <= metrics[Metric.at(Metric.FINETUNED, Metric.TEST_ACCURACY)] <= 1
    client = MlflowClient(cfg.tracking.uri)
    found = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (pruned,) = [r for r in found if r.data.tags.get(Tag.ROLE) == "pruned"]
    assert pruned.info.status == "FINISHED"
    assert pruned.data.params["dataset"] == "cifar10"


def test_the_cifar_study_runs_at_cpu_size_on_an_archive_in_the_published_format(cli, workdir, tmp_path):
    """cifar10_resnet56_structured_smoke as a user runs it: its four points (MACs 1/2.1 and 1/2.5,
    global and local), each pruned within its budget."""
    write_archive(tmp_path / "cifar", "cifar10")  # 100 training and 10 test images
    result = cli(
        "-m",
        "+experiment=cifar10_resnet56_structured_smoke",
        f"dataset.root={tmp_path / 'cifar'}",
        "dataset.verify=false",  # a small archive is not the published one
        "dataset.val_size=10",
        "train.batch_size=30",
        tiny=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "cifar10_resnet56_structured_smoke"]
    points = client.search_runs([experiment.experiment_id], "tags.`prunelab.role` = 'pruned'")
    assert len(points) == 4
    assert all(p.info.status == "FINISHED" for p in points)
    assert {(p.data.params["budget.macs"], p.data.params["scope"]) for p in points} == {
        (m, s) for m in ("0.476", "0.4") for s in ("global", "local")
    }
    for p in points:
        assert p.data.params["augment._target_"].endswith("CropFlip")
        assert p.data.params["model.depth"] == "20"
        assert p.data.metrics[Metric.cost_ratio(Metric.MACS)] <= float(p.data.params["budget.macs"]) + 1e-6
