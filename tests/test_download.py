"""Downloads against a real HTTP server on 127.0.0.1 that can cut, 404 or ignore Range."""

import hashlib
import random
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from seqvi.data.download import download_file, fetch_files, read_sums, sha256_of
from seqvi.errors import DataError, DownloadError

BODY = random.Random(0).randbytes(200_000)


class Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; ``server.cut_after`` bytes then hangs up; may ignore Range."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        server.requests.append({"path": self.path, "range": self.headers.get("Range"),
                                "agent": self.headers.get("User-Agent")})
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and not server.ignore_range:
            start = int(match[1])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))  # always the full length
        self.end_headers()
        if server.cut_after is not None:
            payload = payload[: server.cut_after]
        self.wfile.write(payload)
        self.close_connection = True


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.files, srv.requests, srv.cut_after, srv.ignore_range = {"/data.bin": BODY}, [], None, False
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


def url(srv, path="/data.bin"):
    return f"http://127.0.0.1:{srv.server_address[1]}{path}"


def sha(data):
    return hashlib.sha256(data).hexdigest()


def test_full_download_checks_sha256_and_reports_progress(server, tmp_path):
    calls = []
    dest = tmp_path / "raw" / "data.bin"
    digest = download_file([url(server)], dest, sha256=sha(BODY).upper(), chunk_size=1 << 14,
                           progress=lambda *a: calls.append(a))
    assert digest == sha(BODY) == sha256_of(dest)
    assert dest.read_bytes() == BODY
    assert not (tmp_path / "raw" / "data.bin.part").exists()
    assert len(calls) >= len(BODY) // (1 << 14)
    assert calls[-1] == ("data.bin", len(BODY), len(BODY))
    assert [c[1] for c in calls] == sorted(c[1] for c in calls)
    assert server.requests[0]["agent"].startswith("seqvi/") and server.requests[0]["range"] is None


def test_a_cut_connection_keeps_the_part_and_a_rerun_resumes(server, tmp_path):
    dest, part = tmp_path / "data.bin", tmp_path / "data.bin.part"
    server.cut_after = 70_000
    with pytest.raises(DownloadError, match=r"truncated at 70000 of 200000 bytes, rerunning resumes") as err:
        download_file([url(server)], dest)
    assert "\n" not in str(err.value)
    assert part.read_bytes() == BODY[:70_000] and not dest.exists()

    server.cut_after = None
    assert download_file([url(server)], dest) == sha(BODY)
    assert server.requests[-1]["range"] == "bytes=70000-"
    assert dest.read_bytes() == BODY and not part.exists()


def test_sha256_mismatch_leaves_neither_file_nor_part(server, tmp_path):
    dest = tmp_path / "data.bin"
    wrong = sha(b"something else")
    with pytest.raises(DownloadError) as err:
        download_file([url(server)], dest, sha256=wrong)
    message = str(err.value)
    assert wrong in message and sha(BODY) in message and url(server) in message
    assert "changed upstream" in message and "--source" in message
    assert not dest.exists() and not (tmp_path / "data.bin.part").exists()


def test_a_404_mirror_falls_back_to_the_next(server, tmp_path):
    dest = tmp_path / "data.bin"
    assert download_file([url(server, "/gone.bin"), url(server)], dest) == sha(BODY)
    assert [r["path"] for r in server.requests] == ["/gone.bin", "/data.bin"]
    assert dest.read_bytes() == BODY


def test_every_mirror_failing_gives_one_error_listing_each(server, tmp_path):
    with socket.socket() as probe:  # a port with nothing listening once closed
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    dead = f"http://127.0.0.1:{dead_port}/data.bin"
    with pytest.raises(DownloadError) as err:
        download_file([dead, url(server, "/gone.bin")], tmp_path / "data.bin", timeout=5, dataset="jsb-chorales")
    message = str(err.value)
    assert f"{dead}: host did not answer" in message
    assert f"{url(server, '/gone.bin')}: HTTP 404" in message
    assert message.endswith("run `seqvi preprocess jsb-chorales --source PATH`") and "\n" not in message
    assert not (tmp_path / "data.bin").exists()


@pytest.mark.parametrize("sha_known", [True, False])
def test_a_part_moves_to_the_next_mirror_only_when_the_sha256_is_known(server, tmp_path, sha_known):
    server.files["/mirror.bin"] = BODY
    server.cut_after = 50_000
    first, second = url(server), url(server, "/mirror.bin")
    with pytest.raises(DownloadError, match="truncated"):
        download_file([first, second], tmp_path / "data.bin", sha256=sha(BODY) if sha_known else None)
    assert server.requests[1]["range"] == ("bytes=50000-" if sha_known else None)


def test_a_server_ignoring_range_restarts_cleanly(server, tmp_path):
    part = tmp_path / "data.bin.part"
    part.write_bytes(b"\x00" * 1000)  # not even a prefix of the body
    server.ignore_range = True
    assert download_file([url(server)], tmp_path / "data.bin", sha256=sha(BODY)) == sha(BODY)
    assert server.requests[0]["range"] == "bytes=1000-"
    assert (tmp_path / "data.bin").read_bytes() == BODY and not part.exists()


def test_a_part_longer_than_the_file_restarts_after_416(server, tmp_path):
    (tmp_path / "data.bin.part").write_bytes(BODY + b"extra")
    assert download_file([url(server)], tmp_path / "data.bin") == sha(BODY)
    assert [r["range"] for r in server.requests] == [f"bytes={len(BODY) + 5}-", None]
    assert (tmp_path / "data.bin").read_bytes() == BODY


def test_fetch_files_records_sha256sums_and_refuses_a_changed_body(server, tmp_path):
    name = "JSB Chorales.zip"
    server.files["/jsb.zip"] = BODY
    files = [{"name": name, "urls": [url(server, "/jsb.zip")], "sha256": None}]
    raw = tmp_path / "raw"

    assert fetch_files(files, raw) == {name: sha(BODY)}
    assert (raw / "SHA256SUMS").read_text() == f"{sha(BODY)}  {name}\n"
    assert read_sums(raw) == {name: sha(BODY)}

    assert fetch_files(files, raw) == {name: sha(BODY)}  # present and verified: no request
    assert len(server.requests) == 1

    (raw / name).write_bytes(b"damaged locally")  # fails verification, so fetched again
    assert fetch_files(files, raw) == {name: sha(BODY)} and (raw / name).read_bytes() == BODY

    server.files["/jsb.zip"] = BODY[::-1]
    (raw / name).unlink()
    with pytest.raises(DownloadError) as err:
        fetch_files(files, raw)
    message = str(err.value)
    assert name in message and "SHA256SUMS" in message and "delete its line" in message
    assert not (raw / name).exists() and not (raw / f"{name}.part").exists()
    assert read_sums(raw) == {name: sha(BODY)}


def test_fetch_files_uses_the_manifest_sha256_and_does_not_record_it(server, tmp_path):
    files = [{"name": "data.bin", "urls": [url(server)], "sha256": sha(BODY)}]
    assert fetch_files(files, tmp_path) == {"data.bin": sha(BODY)}
    assert not (tmp_path / "SHA256SUMS").exists()
    with pytest.raises(DownloadError, match="plain file name"):
        fetch_files([{"name": "../escape.bin", "urls": [url(server)]}], tmp_path)


def test_a_malformed_sums_line_is_a_data_error(tmp_path):
    (tmp_path / "SHA256SUMS").write_text(f"{'a' * 64}  ok.zip\nnot a checksum line\n")
    with pytest.raises(DataError, match="line 2"):
        read_sums(tmp_path)
