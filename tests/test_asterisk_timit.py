"""scripts/asterisk_timit.py on a tiny sounds tree of real G.722 files (encoded here by ffmpeg),
then through ``seqvi preprocess timit``: the TIMIT layout, the split by speaker, the WAV format."""

from __future__ import annotations

import subprocess
import sys
import wave
from pathlib import Path

import pytest
from typer.testing import CliRunner

from seqvi.cli import app
from seqvi.data.sphere import read_audio_file

imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "asterisk_timit.py"


def g722(path: Path, seconds: float, hz: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-f", "lavfi",
                    "-i", f"sine=frequency={hz}:sample_rate=16000:duration={seconds}", "-c:a", "g722",
                    "-f", "g722", str(path)], check=True)


@pytest.fixture
def sounds(tmp_path):
    root = tmp_path / "sounds"
    for i, voice in enumerate(["es_MX_f_Allison", "fr_CA_f_June", "it_IT_m_Carlo"]):
        g722(root / voice / "vm-hello.g722", 1.5, 300 + 100 * i)
        g722(root / voice / "digits" / "7.g722", 1.2, 500 + 100 * i)
        g722(root / voice / "vm-short.g722", 0.3, 400)          # under --min-seconds: left out
        g722(root / voice / "beep.g722", 1.5, 1000)              # a tone by name: left out
    (root / "es").symlink_to(root / "es_MX_f_Allison")           # Debian's alternatives links: not a voice
    (root / "notes").mkdir()                                     # no prompts: not a voice
    return root


def test_tiny_tree_becomes_timit_split_by_speaker(sounds, tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(SCRIPT), str(out), "--sounds", str(sounds)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    timit = out / "TIMIT"
    speakers = {split: sorted(p.name for p in (timit / split / "DR1").iterdir()) for split in ("TRAIN", "TEST")}
    assert speakers == {"TRAIN": ["FALLI0", "FJUNE0"], "TEST": ["MCARL0"]}   # disjoint, one per voice
    for split in ("TRAIN", "TEST"):
        for speaker in speakers[split]:
            files = sorted(p.name for p in (timit / split / "DR1" / speaker).iterdir())
            assert files == ["DIGITS_7.WAV", "VM-HELLO.WAV"]                  # no short prompt, no tone, no .part
    wav = timit / "TRAIN" / "DR1" / "FALLI0" / "VM-HELLO.WAV"
    with wave.open(str(wav)) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (16000, 2, 1)
        assert abs(w.getnframes() - 1.5 * 16000) < 400
    samples, rate = read_audio_file(wav)
    assert rate == 16000 and samples.std() > 1000                           # a tone, not silence

    again = tmp_path / "again"
    subprocess.run([sys.executable, str(SCRIPT), str(again), "--sounds", str(sounds)], check=True, capture_output=True)
    assert wav.read_bytes() == (again / wav.relative_to(out)).read_bytes()   # reproducible

    result = CliRunner().invoke(app, ["preprocess", "timit", "--source", str(out), "--root", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    assert "not TIMIT" not in result.output                                 # read as the TIMIT layout


def test_a_missing_sounds_folder_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "out"), "--sounds", str(tmp_path / "none")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and "asterisk-core-sounds" in done.stderr
    assert not (tmp_path / "out").exists()
