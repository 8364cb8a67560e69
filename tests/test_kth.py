"""KTH: AVIs written with PyAV in the test, decoding, area resize, splits, skips, and the CLI end to end."""

from __future__ import annotations

import functools
import http.server
import json
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import av
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from seqvi.cli import app
from seqvi.data import kth
from seqvi.data.kth import parse_sequences, preprocess_kth
from seqvi.data.manifest import load_manifest
from seqvi.data.store import Store
from seqvi.data.video import area_weights, decode_gray, resize_area
from seqvi.errors import DataError

from conftest import REPO

H, W = 120, 160


def write_avi(path: Path, frames: np.ndarray, codec: str = "ffv1") -> Path:
    """(T, 120, 160) uint8 gray frames -> AVI; ffv1 is lossless, mpeg4 is KTH-like (lossy)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height = W, H
        stream.pix_fmt = "gray" if codec == "ffv1" else "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="gray")))
        container.mux(stream.encode())
    return path


def level(person: int, t: int) -> int:
    """Gray level of frame t (0-based) of a person's test video: constant frames survive any resize."""
    return (9 * t + 17 * person) % 251


def flat_video(person: int, frames: int) -> np.ndarray:
    return np.stack([np.full((H, W), level(person, t), np.uint8) for t in range(frames)])


SEQUENCES = """\
Training:       person11, person12, person13, person14, person15, person16, person17, person18
Validation:     person19, person20, person21, person23, person24, person25, person01, person04
Test:           person22, person02, person03, person05, person06, person07, person08, person09, person10

person11_walking_d1		frames	1-10, 11-24
person19_boxing_d2		frames	1-8, 9-16, 17-30
person22_walking_d3		frames	3-12,13-20
person12_walking_d1		frames	1-10, 11-20
person13_handclapping_d3	frames	1-10
person15_boxing_d4		frames	1-5, x-7
"""


def make_kth(folder: Path, codec: str = "ffv1") -> Path:
    """A tiny KTH in the published naming, unpacked into per-action folders, with edge cases."""
    write_avi(folder / "walking" / "person11_walking_d1_uncomp.avi", flat_video(11, 24), codec)
    write_avi(folder / "boxing" / "person19_boxing_d2_uncomp.avi", flat_video(19, 24), codec)  # last range clipped
    write_avi(folder / "walking" / "person22_walking_d3_uncomp.avi", flat_video(22, 20), codec)
    (folder / "walking" / "person12_walking_d1_uncomp.avi").write_bytes(b"RIFF" + bytes(range(256)) * 8)  # corrupt
    write_avi(folder / "running" / "person14_running_d1_uncomp.avi", flat_video(14, 6), codec)  # no ranges
    (folder / "00sequences.txt").write_text(SEQUENCES)                  # person13_handclapping_d3: missing
    return folder


# --------------------------------------------------------------------------- resize and decode


def test_area_weights_hand_computed():
    # 5 -> 2: each output covers 2.5 inputs; the middle one is shared half and half.
    np.testing.assert_allclose(area_weights(5, 2), np.array([[1, 1, 0.5, 0, 0], [0, 0, 0.5, 1, 1]]) / 2.5)
    np.testing.assert_allclose(area_weights(4, 2), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
    for n_in, n_out in ((160, 64), (120, 64), (7, 3)):
        np.testing.assert_allclose(area_weights(n_in, n_out).sum(1), 1.0)
        np.testing.assert_allclose(area_weights(n_in, n_out).sum(0), n_out / n_in)  # every input pixel fully used


def test_resize_160x120_to_64x64_equals_exact_supersampling():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, H, W), dtype=np.uint8)
    # 160 = 64 * 2.5 and 120 = 64 * 1.875: repeat pixels 2x / 8x, then average blocks of 5 / 15.
    fine = frames.astype(np.float64).repeat(8, 1).repeat(2, 2)              # (3, 960, 320)
    exact = fine.reshape(3, 64, 15, 64, 5).mean((2, 4))
    np.testing.assert_array_equal(resize_area(frames, (64, 64)), np.floor(exact + 0.5).astype(np.uint8))
    constant = np.full((2, H, W), 77, np.uint8)
    np.testing.assert_array_equal(resize_area(constant, (64, 64)), np.full((2, 64, 64), 77, np.uint8))


def test_decode_lossless_avi_exactly(tmp_path):
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (7, H, W), dtype=np.uint8)
    path = write_avi(tmp_path / "person01_boxing_d1_uncomp.avi", frames)
    np.testing.assert_array_equal(decode_gray(path, path.name, size=None), frames)
    small = decode_gray(path.read_bytes(), path.name)                      # from memory, as from a zip
    assert small.shape == (7, 64, 64) and small.dtype == np.uint8
    np.testing.assert_array_equal(small, resize_area(frames, (64, 64)))


def test_lossy_avi_keeps_gray_levels(tmp_path):
    path = write_avi(tmp_path / "v.avi", flat_video(3, 12), codec="mpeg4")
    decoded = decode_gray(path, "v.avi")
    expected = np.array([level(3, t) for t in range(12)])
    assert decoded.shape == (12, 64, 64)
    assert np.abs(decoded.mean((1, 2)) - expected).max() < 4                 # MPEG-4 at default quality


@pytest.mark.parametrize("data", [b"", b"RIFF" + bytes(range(256)) * 4, b"not a video at all" * 50])
def test_undecodable_video_raises_one_line_naming_it(tmp_path, data):
    path = tmp_path / "person02_running_d1_uncomp.avi"
    path.write_bytes(data)
    with pytest.raises(DataError, match=r"^person02_running_d1_uncomp\.avi: ") as err:
        decode_gray(path, path.name)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="more than 2 frames"):
        decode_gray(write_avi(tmp_path / "long.avi", flat_video(1, 5)), "long.avi", max_frames=2)


def test_parse_sequences_reads_ranges_and_refuses_bad_lines():
    ranges, refused = parse_sequences(SEQUENCES)
    assert ranges["person11_walking_d1"] == [(1, 10), (11, 24)]
    assert ranges["person22_walking_d3"] == [(3, 12), (13, 20)]
    assert ranges["person15_boxing_d4"] == [(1, 5)]
    assert [r[0] for r in refused] == ["00sequences.txt:10"]
    assert len(ranges) == 6  # the split header lines are not videos
    with pytest.raises(DataError, match="00sequences.txt: no"):
        parse_sequences("Training: person11\n")


# --------------------------------------------------------------------------- the adapter


def test_preprocess_folder_official_split_skips_and_counts(tmp_path):
    src = make_kth(tmp_path / "kth")
    report = preprocess_kth(load_manifest("kth"), src, tmp_path / "kth.h5")
    assert report.sequences == {"train": 2, "valid": 3, "test": 2}
    assert report.steps == {"train": 24, "valid": 24, "test": 18}           # 17-30 clipped to 17-24
    reasons = dict(report.skipped)
    assert reasons["person13_handclapping_d3"].startswith("missing video")
    assert "not a decodable video" in reasons["walking/person12_walking_d1_uncomp.avi"]
    assert reasons["running/person14_running_d1_uncomp.avi"].startswith("no frame ranges")
    assert "00sequences.txt:10" in reasons and "person15_boxing_d4" in reasons  # bad line; listed, no video
    with Store(report.path) as store:
        assert store.frame_shape == (1, 64, 64) and store.attrs["split"] == "official"
        assert store.attrs["value_scale"] == pytest.approx(1 / 255) and store.attrs["clipped_ranges"] == 1
        valid = store.split("valid")
        assert valid.names == ["person19_boxing_d2/1", "person19_boxing_d2/2", "person19_boxing_d2/3"]
        assert list(valid.lengths) == [8, 8, 8]
        seq = valid.read(2)                                                   # frames 17..24, 1-based
        assert seq.dtype == np.uint8 and seq.shape == (8, 1, 64, 64)
        assert [int(f.min()) for f in seq] == [int(f.max()) for f in seq] == [level(19, t) for t in range(16, 24)]
        test = store.split("test")
        assert test.read(0)[0, 0, 0, 0] == level(22, 2)                       # range 3-12 starts at frame 3


def test_zip_source_and_denton_split(tmp_path):
    src = make_kth(tmp_path / "kth")
    zipped = tmp_path / "zips"
    zipped.mkdir()
    for action in ("walking", "boxing", "running"):
        with zipfile.ZipFile(zipped / f"{action}.zip", "w") as archive:
            for path in sorted((src / action).glob("*.avi")):
                archive.write(path, path.name)
    (zipped / "00sequences.txt").write_text(SEQUENCES)
    folder = preprocess_kth(load_manifest("kth"), src, tmp_path / "a.h5")
    report = preprocess_kth(load_manifest("kth-denton"), zipped, tmp_path / "b.h5")
    # Denton: persons 1-20 train, 21-25 test (and valid, which Denton's code does not have).
    assert report.sequences == {"train": 5, "valid": 2, "test": 2}
    assert "walking.zip:person12_walking_d1_uncomp.avi" in dict(report.skipped)
    assert {"walking.zip", "boxing.zip", "running.zip", "00sequences.txt"} <= set(report.sources)
    with Store(folder.path) as a, Store(report.path) as b:
        assert b.attrs["split"] == "denton"
        assert b.split("train").names == ["person11_walking_d1/1", "person11_walking_d1/2"] + a.split("valid").names
        np.testing.assert_array_equal(b.split("test").read(1), a.split("test").read(1))
        np.testing.assert_array_equal(b.split("valid").read(0), b.split("test").read(0))


def test_strict_stops_at_the_first_bad_video(tmp_path):
    src = make_kth(tmp_path / "kth")
    with pytest.raises(DataError, match=r"^00sequences.txt:10: malformed frame ranges '1-5, x-7'$"):
        preprocess_kth(load_manifest("kth"), src, tmp_path / "kth.h5", strict=True)
    (src / "00sequences.txt").write_text(SEQUENCES.replace("1-5, x-7", "1-5"))
    with pytest.raises(DataError, match="person12_walking_d1_uncomp.avi: not a decodable video"):
        preprocess_kth(load_manifest("kth"), src, tmp_path / "kth.h5", strict=True)
    assert not (tmp_path / "kth.h5").exists()
    (src / "00sequences.txt").unlink()
    with pytest.raises(DataError, match="no 00sequences.txt"):
        preprocess_kth(load_manifest("kth"), src, tmp_path / "kth.h5")


# --------------------------------------------------------------------------- CLI, end to end


@pytest.fixture
def server(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_cli_download_preprocess_train_eval_predict_sample(tmp_path, manifests, server):
    www, url = server
    rng = np.random.default_rng(0)
    lines = []
    for person, action in [(11, "walking"), (12, "boxing"), (19, "walking"), (22, "boxing"), (2, "walking")]:
        base = np.clip(rng.normal(128, 40, (1, H, W)), 0, 255)
        frames = np.clip(base + np.arange(30)[:, None, None] * 3, 0, 255).astype(np.uint8)
        write_avi(tmp_path / "src" / action / f"person{person:02d}_{action}_d1_uncomp.avi", frames, "mpeg4")
        lines.append(f"person{person:02d}_{action}_d1\t\tframes\t1-14, 15-30")
    lines.append("person13_handclapping_d3\t\tframes\t1-10")
    for action in ("walking", "boxing"):
        with zipfile.ZipFile(www / f"{action}.zip", "w") as archive:
            for path in sorted((tmp_path / "src" / action).glob("*.avi")):
                archive.write(path, path.name)
    (www / "00sequences.txt").write_text("\n".join(lines) + "\n")
    manifest = yaml.safe_load((manifests / "kth.yaml").read_text())
    manifest["name"] = "kthtiny"
    manifest["files"] = [{"name": n, "sha256": None, "urls": [f"{url}/{n}"]}
                         for n in ("walking.zip", "boxing.zip", "00sequences.txt")]
    (manifests / "kthtiny.yaml").write_text(yaml.safe_dump(manifest))
    root, run_dir = tmp_path / "data", tmp_path / "run"
    runner = CliRunner()

    def run(*args):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result.output

    run("download", "kthtiny", "--root", root)
    assert "walking.zip" in (root / "raw" / "kthtiny" / "SHA256SUMS").read_text()
    out = run("preprocess", "kthtiny", "--root", root)                      # finds raw/kthtiny/ itself
    assert "person13_handclapping_d3: missing video" in out
    recipe = {
        "seed": 0,
        "data": {"dataset": "kthtiny", "root": str(root), "batch_size": 2, "crop_length": 6, "eval_batch_size": 4},
        "model": {"name": "svg", "backbone": "dcgan", "channels": 4, "g_dim": 8, "z_size": 2, "rnn_size": 8,
                  "predictor_layers": 1, "skip_frames": 3},
        "inference": {"name": "svg_posterior", "rnn_size": 8},
        "train": {"epochs": 1, "lr": 0.001, "log_every": 1},
    }
    (tmp_path / "svg_tiny.yaml").write_text(yaml.safe_dump(recipe))
    run("train", tmp_path / "svg_tiny.yaml", "--run-dir", run_dir, "--device", "cpu")
    run("eval", "--checkpoint", run_dir, "--split", "test", "--device", "cpu")
    per_frame = json.loads((run_dir / "eval" / "test.json").read_text())
    assert per_frame["num_steps"] == 60 and per_frame["nats_per_step"] > 0  # discretized: P <= 1 per pixel
    out = run("predict", "--checkpoint", run_dir, "--context", 3, "--horizon", 4, "--horizon", 8,
              "--samples", 3, "--device", "cpu")
    assert "SSIM best@8" in out
    result = json.loads((run_dir / "eval" / "predict_test.json").read_text())
    assert result["num_sequences"] == 4 and result["horizons"] == [4, 8]
    assert len(result["best_ssim"]["8"]) == 8 and len(result["best_psnr"]["4"]) == 4
    # The best of 3 is at least as good on average as a random one, frame by frame mean over frames.
    assert np.mean(result["best_ssim"]["8"]) >= np.mean(result["mean_ssim"]) - 1e-9
    assert np.mean(result["best_psnr"]["8"]) >= np.mean(result["mean_psnr"]) - 1e-9
    assert (run_dir / "eval" / "predict_test.png").stat().st_size > 0
    out = run("sample", "--checkpoint", run_dir, "--num", 2, "--length", 6, "--prime", 2, "--device", "cpu")
    samples = run_dir / "samples"
    assert sorted(p.name for p in samples.iterdir() if not p.name.startswith(".")) == ["sample_01.gif", "sample_01.mp4", "sample_02.gif",
                                                         "sample_02.mp4", "samples.png"]
    with av.open(str(samples / "sample_01.mp4")) as container:
        frames = [f.to_ndarray(format="gray") for f in container.decode(video=0)]
    # primed: ground truth | divider | sample, side by side (frames upscaled 2x for viewing)
    assert len(frames) == 6 and frames[0].shape[0] == 128 and frames[0].shape[1] > 2 * 128


def test_corrupt_zip_source_and_oversized_members(tmp_path, monkeypatch):
    bad = tmp_path / "kth.zip"
    bad.write_bytes(b"PK\x03\x04" + bytes(200))                             # a zip's magic, no directory
    with pytest.raises(DataError, match=r"kth\.zip: corrupt zip"):
        preprocess_kth(load_manifest("kth"), bad, tmp_path / "a.h5")
    assert not (tmp_path / "a.h5").exists()
    src = make_kth(tmp_path / "kth")
    zipped = tmp_path / "zips"
    zipped.mkdir()
    with zipfile.ZipFile(zipped / "boxing.zip", "w") as archive:
        for path in sorted((src / "boxing").glob("*.avi")):
            archive.write(path, path.name)
    (zipped / "00sequences.txt").write_text(SEQUENCES)
    sizes = [i.file_size for i in zipfile.ZipFile(zipped / "boxing.zip").infolist()]
    monkeypatch.setattr(kth, "MAX_AVI_BYTES", min(sizes) - 1)             # every member is "oversized"
    with pytest.raises(DataError, match=r"boxing\.zip:person\d+_boxing_d\d_uncomp\.avi: \d+ bytes uncompressed, over"):
        preprocess_kth(load_manifest("kth"), zipped, tmp_path / "b.h5", strict=True)
    with pytest.raises(DataError, match="no personXX_<action>_dY_uncomp.avi videos"):
        preprocess_kth(load_manifest("kth"), zipped, tmp_path / "b.h5")     # all skipped: nothing left


def test_synthetic_kth_script_makes_what_the_adapter_reads(tmp_path):
    """scripts/synthetic_kth.py (the README's SVG row): KTH's layout, its official split, moving figures."""
    out = tmp_path / "skth"
    subprocess.run([sys.executable, str(REPO / "scripts" / "synthetic_kth.py"), str(out), "--persons", "12",
                    "--scenarios", "1", "--frames", "8"], check=True, capture_output=True)
    report = preprocess_kth(load_manifest("kth"), out, tmp_path / "kth.h5")
    assert not report.skipped
    per_person = 4 * 2                                                  # 4 actions x 2 ranges, one scenario
    assert report.sequences == {"train": 2 * per_person, "valid": 2 * per_person, "test": 8 * per_person}
    with Store(report.path) as store:
        train = store.split("train")
        assert set(train.lengths) == {4}
        walking = train.read(train.names.index("person11_walking_d1/1")).astype(int)
        boxing = train.read(train.names.index("person11_boxing_d1/1")).astype(int)
        for seq in (walking, boxing):
            assert all(np.abs(seq[t + 1] - seq[t]).sum() > 0 for t in range(3))     # the figure moves
            assert seq.min() < 100 < seq.max()                                    # a dark figure, light ground
        again = tmp_path / "again"
        subprocess.run([sys.executable, str(REPO / "scripts" / "synthetic_kth.py"), str(again), "--persons", "12",
                        "--scenarios", "1", "--frames", "8"], check=True, capture_output=True)
        assert (again / "walking" / "person11_walking_d1_uncomp.avi").read_bytes() == \
            (out / "walking" / "person11_walking_d1_uncomp.avi").read_bytes()     # seeded: the same set
