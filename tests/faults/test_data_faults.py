"""Breaks 8, 11 and 12 of issue 23: a damaged store, a read-only data root, a full disk during a real
download, a manifest whose sha256 YAML reads as a number, and a particle bound too big for memory."""

from __future__ import annotations

import shutil
import threading
from http.server import ThreadingHTTPServer

import numpy as np
import pytest

from faults.conftest import MEMORY_CAP, assert_fault, assert_unchanged, fill, hash_tree, read_only
from faults.tiny_run import build_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("offset", [512, 2048])   # a local heap (RuntimeError), an object header (KeyError)
def test_random_bytes_inside_the_store_are_one_line_naming_it(tiny, tmp_path, offset):
    root = tmp_path / "data"
    shutil.copytree(tiny.root / "processed", root / "processed")
    store = root / "processed" / "tiny.h5"
    with open(store, "r+b") as handle:
        handle.seek(offset)
        handle.write(np.random.default_rng(offset).bytes(20_000))
    before = hash_tree(tmp_path)
    done = tiny.seqvi("train", tiny.recipe, f"data.root={root}", "train.epochs=1", "--run-dir", tmp_path / "run",
                      "--device", "cpu")
    line = assert_fault(done, str(store))
    assert "corrupt" in line and "seqvi preprocess tiny" in line
    assert_unchanged(before, tmp_path)


def test_preprocess_onto_a_read_only_data_root_is_one_line(tiny, tmpfs):
    shutil.copytree(tiny.root / "raw", tmpfs / "raw")
    shutil.copytree(tiny.root / "processed", tmpfs / "processed")   # an earlier store, to be kept
    before = hash_tree(tmpfs)
    with read_only(tmpfs):
        done = tiny.seqvi("preprocess", "tiny", "--root", tmpfs)
        assert "Read-only file system" in assert_fault(done, str(tmpfs))
    assert_unchanged(before, tmpfs)


def test_an_unquoted_digit_sha256_is_refused_naming_file_and_key(tiny, tmp_path):
    manifests = tmp_path / "manifests"
    shutil.copytree(tiny.manifests, manifests)
    digits = "1234567890" * 6 + "1234"             # 64 digits: YAML reads an int, not the hash
    (manifests / "digits.yaml").write_text(
        "name: digits\ntitle: t\nadapter: midi\ndownload: http\n"
        f"files:\n  - name: a.zip\n    sha256: {digits}\n    urls: [http://127.0.0.1:9/a.zip]\n")
    root = tmp_path / "data"
    done = tiny.seqvi("download", "digits", "--root", root, env=tiny.env(SEQVI_MANIFESTS=str(manifests)))
    line = assert_fault(done, str(manifests / "digits.yaml"))
    assert "'files[0].sha256'" in line and "quotes" in line
    assert not root.exists()                          # nothing fetched, nothing skipped silently


@pytest.fixture
def server(monkeypatch):
    from test_download import Handler   # tests/test_download.py's loopback server

    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    body = np.random.default_rng(0).bytes(1_000_000)
    srv.files, srv.requests, srv.cut_after, srv.ignore_range = {"/big.bin": body}, [], None, False
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


def test_disk_full_during_a_download_names_the_disk_not_the_network(server, tmpfs):
    from seqvi.data.download import download_file
    from seqvi.errors import DownloadError

    (tmpfs / "raw").mkdir()
    (tmpfs / "raw" / "kept.txt").write_text("written before the fault\n")
    fill(tmpfs, free=300_000)
    before = hash_tree(tmpfs)
    url = f"http://127.0.0.1:{server.server_address[1]}/big.bin"
    with pytest.raises(DownloadError) as caught:
        download_file([url], tmpfs / "raw" / "big.bin")
    message = str(caught.value)
    assert "\n" not in message and "network" not in message
    assert "No space left on device" in message and str(tmpfs) in message and "bytes free" in message
    assert not (tmpfs / "raw" / "big.bin").exists()  # never a partial file under the final name
    assert_unchanged(before, tmpfs)


def test_a_particle_bound_too_big_for_memory_is_refused_before_any_work(tiny):
    """100,000 particles of the tiny store would need about 16 GB: refused in one line with the estimate,
    under an address-space cap, so the probe can never take the machine down."""
    before = hash_tree(tiny.folder)
    done = tiny.seqvi("eval", "--checkpoint", tiny.run_dir, "--bound", "all", "--particles", "100000",
                      "--device", "cpu", memory=MEMORY_CAP)
    line = assert_fault(done, "--particles 100000")
    assert "GB at once" in line and "ulimit -v" in line and "use --particles" in line
    assert_unchanged(before, tiny.folder)
    assert not (tiny.run_dir / "eval").exists()
