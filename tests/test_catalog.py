import functools
import gzip
import http.server
import shutil
import threading

import numpy as np
import pytest

from aeguard.data import catalog
from aeguard.data.catalog import DATASETS, load_split, parse_classes
from aeguard.errors import DataNotFoundError, UsageError

TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@pytest.fixture(autouse=True)
def _fresh_cache():
    catalog._read_split.cache_clear()


def test_class_names_and_indices():
    fashion = DATASETS["fashion-mnist"]
    assert parse_classes(fashion, "sneaker,Sandal") == (5, 7)
    assert parse_classes(fashion, "7, 5") == (5, 7)
    assert parse_classes(fashion, "t-shirt/top,ankle boot") == (0, 9)
    with pytest.raises(UsageError, match="unknown class 'boots?'.*sneaker"):
        parse_classes(fashion, "boots")
    with pytest.raises(UsageError, match="every class"):
        parse_classes(DATASETS["mnist"], ",".join(map(str, range(10))))


def test_flat_layout_from_data_dir(data_dir):
    split = load_split("mnist", "test", data_dir=data_dir)
    assert split.images.shape == (10000, 28, 28) and split.images.dtype == np.uint8
    assert np.bincount(split.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_torchvision_layout_with_raw_files(data_dir, tmp_path, monkeypatch):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in TEST_FILES:  # torchvision keeps the decompressed files next to the archives
        with gzip.open(data_dir / "fashion-mnist" / f"{stem}.gz") as source:
            (raw / stem).write_bytes(source.read())
    monkeypatch.delenv("AEGUARD_DATA_DIR")
    split = load_split("fashion-mnist", "test", data_dir=tmp_path)
    assert split.images.shape == (10000, 28, 28)
    assert np.bincount(split.labels).tolist() == [1000] * 10


def test_missing_data_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("AEGUARD_DATA_DIR", str(tmp_path / "empty"))
    with pytest.raises(DataNotFoundError) as info:
        load_split("mnist", "train", data_dir=tmp_path / "mine")
    message = str(info.value)
    assert str(tmp_path / "mine" / "mnist") in message
    assert str(tmp_path / "empty" / "MNIST" / "raw") in message
    assert "AEGUARD_DATA_DIR" in message and "Downloading is turned off" in message


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A loopback HTTP server standing in for the canonical mirror."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AEGUARD_DATASET_MIRROR", f"http://127.0.0.1:{server.server_port}/")
    monkeypatch.setenv("AEGUARD_DATA_DIR", str(tmp_path / "nothing-here"))
    monkeypatch.delenv("AEGUARD_NO_DOWNLOAD")
    yield served
    server.shutdown()


def test_download_verifies_and_caches(data_dir, mirror):
    for stem in TEST_FILES:
        shutil.copy(data_dir / "mnist" / f"{stem}.gz", mirror / f"{stem}.gz")
    split = load_split("mnist", "test")
    assert split.images.shape == (10000, 28, 28)
    assert (catalog.default_cache_dir() / "mnist" / "t10k-images-idx3-ubyte.gz").is_file()


def test_download_with_wrong_checksum_keeps_nothing(data_dir, mirror):
    shutil.copy(data_dir / "mnist" / "t10k-images-idx3-ubyte.gz", mirror / "t10k-images-idx3-ubyte.gz")
    # the labels of the other data set: a valid file, but not the one asked for
    shutil.copy(data_dir / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz", mirror / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataNotFoundError, match="has sha256 .*expected"):
        load_split("mnist", "test")
    cached = catalog.default_cache_dir() / "mnist"
    assert not (cached / "t10k-labels-idx1-ubyte.gz").exists()
    assert [p.name for p in cached.iterdir() if p.name.startswith(".")] == []


def test_no_download_flag_is_respected(mirror):
    with pytest.raises(DataNotFoundError, match="Downloading is turned off"):
        load_split("mnist", "test", allow_download=False)
