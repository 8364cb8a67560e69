import json
"""TIMIT: SPHERE/WAV reading, the two-pass adapter, splits, WAV samples, discretized likelihood.

Every audio file is generated here: SPHERE headers written by hand (both byte
orders, lying and compressed headers), RIFF WAV through scipy, in
TIMIT-shaped trees (TIMIT/{TRAIN,TEST}/DR*/<speaker>/*.WAV).
"""

import io
import math
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from seqvi.data.store import Store
import torch
import yaml
from scipy import stats
from scipy.io import wavfile
from typer.testing import CliRunner

from seqvi.cli import app
from seqvi.data.audio_samples import to_int16
from seqvi.data.manifest import load_manifest
from seqvi.data.sphere import read_audio
from seqvi.data.timit import FRAME_SIZE, frame, plain_split, preprocess_timit, valid_choice
from seqvi.errors import DataError
from seqvi.likelihoods import discretized_gaussian_log_prob

MANIFEST = load_manifest("timit")


def sphere_bytes(samples, rate=16000, byte_format="01", sample_count=None, coding=None,
                 channels=1, n_bytes=2, minmax=True, header_size=1024):
    """A NIST SPHERE file as TIMIT ships it; any header field can be made to lie."""
    samples = np.asarray(samples, dtype=np.int16)
    fields = [f"database_id -s5 TIMIT",
              f"sample_count -i {len(samples) if sample_count is None else sample_count}",
              f"sample_rate -i {rate}", f"channel_count -i {channels}", f"sample_n_bytes -i {n_bytes}",
              f"sample_byte_format -s{len(byte_format)} {byte_format}", "sample_sig_bits -i 16"]
    if coding:
        fields.append(f"sample_coding -s{len(coding)} {coding}")
    if minmax and len(samples):
        fields += [f"sample_min -i {samples.min()}", f"sample_max -i {samples.max()}"]
    text = "NIST_1A\n   1024\n" + "\n".join(fields) + "\nend_head\n"
    header = text.replace("   1024", f"{header_size:7d}").encode().ljust(header_size, b" ")
    data = samples.astype(">i2" if byte_format == "10" else "<i2").tobytes()
    return header + data


def wav_bytes(samples, rate=16000):
    buf = io.BytesIO()
    wavfile.write(buf, rate, np.asarray(samples))
    return buf.getvalue()


def speech(rng, n, offset=0, scale=3000):
    return np.clip(rng.normal(offset, scale, n).round(), -32768, 32767).astype(np.int16)


def make_timit(root: Path, *, lower=False, train_speakers=8, test_speakers=2, seed=0):
    """TIMIT/{TRAIN,TEST}/DR?/<speaker>/S?.WAV with 5 utterances per speaker; returns {rel path: samples}.

    Test utterances are loud and offset (mean 20000) so that statistics
    leaking from them would show.
    """
    rng = np.random.default_rng(seed)
    written = {}
    for split, speakers in (("TRAIN", train_speakers), ("TEST", test_speakers)):
        for s in range(speakers):
            for u in range(5):
                parts = ["TIMIT", split, f"DR{s % 3 + 1}", f"M{split[:2]}{s:02d}0", f"SX{u + 1}.WAV"]
                rel = "/".join(p.lower() if lower else p for p in parts)
                n = int(rng.integers(300, 1500))
                samples = speech(rng, n, 20000, 500) if split == "TEST" else speech(rng, n)
                path = root / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(sphere_bytes(samples, byte_format="10" if u % 2 else "01"))
                written[rel] = samples
    return written


def read_store(path):
    with h5py.File(path, "r") as f:
        attrs = {k: f.attrs[k] for k in f.attrs}
        splits = {}
        for split in ("train", "valid", "test"):
            names = [n.decode() for n in f[split]["names"][:]]
            offsets = f[split]["offsets"][:]
            frames = f[split]["frames"][:]
            lengths = f[split]["num_samples"][:]
            splits[split] = {name: (frames[offsets[i]:offsets[i + 1]], int(lengths[i]))
                             for i, name in enumerate(names)}
    return attrs, splits


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize("byte_format", ["01", "10"])
def test_sphere_round_trips_exact_samples_in_both_byte_orders(byte_format):
    samples = np.array([0, 1, -1, 32767, -32768, 258, -259, 12345], dtype=np.int16)
    data = sphere_bytes(samples, byte_format=byte_format)
    assert len(data) == 1024 + 2 * len(samples)
    got, rate = read_audio(data, "SA1.WAV")
    assert rate == 16000 and got.dtype == np.int16
    np.testing.assert_array_equal(got, samples)


def test_riff_wav_gives_the_same_samples_as_sphere():
    samples = speech(np.random.default_rng(1), 777)
    got, rate = read_audio(wav_bytes(samples), "SA1.WAV.wav")
    assert rate == 16000
    np.testing.assert_array_equal(got, samples)


BAD = {
    "lying sample_count": (lambda s: sphere_bytes(s, sample_count=len(s) + 50), "sample_count"),
    "fewer declared than present": (lambda s: sphere_bytes(s, sample_count=len(s) - 50), "sample_count"),
    "truncated": (lambda s: sphere_bytes(s)[:-101], "sample_count"),
    "shorten": (lambda s: sphere_bytes(s, coding="pcm,embedded-shorten-v2.00"), "sample_coding"),
    "ulaw": (lambda s: sphere_bytes(s, coding="ulaw"), "sample_coding"),
    "shortpack": (lambda s: sphere_bytes(s, byte_format="shortpack-v0"), "sample_byte_format"),
    "stereo": (lambda s: sphere_bytes(s, channels=2), "channel_count"),
    "8-bit": (lambda s: sphere_bytes(s, n_bytes=1), "sample_n_bytes"),
    "no rate": (lambda s: sphere_bytes(s).replace(b"sample_rate -i 16000", b"sample_rat3 -i 16000"), "sample_rate"),
    "header past the end": (lambda s: sphere_bytes(s, header_size=1024)[:900], "header size"),
    "wrong byte order": (lambda s: sphere_bytes(s)[:1024] + s.astype(">i2").tobytes(), "sample_m"),
    "not audio": (lambda s: b"ID3\x03" + bytes(100), "not a NIST SPHERE"),
    "stereo wav": (lambda s: wav_bytes(np.stack([s, s], 1)), "channels"),
    "float wav": (lambda s: wav_bytes(s.astype(np.float32)), "bits per sample"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_files_raise_one_line_naming_file_and_field(kind):
    make, field = BAD[kind]
    samples = speech(np.random.default_rng(2), 400)
    with pytest.raises(DataError) as err:
        read_audio(make(samples), "TIMIT/TRAIN/DR1/FCJF0/SA1.WAV")
    message = str(err.value)
    assert "TIMIT/TRAIN/DR1/FCJF0/SA1.WAV" in message and field in message
    assert "\n" not in message


def test_frames_are_normalized_zero_padded_and_ceil_of_length():
    samples = np.arange(-250, 201, dtype=np.int16)  # 451 samples -> 3 frames
    frames = frame(samples, mean=-25.0, std=10.0)
    assert frames.shape == (3, FRAME_SIZE) and frames.dtype == np.float32
    flat = frames.reshape(-1)
    np.testing.assert_allclose(flat[:451], (samples - -25.0) / 10.0)
    assert not flat[451:].any()
    assert frame(samples[:400], 0.0, 1.0).shape == (2, FRAME_SIZE)


# --------------------------------------------------------------------------- preprocessing


def test_timit_tree_splits_stats_from_train_only_and_exact_round_trip(tmp_path):
    written = make_timit(tmp_path / "src")
    report = preprocess_timit(MANIFEST, tmp_path / "src", tmp_path / "timit.h5")
    attrs, splits = read_store(tmp_path / "timit.h5")

    train_files = [r for r in written if "/TRAIN/" in r]
    assert len(train_files) == 40
    assert set(splits["test"]) == {r for r in written if "/TEST/" in r}
    assert len(splits["valid"]) == 2  # int(0.05 * 40)
    assert set(splits["train"]) | set(splits["valid"]) == set(train_files)
    assert not set(splits["train"]) & set(splits["valid"])
    assert report.sequences == {s: len(splits[s]) for s in splits} and report.skipped == []

    train_audio = np.concatenate([written[r].astype(np.float64) for r in splits["train"]])
    assert attrs["audio_mean"] == pytest.approx(train_audio.mean(), rel=1e-12)
    assert attrs["audio_std"] == pytest.approx(train_audio.std(), rel=1e-12)
    assert abs(attrs["audio_mean"]) < 500  # the loud test files (mean 20000) did not leak in
    assert attrs["bin_width"] == pytest.approx(1 / attrs["audio_std"])
    assert attrs["adapter"] == "timit" and attrs["likelihood"] == "gaussian" and attrs["layout"] == "timit"

    for split in splits.values():
        for name, (frames, length) in split.items():
            assert length == len(written[name])
            assert len(frames) == math.ceil(length / FRAME_SIZE)
            restored = to_int16(frames.reshape(-1)[:length], attrs["audio_mean"], attrs["audio_std"])
            np.testing.assert_array_equal(restored, written[name])
            assert not frames.reshape(-1)[length:].any()
    assert report.steps["train"] == sum(len(f) for f, _ in splits["train"].values())


def test_lower_case_tree_and_zip_give_the_same_store(tmp_path):
    make_timit(tmp_path / "upper")
    make_timit(tmp_path / "lower", lower=True)
    with zipfile.ZipFile(tmp_path / "timit.zip", "w") as archive:
        for path in sorted((tmp_path / "upper").rglob("*.WAV")):
            archive.write(path, path.relative_to(tmp_path / "upper").as_posix())
        archive.writestr("../evil.wav", sphere_bytes([1, 2, 3]))
    stores = {}
    for kind, source in (("upper", tmp_path / "upper"), ("lower", tmp_path / "lower"),
                         ("zip", tmp_path / "timit.zip")):
        report = preprocess_timit(MANIFEST, source, tmp_path / f"{kind}.h5")
        stores[kind] = read_store(tmp_path / f"{kind}.h5")
        if kind == "zip":
            assert [name for name, _ in report.skipped] == ["../evil.wav"]
            assert "unsafe" in report.skipped[0][1]
            assert "timit.zip" in report.sources
    (upper_attrs, upper), (lower_attrs, lower), (zip_attrs, zipped) = stores["upper"], stores["lower"], stores["zip"]
    for split in ("train", "valid", "test"):
        assert sorted(upper[split]) == sorted(n.upper() for n in lower[split]) == sorted(zipped[split])
    assert upper_attrs["audio_std"] == lower_attrs["audio_std"] == zip_attrs["audio_std"]


def test_bad_files_are_skipped_counted_and_do_not_shift_the_split(tmp_path):
    make_timit(tmp_path / "clean")
    clean_attrs, clean = read_store(preprocess_timit(MANIFEST, tmp_path / "clean", tmp_path / "clean.h5").path)
    src = tmp_path / "src"
    make_timit(src)
    samples = speech(np.random.default_rng(3), 600)
    victims = {
        "TIMIT/TRAIN/DR1/MTR000/SX1.WAV": (sphere_bytes(samples, sample_count=900), "sample_count"),
        "TIMIT/TRAIN/DR2/MTR010/SX2.WAV": (sphere_bytes(samples)[:-7], "sample_count"),
        "TIMIT/TRAIN/DR3/MTR020/SX3.WAV": (sphere_bytes(samples, coding="pcm,embedded-shorten-v2.00"),
                                            "sample_coding"),
        "TIMIT/TEST/DR1/MTE000/SX4.WAV": (sphere_bytes(samples, rate=8000), "8000"),
    }
    for rel, (data, _) in victims.items():
        (src / rel).write_bytes(data)
    report = preprocess_timit(MANIFEST, src, tmp_path / "timit.h5")
    assert sorted(name for name, _ in report.skipped) == sorted(victims)
    for name, reason in report.skipped:
        assert victims[name][1] in reason and name in reason
    attrs, splits = read_store(report.path)
    assert "SX1.WAV" in attrs["skipped"]
    for split in ("train", "valid", "test"):
        assert set(splits[split]) == set(clean[split]) - set(victims)

    with pytest.raises(DataError, match="sample_count"):
        preprocess_timit(MANIFEST, src, tmp_path / "strict.h5", strict=True)
    assert not (tmp_path / "strict.h5").exists()


def test_duplicate_riff_copy_is_ignored_and_counted(tmp_path):
    written = make_timit(tmp_path / "src")
    rel = "TIMIT/TRAIN/DR1/MTR000/SX1.WAV"
    (tmp_path / "src" / (rel + ".wav")).write_bytes(wav_bytes(written[rel]))
    report = preprocess_timit(MANIFEST, tmp_path / "src", tmp_path / "timit.h5")
    attrs, splits = read_store(report.path)
    assert attrs["duplicates"] == 1
    assert sum(len(s) for s in splits.values()) == len(written)


def test_valid_choice_is_fivo_sized_and_independent_of_order_and_case():
    keys = [f"DR{d}/M{s:04d}/S{u}.WAV" for d in range(1, 9) for s in range(58) for u in range(10)][:4620]
    chosen = valid_choice(keys)
    assert len(chosen) == 231 and len(keys) - len(chosen) == 4389
    assert valid_choice(list(reversed(keys))) == chosen
    assert valid_choice(keys[:3000]) != chosen  # depends on the corpus, not a fixed list
    assert len(valid_choice(keys[:10])) == 1    # small trees still get a valid split


def test_plain_wav_tree_is_not_timit_and_split_by_path_hash(tmp_path):
    rng = np.random.default_rng(4)
    for i in range(60):
        path = tmp_path / "speech" / f"spk{i % 4}" / f"utt{i:02d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(wav_bytes(speech(rng, int(rng.integers(250, 900)))))
    report = preprocess_timit(MANIFEST, tmp_path / "speech", tmp_path / "plain.h5")
    assert "not TIMIT" in report.dataset
    attrs, splits = read_store(report.path)
    assert attrs["layout"] == "plain"
    for split, names in splits.items():
        assert names and all(plain_split(n) == split for n in names)
    assert plain_split("spk0/utt00.wav") == plain_split("spk0/utt00.wav")


def test_too_few_plain_files_name_the_empty_split(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.wav").write_bytes(wav_bytes(np.zeros(400, np.int16)))
    with pytest.raises(DataError, match="not TIMIT.*empty"):
        preprocess_timit(MANIFEST, tmp_path / "one", tmp_path / "x.h5")


# --------------------------------------------------------------------------- likelihood


def test_discretized_gaussian_matches_scipy_and_sums_to_one():
    loc = torch.tensor([0.0, 0.3, -1.0, 2.0, 0.0], dtype=torch.float64)
    scale = torch.tensor([1.0, 0.05, 2.0, 0.5, 0.01], dtype=torch.float64)
    x = torch.tensor([0.1, 0.31, 3.0, -0.4, 0.0], dtype=torch.float64)
    w = 0.02
    expected = np.log(stats.norm.cdf(x + w / 2, loc, scale) - stats.norm.cdf(x - w / 2, loc, scale))
    got = discretized_gaussian_log_prob(loc, scale, x, w)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9)
    # far upper tail: Phi(40.05) and Phi(39.95) are both 1.0 in float64, their mirror images are not
    one = torch.tensor(1.0, dtype=torch.float64)
    tail = discretized_gaussian_log_prob(0 * one, one, 40 * one, 0.1)
    ref = stats.norm.logsf(39.95) + np.log1p(-np.exp(stats.norm.logsf(40.05) - stats.norm.logsf(39.95)))
    assert -810 < ref < -790
    assert tail.item() == pytest.approx(ref, rel=1e-9)
    # a grid of bins covering +-12 sigma holds all the probability
    centres = torch.arange(-12.0, 12.0, 0.25, dtype=torch.float64) * 0.7 + 0.4
    mass = discretized_gaussian_log_prob(torch.tensor(0.4), torch.tensor(0.7), centres, 0.25 * 0.7).exp().sum()
    assert mass.item() == pytest.approx(1.0, abs=1e-12)


def test_discretized_gaussian_narrow_bins_use_the_density_and_keep_dtype():
    loc, scale = torch.zeros(3), torch.tensor([1.0, 2.0, 0.5])
    x = torch.tensor([0.5, -1.0, 0.2])
    w = 1e-9
    got = discretized_gaussian_log_prob(loc, scale, x, w)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    expected = stats.norm.logpdf(x.numpy(), 0, scale.numpy()) + np.log(w)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    with pytest.raises(ValueError):
        discretized_gaussian_log_prob(loc, scale, x, 0.0)


# --------------------------------------------------------------------------- CLI


def test_cli_preprocess_train_eval_sample_writes_16khz_wavs(tmp_path):
    runner = CliRunner()
    make_timit(tmp_path / "src")
    root = tmp_path / "data"
    result = runner.invoke(app, ["preprocess", "timit", "--source", str(tmp_path / "src"), "--root", str(root)])
    assert result.exit_code == 0, result.output
    assert (root / "processed" / "timit.h5").exists()

    recipe = tmp_path / "tiny_timit.yaml"
    recipe.write_text(yaml.safe_dump({
        "data": {"dataset": "timit", "root": str(root), "batch_size": 2, "crop_length": 4, "eval_batch_size": 4},
        "model": {"name": "vrnn", "hidden_size": 8, "z_size": 3, "feature_size": 8},
        "inference": {"name": "direct", "hidden_sizes": [8]},
        "train": {"epochs": 1, "lr": 0.001},
    }))
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["train", str(recipe), "--run-dir", str(run_dir), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["eval", "--checkpoint", str(run_dir), "--split", "test", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads((run_dir / "eval" / "test.json").read_text())
    binned = report["columns"]["recon (binned)"]["nats_per_step"]
    # bins are one 16-bit step wide: -log P(bin) = -log p(x) - log(bin_width) per sample, to first order
    with Store(tmp_path / "data" / "processed" / "timit.h5") as store:
        width = float(store.attrs["bin_width"])
    assert binned == pytest.approx(report["recon_per_step"] - 200 * math.log(width), rel=1e-3)
    assert "F (binned)" in result.output

    for prime, out in ((0, "unprimed"), (2, "primed")):
        result = runner.invoke(app, ["sample", "--checkpoint", str(run_dir), "--num", "2", "--length", "5",
                                     "--prime", str(prime), "--out", str(tmp_path / out), "--device", "cpu"])
        assert result.exit_code == 0, result.output
        wavs = sorted((tmp_path / out).glob("*.wav"))
        assert len(wavs) == 2 and (tmp_path / out / "samples.png").exists()
        for path in wavs:
            rate, audio = wavfile.read(path)
            assert rate == 16000 and audio.dtype == np.int16 and audio.shape == (5 * FRAME_SIZE,)

    result = runner.invoke(app, ["download", "timit", "--root", str(root)])
    assert result.exit_code == 2
    assert "LDC93S1" in result.output and "--source" in result.output
