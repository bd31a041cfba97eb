"""Standard data sets by name, downloaded once: against a loopback HTTP server serving archives and idx files made
here in the real formats (never the network), with a checksum table of their own in place of the published one.

Cases: the published table is torchvision's; a first use downloads once and a second asks nothing; a corrupted
download, a transfer cut off, a server that is not there and a file put in the cache by hand that is wrong are each
one line naming the URL, the file, its MD5 and where to put it, with nothing used or extracted; an archive with a
member leading out of its folder, or a link to /etc, is refused before anything is extracted.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from convcanon.cli import main
from convcanon.data import download, open_data, parse_data
from convcanon.data.download import REMOTES, DownloadError, data_root

CIFAR10_FILES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]


# ---- files in the real formats -----------------------------------------------------------------------------------

def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def cifar10_archive(extra=None) -> bytes:
    """cifar-10-python.tar.gz as the CIFAR site lays it out: real pickled batches (protocol 2) of 3 random images,
    under cifar-10-batches-py/; ``extra(tar)`` may add members."""
    buf, rng = io.BytesIO(), np.random.default_rng(0)
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in CIFAR10_FILES:
            batch = {b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), b"labels": [0, 1, 9]}
            _add(tar, f"cifar-10-batches-py/{name}", pickle.dumps(batch, protocol=2))
        names = [f"class{i}".encode() for i in range(10)]
        _add(tar, "cifar-10-batches-py/batches.meta", pickle.dumps({b"label_names": names}, protocol=2))
        if extra:
            extra(tar)
    return buf.getvalue()


def idx(array: np.ndarray) -> bytes:
    """An unsigned-byte idx file, gzip'd as published."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def mnist_files(train: int = 6, test: int = 4) -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    return {"train-images-idx3-ubyte.gz": idx(rng.integers(0, 256, (train, 28, 28))),
            "train-labels-idx1-ubyte.gz": idx(np.arange(train) % 10),
            "t10k-images-idx3-ubyte.gz": idx(rng.integers(0, 256, (test, 28, 28))),
            "t10k-labels-idx1-ubyte.gz": idx(np.arange(test) % 10)}


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ---- the loopback server -----------------------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        server = self.server
        server.requests.append(self.path)
        body = server.files.get(self.path.lstrip("/"))
        if body is None:
            self.send_error(404)
            return
        cut = server.cut_at.get(self.path.lstrip("/"))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body if cut is None else body[:cut])
        self.close_connection = True  # after a cut: the client sees the connection end before Content-Length

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    """A loopback server of ``server.files`` (name -> bytes), counting ``server.requests``; ``server.cut_at[name]``
    ends the transfer after that many bytes. CONVCANON_DATA_MIRROR points at it."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.requests, httpd.cut_at = {}, [], {}
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv(download.MIRROR_ENV, f"http://127.0.0.1:{httpd.server_address[1]}/")
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def serve(monkeypatch, server, name: str, files: dict[str, bytes], table: dict[str, bytes] | None = None) -> None:
    """Serve ``files`` for data set ``name``, with the MD5s of ``table`` (default: of ``files``) as its checksums."""
    server.files.update(files)
    sums = tuple((f, md5((table or files)[f])) for f, _ in REMOTES[name].files)
    monkeypatch.setitem(REMOTES, name, dataclasses.replace(REMOTES[name], files=sums))


def entries(root: Path) -> list[str]:
    """Everything under ``root`` but the download lock."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name != ".download.lock")


# ---- the published table -----------------------------------------------------------------------------------------

def test_the_urls_files_and_md5s_are_torchvisions():
    from torchvision.datasets import CIFAR10, CIFAR100, MNIST, FashionMNIST

    for name, cls in (("cifar10", CIFAR10), ("cifar100", CIFAR100)):
        remote = REMOTES[name]
        assert remote.files == ((cls.filename, cls.tgz_md5),)
        assert [b + cls.filename for b in remote.mirrors] == [cls.url]
        assert remote.folder == cls.base_folder and remote.archive
        assert set(remote.expected) == {f for f, _ in cls.train_list + cls.test_list} | {cls.meta["filename"]}
    for name, cls in (("mnist", MNIST), ("fashion-mnist", FashionMNIST)):
        remote = REMOTES[name]
        assert remote.files == tuple(cls.resources) and list(remote.mirrors) == cls.mirrors
        assert remote.folder == f"{cls.__name__}/raw" and not remote.archive  # torchvision's raw_folder
    from convcanon.data.mnist import LAYOUTS

    assert list(LAYOUTS["fashion-mnist"].classes) == FashionMNIST.classes


def test_the_data_root_is_the_flag_then_the_environment_then_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("CONVCANON_DATA", str(tmp_path / "env"))
    assert data_root(tmp_path / "flag") == tmp_path / "flag"
    assert data_root() == tmp_path / "env"
    monkeypatch.delenv("CONVCANON_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_root() == tmp_path / "xdg" / "convcanon" / "data"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # the XDG spec: only an absolute path counts
    assert data_root() == Path("~/.cache/convcanon/data").expanduser()


def test_parsing_a_named_set_downloads_and_creates_nothing(tmp_path, server):
    spec = parse_data("cifar10", data_root=tmp_path / "root")
    assert (spec.kind, spec.path, spec.download, spec.in_chans, spec.image_size, spec.num_classes) == (
        "cifar10", tmp_path / "root" / "cifar-10-batches-py", True, 3, 32, 10)
    assert parse_data("fashion-mnist", data_root=tmp_path / "root").path == tmp_path / "root" / "FashionMNIST" / "raw"
    assert not (tmp_path / "root").exists() and server.requests == []


# ---- downloads that work -----------------------------------------------------------------------------------------

def test_cifar10_is_downloaded_once_and_then_read_from_the_cache(tmp_path, server, monkeypatch, capsys):
    archive = cifar10_archive()
    serve(monkeypatch, server, "cifar10", {"cifar-10-python.tar.gz": archive})
    root = tmp_path / "root"
    info = open_data("cifar10", data_root=root, progress=False).info
    assert (info.name, info.spec, info.train_size, info.test_size, info.classes[9]) == ("cifar10", "cifar10", 15, 3,
                                                                                       "class9")
    assert server.requests == ["/cifar-10-python.tar.gz"]
    assert entries(root) == sorted(["cifar-10-python.tar.gz", "cifar-10-batches-py",
                                    *(f"cifar-10-batches-py/{f}" for f in [*CIFAR10_FILES, "batches.meta"])])
    assert (root / "cifar-10-python.tar.gz").read_bytes() == archive
    # Again, through the command line: no request.
    assert main(["scan", "--data", "cifar10", "--data-root", str(root)]) == 0
    assert "clean: every file of cifar10 read and checked" in capsys.readouterr().out
    assert server.requests == ["/cifar-10-python.tar.gz"]


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_mnist_and_fashion_mnist_are_downloaded_once(tmp_path, server, monkeypatch, name):
    files = mnist_files()
    serve(monkeypatch, server, name, files)
    monkeypatch.setenv("CONVCANON_DATA", str(tmp_path / "env-root"))  # the environment names the root
    source = open_data(name, progress=False)
    info = source.info
    assert (info.in_chans, info.image_size, info.num_classes, info.train_size, info.test_size) == (1, 28, 10, 6, 4)
    assert info.classes[0] == ("0" if name == "mnist" else "T-shirt/top")
    x, y = next(source.test_batches(4))
    assert x.shape == (4, 1, 28, 28) and y.tolist() == [0, 1, 2, 3]
    assert sorted(server.requests) == sorted(f"/{f}" for f in files)
    open_data(name, progress=False)
    assert len(server.requests) == 4
    folder = tmp_path / "env-root" / REMOTES[name].folder
    assert sorted(p.name for p in folder.iterdir()) == sorted(files)


def test_a_file_put_in_the_cache_by_hand_is_used_without_a_request(tmp_path, server, monkeypatch):
    archive = cifar10_archive()
    serve(monkeypatch, server, "cifar10", {}, table={"cifar-10-python.tar.gz": archive})
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "cifar-10-python.tar.gz").write_bytes(archive)
    assert open_data("cifar10", data_root=tmp_path / "root", progress=False).info.train_size == 15
    assert server.requests == []


def test_train_downloads_a_named_set_records_the_name_and_resumes_from_a_moved_root(tmp_path, server, monkeypatch):
    import json

    serve(monkeypatch, server, "mnist", mnist_files(train=8))
    out = tmp_path / "run"
    code = main(["train", "--data", "mnist", "--data-root", str(tmp_path / "root"), "--model", "resnet20",
                 "--epochs", "1", "--max-steps", "1", "--batch-size", "4", "--out", str(out), "--no-progress",
                 "--device", "cpu"])
    assert code == 0
    record = json.loads((out / "run.json").read_text())
    assert record["data"]["spec"] == "mnist" and record["data"]["in_chans"] == 1
    assert len(server.requests) == 4
    # The cache moves (another machine): the resume is told where, and asks nothing.
    (tmp_path / "root").rename(tmp_path / "moved")
    assert main(["train", "--resume", str(out), "--data-root", str(tmp_path / "moved"), "--no-progress"]) == 0
    assert len(server.requests) == 4 and json.loads((out / "summary.json").read_text())["steps"] == 2


# ---- downloads that fail: one line, nothing used -----------------------------------------------------------------

def no_traceback(text: str) -> None:
    assert "Traceback" not in text, text[-3000:]


def _refused(capsys, argv: list[str], code: int, *expected: str) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err
    no_traceback(err)
    lines = err.strip().splitlines()
    assert all(line.startswith("downloading ") for line in lines[:-1]), err  # one line per download tried
    error = lines[-1]
    assert error.startswith(f"convcanon {argv[0]}: error: "), err
    for text in expected:
        assert text in error, err
    return error


def test_a_corrupted_download_is_refused_and_nothing_is_kept(tmp_path, server, monkeypatch, capsys):
    archive = cifar10_archive()
    damaged = archive[:100] + bytes([archive[100] ^ 1]) + archive[101:]
    serve(monkeypatch, server, "cifar10", {"cifar-10-python.tar.gz": damaged},
          table={"cifar-10-python.tar.gz": archive})
    root = tmp_path / "root"
    url = f"{os.environ[download.MIRROR_ENV]}cifar-10-python.tar.gz"
    _refused(capsys, ["scan", "--data", "cifar10", "--data-root", str(root)], 1, url,
             f"has MD5 {md5(damaged)}, not the published {md5(archive)}",
             f"put it at {root / 'cifar-10-python.tar.gz'} (MD5 {md5(archive)})", "--data cifar10:PATH")
    assert entries(root) == []  # no archive, no .part file, nothing extracted


def test_an_interrupted_download_is_never_used(tmp_path, server, monkeypatch):
    files = mnist_files()
    serve(monkeypatch, server, "mnist", files)
    server.cut_at["t10k-images-idx3-ubyte.gz"] = 50
    root = tmp_path / "root"
    with pytest.raises(DownloadError, match=r"t10k-images-idx3-ubyte\.gz: could not download .*the transfer stopped "
                                            r"after 50 of [\d,]+ bytes"):
        open_data("mnist", data_root=root, progress=False)
    folder = root / "MNIST" / "raw"
    assert "t10k-images-idx3-ubyte.gz" not in os.listdir(folder) and not list(folder.glob(".*.part"))
    del server.cut_at["t10k-images-idx3-ubyte.gz"]  # the server recovers: only what is missing is asked for
    before = len(server.requests)
    assert open_data("mnist", data_root=root, progress=False).info.test_size == 4
    assert server.requests[before:] == ["/t10k-images-idx3-ubyte.gz", "/t10k-labels-idx1-ubyte.gz"]


def test_a_part_file_left_by_a_killed_download_is_removed_not_used(tmp_path, server, monkeypatch):
    archive = cifar10_archive()
    serve(monkeypatch, server, "cifar10", {"cifar-10-python.tar.gz": archive})
    root = tmp_path / "root"
    root.mkdir()
    stale = root / ".cifar-10-python.tar.gz.x1y2.part"
    stale.write_bytes(archive[:1000])
    assert open_data("cifar10", data_root=root, progress=False).info.train_size == 15
    assert not stale.exists() and server.requests == ["/cifar-10-python.tar.gz"]


def test_offline_the_error_names_the_url_the_file_its_md5_and_where_to_put_it(tmp_path, monkeypatch, capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(download.MIRROR_ENV, f"http://127.0.0.1:{port}/")
    root = tmp_path / "root"
    _refused(capsys, ["train", "--data", "cifar100", "--data-root", str(root), "--out", str(tmp_path / "run")], 1,
             f"http://127.0.0.1:{port}/cifar-100-python.tar.gz: could not download cifar-100-python.tar.gz",
             "refused", f"put it at {root / 'cifar-100-python.tar.gz'} (MD5 eb9058c3a382ffc7106e4002c42a8d85)")
    assert not (tmp_path / "run").exists()  # the download comes before the run directory


def test_with_downloads_off_the_public_server_is_never_asked(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(download.MIRROR_ENV, raising=False)
    monkeypatch.setenv(download.OFFLINE_ENV, "1")
    root = tmp_path / "root"
    _refused(capsys, ["scan", "--data", "mnist", "--data-root", str(root)], 1,
             "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz: ",
             "downloads are off here (CONVCANON_NO_DOWNLOAD is set)",
             f"put it at {root / 'MNIST' / 'raw' / 'train-images-idx3-ubyte.gz'} (MD5 "
             "f68b3c2dcbeaaa9fbdd348bbdeb94873)")


def test_a_wrong_file_in_the_cache_is_named_not_replaced(tmp_path, server, monkeypatch, capsys):
    files = mnist_files()
    serve(monkeypatch, server, "mnist", files)
    folder = tmp_path / "root" / "MNIST" / "raw"
    folder.mkdir(parents=True)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(b"not the file")
    _refused(capsys, ["scan", "--data", "mnist", "--data-root", str(tmp_path / "root")], 2,
             f"{folder / 'train-labels-idx1-ubyte.gz'} has MD5 {md5(b'not the file')}, not the published "
             f"{md5(files['train-labels-idx1-ubyte.gz'])}", "delete it to download it again")
    assert (folder / "train-labels-idx1-ubyte.gz").read_bytes() == b"not the file" and server.requests == []


# ---- hostile archives --------------------------------------------------------------------------------------------

def _evil(tar: tarfile.TarFile) -> None:
    _add(tar, "cifar-10-batches-py/../../evil", b"escaped")


def _link_to_etc(tar: tarfile.TarFile) -> None:
    link = tarfile.TarInfo("cifar-10-batches-py/etc")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc"
    tar.addfile(link)


def _absolute(tar: tarfile.TarFile) -> None:
    _add(tar, "/tmp/convcanon-absolute-evil", b"escaped")


def _hard_link(tar: tarfile.TarFile) -> None:
    link = tarfile.TarInfo("cifar-10-batches-py/passwd")
    link.type, link.linkname = tarfile.LNKTYPE, "/etc/passwd"
    tar.addfile(link)


@pytest.mark.parametrize(("extra", "says"), [
    (_evil, "'cifar-10-batches-py/../../evil' would land outside the folder"),
    (_absolute, "'/tmp/convcanon-absolute-evil' would land outside the folder"),
    (_link_to_etc, "'cifar-10-batches-py/etc' is a link (to '/etc')"),
    (_hard_link, "'cifar-10-batches-py/passwd' is a link (to '/etc/passwd')"),
])
def test_an_archive_with_a_member_leading_out_is_refused_before_extraction(tmp_path, server, monkeypatch, capsys,
                                                                            extra, says):
    archive = cifar10_archive(extra)
    serve(monkeypatch, server, "cifar10", {"cifar-10-python.tar.gz": archive})  # its checksum matches: still refused
    work = tmp_path / "a" / "b"
    root = work / "root"
    _refused(capsys, ["scan", "--data", "cifar10", "--data-root", str(root)], 2, says, "nothing extracted")
    assert entries(root) == ["cifar-10-python.tar.gz"]  # downloaded and checked, never extracted
    assert not (tmp_path / "a" / "evil").exists() and not (work / "evil").exists()
    assert not Path("/tmp/convcanon-absolute-evil").exists()


def test_the_cifar_recipes_name_the_set_and_parse_without_a_download(tmp_path, server):
    from convcanon.train.config import config_from_dict, load_yaml

    recipes = Path(__file__).resolve().parents[2].joinpath("experiments").glob("*.yaml")
    cifar = [p for p in recipes if "cifar" in p.read_text().lower()]
    assert cifar, "no CIFAR recipe found"
    for path in cifar:
        cfg = config_from_dict(load_yaml(path), where=str(path))
        assert cfg.data in ("cifar10", "cifar100"), f"{path.name}: data {cfg.data!r}"
        assert "cifar10:PATH" not in path.read_text().split("# command:")[1].splitlines()[0], path.name
        assert parse_data(cfg.data, data_root=tmp_path / "root").download
    assert server.requests == [] and not (tmp_path / "root").exists()


def test_an_archive_without_the_data_set_or_not_an_archive_is_named(tmp_path, server, monkeypatch, capsys):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        _add(tar, "cifar-10-batches-py/data_batch_1", b"only one file")
    serve(monkeypatch, server, "cifar10", {"cifar-10-python.tar.gz": buf.getvalue()})
    root = tmp_path / "root"
    _refused(capsys, ["scan", "--data", "cifar10", "--data-root", str(root)], 2,
             "does not hold cifar-10-batches-py/ with data_batch_2, ", "delete it to download it again")
    assert entries(root) == ["cifar-10-python.tar.gz"]  # nothing half-extracted under the final name
    (root / "cifar-10-python.tar.gz").unlink()
    serve(monkeypatch, server, "cifar10", {"cifar-10-python.tar.gz": b"plain bytes, no archive"})
    _refused(capsys, ["scan", "--data", "cifar10", "--data-root", str(root)], 2,
             "cifar-10-python.tar.gz is not a readable .tar.gz archive")


def test_an_incomplete_extracted_folder_is_named_before_any_download(tmp_path, server, monkeypatch, capsys):
    serve(monkeypatch, server, "cifar10", {"cifar-10-python.tar.gz": cifar10_archive()})
    (tmp_path / "root" / "cifar-10-batches-py").mkdir(parents=True)
    (tmp_path / "root" / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"")
    _refused(capsys, ["scan", "--data", "cifar10", "--data-root", str(tmp_path / "root")], 2,
             "cifar-10-batches-py lacks data_batch_2, ", "remove that folder")
    assert server.requests == []


def test_scan_takes_a_folder_or_a_data_spec(tmp_path, capsys):
    assert main(["scan"]) == 2 and "one of the two" in capsys.readouterr().err
    assert main(["scan", str(tmp_path), "--data", "cifar10"]) == 2 and "one of the two" in capsys.readouterr().err
    assert main(["scan", "--data", "digits"]) == 2 and "nothing to scan" in capsys.readouterr().err
    folder = tmp_path / "m"
    folder.mkdir()
    for name, data in mnist_files().items():
        (folder / name).write_bytes(data)
    assert main(["scan", "--data", f"fashion-mnist:{folder}", "--json"]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert (report["data"], report["train_images"], report["class_names"][9], report["ok"]) == (
        "fashion-mnist", 6, "Ankle boot", True)


def test_a_file_url_mirror_serves_too(tmp_path, monkeypatch):
    files = mnist_files()
    (tmp_path / "mirror").mkdir()
    for name, data in files.items():
        (tmp_path / "mirror" / name).write_bytes(data)
    sums = tuple((f, md5(files[f])) for f, _ in REMOTES["mnist"].files)
    monkeypatch.setitem(REMOTES, "mnist", dataclasses.replace(REMOTES["mnist"], files=sums))
    monkeypatch.setenv(download.MIRROR_ENV, (tmp_path / "mirror").as_uri())  # no trailing slash: joined with one
    assert open_data("mnist", data_root=tmp_path / "root", progress=False).info.train_size == 6


def test_the_next_mirror_is_tried_when_one_fails(tmp_path, server, monkeypatch):
    files = mnist_files()
    serve(monkeypatch, server, "mnist", files)
    base = os.environ[download.MIRROR_ENV]
    monkeypatch.delenv(download.MIRROR_ENV)
    monkeypatch.setenv(download.OFFLINE_ENV, "0")
    server.files = {f"b/{name}": data for name, data in files.items()}  # the first mirror answers 404
    monkeypatch.setitem(REMOTES, "mnist", dataclasses.replace(REMOTES["mnist"], mirrors=(f"{base}a/", f"{base}b/")))
    assert open_data("mnist", data_root=tmp_path / "root", progress=False).info.test_size == 4
    assert server.requests[:2] == ["/a/train-images-idx3-ubyte.gz", "/b/train-images-idx3-ubyte.gz"]
