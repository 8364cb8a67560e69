"""Every bad input gets one clear answer: a table of malformed inputs generated here, run through the CLI.

Each case builds its input in a fresh folder and runs one command. An
``error`` case must exit with code 2 and print exactly one ``error:`` line
that names the file (and the key, field or reason given as the needle),
with no traceback. A ``skip`` case is a bad member of a corpus: plain
``preprocess`` skips it, lists it with its reason and counts it; ``--strict``
turns it into an ``error`` case. Nothing executes: a pickle, YAML tag or
checkpoint that would run a command is refused, and the command is shown not
to have run. All checkpoint cases reuse one tiny run trained once per module.
"""

from __future__ import annotations

import base64
import http.server
import io
import os
import pickle
import shutil
import socket
import threading
import zipfile
from pathlib import Path

import av
import h5py
import mido
import numpy as np
import pytest
import torch
import yaml
from scipy.io import wavfile
from typer.testing import CliRunner

from seqvi.cli import app
from seqvi.data.sphere import read_audio
from seqvi.errors import DataError

from conftest import REPO, TINY_MANIFEST, make_corpus, tiny_recipe

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


# --------------------------------------------------------------------------- shared inputs


class Ctx:
    """What every case may start from: a data root with a tiny store, a trained run, good sources."""


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    base = tmp_path_factory.mktemp("malformed")
    manifests = base / "manifests"
    manifests.mkdir()
    for path in (REPO / "seqvi" / "data" / "manifests").glob("*.yaml"):
        (manifests / path.name).write_text(path.read_text())
    (manifests / "tiny.yaml").write_text(TINY_MANIFEST)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEQVI_MANIFESTS", str(manifests))
        c = Ctx()
        c.base, c.manifests = base, manifests
        c.root = base / "data"
        make_corpus(c.root / "raw" / "tiny")
        c.midi = make_corpus(base / "midi", counts=(2, 1, 1))
        assert run("preprocess", "tiny", "--root", c.root).exit_code == 0
        c.store = c.root / "processed" / "tiny.h5"
        c.recipe = base / "tiny.yaml"
        c.recipe.write_text(yaml.safe_dump(tiny_recipe(c.root, epochs=1)))
        c.run_dir = base / "run"
        result = run("train", c.recipe, "--run-dir", c.run_dir, "--device", "cpu")
        assert result.exit_code == 0, result.output
        c.state = torch.load(c.run_dir / "checkpoints" / "best.pt", weights_only=True)
        c.timit = base / "timit"
        make_timit_tree(c.timit)
        c.kth = base / "kth"
        make_kth_tree(c.kth)
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Server)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        c.url = f"http://127.0.0.1:{httpd.server_address[1]}"
        yield c
        httpd.shutdown()
        httpd.server_close()


class Server(http.server.BaseHTTPRequestHandler):
    """/whole.zip: 64 bytes; /short.zip: promises 1000 bytes, sends 10 and hangs up; anything else: 404."""

    def do_GET(self):
        if self.path in ("/whole.zip", "/short.zip"):
            self.send_response(200)
            self.send_header("Content-Length", "64" if self.path == "/whole.zip" else "1000")
            self.end_headers()
            self.wfile.write(bytes(64) if self.path == "/whole.zip" else bytes(10))
            self.wfile.flush()
            self.close_connection = True
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


def make_timit_tree(root: Path) -> None:
    """TIMIT/{TRAIN,TEST}/DR1/<speaker>/SX?.WAV: 2 train speakers, 1 test speaker, 5 short utterances each."""
    rng = np.random.default_rng(0)
    for split, speakers in (("TRAIN", 2), ("TEST", 1)):
        for s in range(speakers):
            for u in range(5):
                path = root / "TIMIT" / split / "DR1" / f"M{split[:2]}{s:02d}0" / f"SX{u + 1}.WAV"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(sphere_bytes(rng.normal(0, 3000, 400).astype(np.int16)))


def sphere_bytes(samples, sample_count=None, coding=None, rate=16000) -> bytes:
    samples = np.asarray(samples, dtype=np.int16)
    fields = [f"sample_count -i {len(samples) if sample_count is None else sample_count}",
              f"sample_rate -i {rate}", "channel_count -i 1", "sample_n_bytes -i 2", "sample_byte_format -s2 01"]
    if coding:
        fields.append(f"sample_coding -s{len(coding)} {coding}")
    header = ("NIST_1A\n   1024\n" + "\n".join(fields) + "\nend_head\n").encode().ljust(1024, b" ")
    return header + samples.astype("<i2").tobytes()


def wav_bytes(samples, rate=16000) -> bytes:
    buf = io.BytesIO()
    wavfile.write(buf, rate, np.asarray(samples))
    return buf.getvalue()


KTH_SEQUENCES = """\
person11_walking_d1\t\tframes\t1-3, 4-6
person19_walking_d1\t\tframes\t1-3, 4-6
person22_walking_d1\t\tframes\t1-3, 4-6
person12_walking_d1\t\tframes\t1-3, 4-6
"""


def write_avi(path: Path, frames: int = 6) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "gray"
        for t in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((24, 32), 10 * t, np.uint8), format="gray")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def make_kth_tree(root: Path) -> None:
    """One video for each split of the official person split; person12 (train) is left for the cases."""
    for person in (11, 19, 22):
        write_avi(root / "walking" / f"person{person:02d}_walking_d1_uncomp.avi")
    write_avi(root / "walking" / "person12_walking_d1_uncomp.avi")
    (root / "00sequences.txt").write_text(KTH_SEQUENCES)


def midi_file(*notes, tpb=96) -> bytes:
    midi = mido.MidiFile(type=0, ticks_per_beat=tpb)
    track, last = mido.MidiTrack(), 0
    for tick, kind, pitch in sorted(notes):
        track.append(mido.Message(kind, note=pitch, velocity=64, time=tick - last))
        last = tick
    midi.tracks.append(track)
    buf = io.BytesIO()
    midi.save(file=buf)
    return buf.getvalue()


class RunsCommand:
    """A pickle that runs ``touch MARKER`` when unpickled by an unrestricted loader."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# --------------------------------------------------------------------------- the table

CASES = []


def case(id: str, mode: str = "error", needle: str = ""):
    """Register ``fn(ctx, tmp) -> (args, name)``: the command and the file name its answer must give."""
    def register(fn):
        CASES.append(pytest.param(fn, mode, needle, id=id))
        return fn
    return register


def recipe(tmp: Path, text: str, name: str = "bad_recipe.yaml") -> Path:
    path = tmp / name
    path.write_text(text)
    return path


# Recipes ------------------------------------------------------------------------

@case("recipe-unknown-key", needle="'train.lerning_rate'")
def _(c, tmp):
    return ["train", recipe(tmp, "train: {epochs: 1, lerning_rate: 3}\n")], "bad_recipe.yaml"


@case("recipe-wrong-type", needle="'train.epochs' must be int")
def _(c, tmp):
    return ["train", recipe(tmp, "train: {epochs: many}\n")], "bad_recipe.yaml"


@case("recipe-bad-yaml", needle="line 2")
def _(c, tmp):
    return ["train", recipe(tmp, "data: {dataset: [\n")], "bad_recipe.yaml"


@case("recipe-alias-bomb", needle="alias bomb")
def _(c, tmp):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    return ["train", recipe(tmp, "\n".join(lines) + "\n")], "bad_recipe.yaml"  # 10^10 nodes expanded


@case("recipe-extends-cycle", needle="cycle")
def _(c, tmp):
    recipe(tmp, "extends: bad_recipe.yaml\n", "other.yaml")
    return ["train", recipe(tmp, "extends: other.yaml\n")], "bad_recipe.yaml"


@case("recipe-extends-missing-file", needle="no such file")
def _(c, tmp):
    return ["train", recipe(tmp, "extends: base_that_is_not_there.yaml\n")], "base_that_is_not_there.yaml"


@case("recipe-missing-file", needle="no such file")
def _(c, tmp):
    return ["train", tmp / "no_such_recipe.yaml"], "no_such_recipe.yaml"


@case("recipe-not-a-mapping", needle="mapping")
def _(c, tmp):
    return ["train", recipe(tmp, "- train\n- data\n")], "bad_recipe.yaml"


@case("recipe-non-string-key", needle="key 1")
def _(c, tmp):
    return ["train", recipe(tmp, "1: {epochs: 2}\n")], "bad_recipe.yaml"


@case("recipe-section-not-a-mapping", needle="'train' must be a section")
def _(c, tmp):
    return ["train", recipe(tmp, "train: 3\n")], "bad_recipe.yaml"


@case("recipe-batch-size-zero", needle="'data.batch_size' must be at least 1")
def _(c, tmp):
    return ["train", recipe(tmp, f"data: {{dataset: tiny, root: '{c.root}', batch_size: 0}}\n")], "bad_recipe.yaml"


@case("recipe-negative-model-size", needle="negative dimension")
def _(c, tmp):
    text = f"data: {{dataset: tiny, root: '{c.root}'}}\nmodel: {{name: vrnn, hidden_size: -3}}\n"
    return ["train", recipe(tmp, text), "--run-dir", tmp / "run", "--device", "cpu"], "bad_recipe.yaml"


@case("recipe-python-tag-runs-nothing", needle="python/object/apply")
def _(c, tmp):
    marker = tmp / "yaml_ran"
    text = f"seed: !!python/object/apply:os.system ['touch {marker}']\n"
    return ["train", recipe(tmp, text)], "bad_recipe.yaml"


@case("manifest-unknown-adapter", needle="unknown 'adapter' 'nope'")
def _(c, tmp):
    (c.manifests / "badadapter.yaml").write_text("name: badadapter\ntitle: t\nadapter: nope\ndownload: http\n")
    return ["preprocess", "badadapter", "--source", c.midi, "--root", tmp], "badadapter.yaml"


# MIDI (bad members of a corpus: skipped and counted; fatal with --strict) -------

def midi_corpus(c, tmp: Path, name: str, data: bytes) -> tuple[list, str]:
    src = tmp / "corpus"
    shutil.copytree(c.midi, src)
    path = src / "train" / name
    path.write_bytes(data)
    return ["preprocess", "tiny", "--source", src, "--root", tmp / "data"], f"train/{name}"


@case("midi-garbage", "skip", "not a readable MIDI file")
def _(c, tmp):
    return midi_corpus(c, tmp, "garbage.mid", b"this is not a standard MIDI file at all" * 3)


@case("midi-truncated", "skip", "truncated")
def _(c, tmp):
    return midi_corpus(c, tmp, "truncated.mid", midi_file((0, "note_on", 60), (96, "note_off", 60))[:25])


@case("midi-zero-length", "skip", "truncated or empty")
def _(c, tmp):
    return midi_corpus(c, tmp, "empty.mid", b"")


@case("midi-absurd-length", "skip", "200001 steps, more than the cap of 100000")
def _(c, tmp):  # one note 200000 beats in: the roll's computed length is named against --max-steps
    return midi_corpus(c, tmp, "long.mid", midi_file((0, "note_on", 60), (96, "note_off", 60),
                                                      (96 * 200000, "note_on", 62), (96 * 200001, "note_off", 62)))


@case("midi-smpte-division", "skip", "SMPTE")
def _(c, tmp):
    header = b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\xe7\x28"  # division: -25 fps, 40 ticks per frame
    return midi_corpus(c, tmp, "smpte.mid", header + b"MTrk\x00\x00\x00\x04\x00\xff\x2f\x00")


@case("midi-oversized-file", "skip", "over the 16 MiB cap")
def _(c, tmp):
    args, name = midi_corpus(c, tmp, "huge.mid", b"")
    with open(tmp / "corpus" / name, "r+b") as handle:
        handle.truncate(17 << 20)  # sparse: no disk, but a 17 MiB file to read
    return args, name


@case("midi-empty-split-after-skipping", needle="split 'valid' is empty after preprocessing")
def _(c, tmp):
    src = tmp / "corpus"
    shutil.copytree(c.midi, src)
    (src / "valid" / "valid_00.mid").write_bytes(b"MThd broken")
    return ["preprocess", "tiny", "--source", src, "--root", tmp / "data"], "valid/valid_00.mid"


# Pickles (the whole source: one error) --------------------------------------------

def note_pickle(tmp: Path, obj=None, data: bytes | None = None, name="notes.pickle") -> tuple[list, str]:
    path = tmp / name
    path.write_bytes(pickle.dumps(obj, protocol=2) if data is None else data)
    return ["preprocess", "jsb-chorales", "--source", path, "--root", tmp / "data"], name


GOOD_NOTES = {"train": [[[60, 64], [62]]] * 2, "valid": [[[60]]], "test": [[[67.0]]]}


@case("pickle-runs-a-command", needle="refused to load the global")
def _(c, tmp):
    return note_pickle(tmp, {"train": [RunsCommand(tmp / "pickle_ran")], "valid": [], "test": []})


@case("pickle-truncated", needle="truncated")
def _(c, tmp):
    data = pickle.dumps(GOOD_NOTES, protocol=2)
    return note_pickle(tmp, data=data[:len(data) // 2])


@case("pickle-zero-length", needle="not a readable pickle")
def _(c, tmp):
    return note_pickle(tmp, data=b"")


@case("pickle-wrong-structure", needle="holds a list")
def _(c, tmp):
    return note_pickle(tmp, [[60, 64], [62]])


@case("pickle-missing-split", needle="no split 'valid'")
def _(c, tmp):
    return note_pickle(tmp, {"train": GOOD_NOTES["train"], "test": GOOD_NOTES["test"]})


@case("pickle-bad-note", needle="train[0][1][0]")
def _(c, tmp):
    return note_pickle(tmp, {**GOOD_NOTES, "train": [[[60], ["C4"]]]})


@case("pickle-shared-reference-bomb", needle="decompression bomb")
def _(c, tmp):  # a few KB standing for 12 million steps
    step = [60, 64]
    sequence = [step] * 2000
    split = [sequence] * 2000
    return note_pickle(tmp, {"train": split, "valid": split, "test": split})


@case("pickle-note-outside-piano", needle="split 'valid' is empty")
def _(c, tmp):
    return note_pickle(tmp, {**GOOD_NOTES, "valid": [[[60], [200]]]})


# SPHERE and WAV (bad members of a TIMIT tree) --------------------------------------

def timit_tree(c, tmp: Path, data: bytes, name="SX9.WAV") -> tuple[list, str]:
    src = tmp / "timit"
    shutil.copytree(c.timit, src)
    rel = f"TIMIT/TEST/DR1/MTE000/{name}"
    (src / rel).write_bytes(data)
    return ["preprocess", "timit", "--source", src, "--root", tmp / "data"], rel


SPEECH = (np.sin(np.arange(800) / 5) * 3000).astype(np.int16)


@case("sphere-bad-magic", "skip", "not a NIST SPHERE")
def _(c, tmp):
    return timit_tree(c, tmp, b"NIST_1B\n" + sphere_bytes(SPEECH)[8:])


@case("sphere-lying-sample-count", "skip", "sample_count = 1000000")
def _(c, tmp):
    return timit_tree(c, tmp, sphere_bytes(SPEECH, sample_count=1_000_000))


@case("sphere-truncated", "skip", "truncated file")
def _(c, tmp):
    return timit_tree(c, tmp, sphere_bytes(SPEECH)[:1500])


@case("sphere-truncated-header", "skip", "header size 1024 exceeds")
def _(c, tmp):
    return timit_tree(c, tmp, sphere_bytes(SPEECH)[:300])


@case("sphere-shorten", "skip", "shorten")
def _(c, tmp):
    return timit_tree(c, tmp, sphere_bytes(SPEECH, coding="pcm,embedded-shorten-v2.00"))


@case("sphere-bad-field", "skip", "sample_rate at byte")
def _(c, tmp):
    return timit_tree(c, tmp, sphere_bytes(SPEECH).replace(b"sample_rate -i 16000", b"sample_rate -i 16k00"))


@case("wav-truncated-riff-header", "skip", "unreadable RIFF WAV")
def _(c, tmp):  # found by hand: scipy raised struct.error, a traceback before the fix
    return timit_tree(c, tmp, wav_bytes(SPEECH)[:30])


@case("wav-truncated-data", "skip", "truncated RIFF WAV")
def _(c, tmp):  # read short without a word before the fix
    data = wav_bytes(SPEECH)
    return timit_tree(c, tmp, data[:len(data) // 2])


@case("wav-wrong-rate", "skip", "8000 Hz")
def _(c, tmp):
    return timit_tree(c, tmp, wav_bytes(SPEECH, rate=8000))


@case("wav-stereo", "skip", "channels = 2")
def _(c, tmp):
    return timit_tree(c, tmp, wav_bytes(np.stack([SPEECH, SPEECH], 1)))


# AVI (bad members of a KTH tree) ---------------------------------------------------

def kth_tree(c, tmp: Path, data: bytes) -> tuple[list, str]:
    src = tmp / "kth"
    shutil.copytree(c.kth, src)
    rel = "walking/person12_walking_d1_uncomp.avi"
    (src / rel).write_bytes(data)
    return ["preprocess", "kth", "--source", src, "--root", tmp / "data"], rel


@case("avi-garbage", "skip", "not a decodable video")
def _(c, tmp):
    return kth_tree(c, tmp, b"RIFF" + bytes(range(256)) * 8)


@case("avi-zero-length", "skip", "not a decodable video")
def _(c, tmp):
    return kth_tree(c, tmp, b"")


@case("avi-truncated", "skip", "person12_walking_d1_uncomp.avi")
def _(c, tmp):
    data = (c.kth / "walking" / "person12_walking_d1_uncomp.avi").read_bytes()
    return kth_tree(c, tmp, data[:200])


# HDF5 (the processed store) ----------------------------------------------------------

def broken_store(c, tmp: Path, edit=None, data: bytes | None = None) -> tuple[list, str]:
    store = tmp / "data" / "processed" / "tiny.h5"
    store.parent.mkdir(parents=True)
    if data is not None:
        store.write_bytes(data)
    else:
        shutil.copy(c.store, store)
        with h5py.File(store, "r+") as f:
            edit(f)
    args = ["train", c.recipe, f"data.root={tmp / 'data'}", "--run-dir", tmp / "run", "--device", "cpu"]
    return args, str(store)


@case("h5-garbage", needle="not a readable HDF5 store")
def _(c, tmp):
    return broken_store(c, tmp, data=b"\x89HDF\r\n" + bytes(range(256)) * 4)


@case("h5-truncated", needle="truncated file")
def _(c, tmp):
    data = c.store.read_bytes()
    return broken_store(c, tmp, data=data[:len(data) // 2])


@case("h5-missing-split", needle="no split 'valid'")
def _(c, tmp):
    return broken_store(c, tmp, lambda f: f.__delitem__("valid"))


def _bad_offsets(f):
    offsets = f["train/offsets"][:]
    offsets[1] = 10 ** 9
    f["train/offsets"][...] = offsets


@case("h5-offsets-corrupted", needle="offsets do not match")
def _(c, tmp):
    return broken_store(c, tmp, _bad_offsets)


@case("h5-frame-shape-lies", needle="frame_shape attribute says (12,)")
def _(c, tmp):
    return broken_store(c, tmp, lambda f: f.attrs.__setitem__("frame_shape", np.array([12])))


@case("h5-corrupt-chunk", needle="is unreadable")
def _(c, tmp):  # h5py reads lazily: the damage shows only when training reads the chunk
    args, store = broken_store(c, tmp, lambda f: None)
    with h5py.File(store, "r") as f:
        info = f["train/frames"].id.get_chunk_info(0)
        offset, size = info.byte_offset, info.size
    with open(store, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\xff" * size)
    return args, store


@case("h5-only-a-tmp-left", needle="no processed store")
def _(c, tmp):  # an interrupted preprocess leaves NAME.h5.tmp: never mistaken for the store
    args, store = broken_store(c, tmp, data=c.store.read_bytes())
    Path(store).rename(store + ".tmp")
    return args, store


@case("h5-other-shape-than-checkpoint", needle="trained on frames of shape (88,)")
def _(c, tmp):
    store = tmp / "other.h5"
    with h5py.File(store, "w") as f:
        f.attrs["frame_shape"] = np.array([12])
        for split in ("train", "valid", "test"):
            f[f"{split}/frames"] = np.zeros((4, 12), np.uint8)
            f[f"{split}/offsets"] = np.array([0, 4])
            f.create_dataset(f"{split}/names", data=["a"], dtype=h5py.string_dtype())
    state = {**c.state, "data": {**c.state["data"], "store": str(store)}}
    torch.save(state, tmp / "moved.pt")
    return ["eval", "--checkpoint", tmp / "moved.pt", "--device", "cpu"], "moved.pt"


# Zips ------------------------------------------------------------------------------

def midi_zip(c, tmp: Path, extra: dict[str, bytes], name="corpus.zip", stored=False) -> Path:
    path = tmp / name
    method = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(path, "w", method) as archive:
        for midi in sorted(c.midi.rglob("*.mid")):
            archive.write(midi, "Tiny/" + midi.relative_to(c.midi).as_posix())
        for member, data in extra.items():
            archive.writestr(member, data)
    return path


@case("zip-corrupt", needle="corrupt zip")
def _(c, tmp):
    path = midi_zip(c, tmp, {})
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return ["preprocess", "tiny", "--source", path, "--root", tmp / "data"], "corpus.zip"


@case("zip-member-dotdot", "skip", "unsafe path in zip")
def _(c, tmp):
    good = (c.midi / "train" / "train_00.mid").read_bytes()
    path = midi_zip(c, tmp, {"Tiny/train/../../../escape.mid": good})
    return ["preprocess", "tiny", "--source", path, "--root", tmp / "data"], "Tiny/train/../../../escape.mid"


@case("zip-member-absolute", "skip", "unsafe path in zip")
def _(c, tmp):
    good = (c.midi / "train" / "train_00.mid").read_bytes()
    path = midi_zip(c, tmp, {"/tmp/train/absolute.mid": good})
    return ["preprocess", "tiny", "--source", path, "--root", tmp / "data"], "/tmp/train/absolute.mid"


@case("zip-member-bad-crc", "skip", "corrupt zip member")
def _(c, tmp):
    path = midi_zip(c, tmp, {"Tiny/train/damaged.mid": b"MThd" + bytes(200)}, stored=True)
    data = bytearray(path.read_bytes())
    at = data.find(b"MThd" + bytes(200))
    data[at + 100] = 1  # stored (no compression): the CRC no longer matches
    path.write_bytes(bytes(data))
    return ["preprocess", "tiny", "--source", path, "--root", tmp / "data"], "Tiny/train/damaged.mid"


@case("zip-member-inflates-past-cap", "skip", "over the 16 MiB cap")
def _(c, tmp):  # 17 MiB of zeros deflate to about 17 KB
    path = midi_zip(c, tmp, {"Tiny/train/bomb.mid": bytes(17 << 20)})
    return ["preprocess", "tiny", "--source", path, "--root", tmp / "data"], "Tiny/train/bomb.mid"


# Checkpoints -------------------------------------------------------------------------

def checkpoint(c, tmp: Path, state=None, data: bytes | None = None, name="bad.pt", command="eval"):
    path = tmp / name
    if data is not None:
        path.write_bytes(data)
    else:
        torch.save(state, path)
    return [command, "--checkpoint", path, "--device", "cpu"], name


@case("checkpoint-garbage-eval", needle="not a loadable seqvi checkpoint")
def _(c, tmp):
    return checkpoint(c, tmp, data=bytes(range(256)) * 4)


@case("checkpoint-garbage-sample", needle="not a loadable seqvi checkpoint")
def _(c, tmp):
    return checkpoint(c, tmp, data=bytes(range(256)) * 4, command="sample")


@case("checkpoint-garbage-predict", needle="not a loadable seqvi checkpoint")
def _(c, tmp):
    return checkpoint(c, tmp, data=bytes(range(256)) * 4, command="predict")


@case("checkpoint-truncated", needle="truncated or corrupt")
def _(c, tmp):
    data = (c.run_dir / "checkpoints" / "best.pt").read_bytes()
    return checkpoint(c, tmp, data=data[:len(data) // 2])


@case("checkpoint-runs-a-command", needle="refused by the weights-only loader")
def _(c, tmp):
    return checkpoint(c, tmp, {**c.state, "model": RunsCommand(tmp / "checkpoint_ran")})


@case("checkpoint-other-model-size", needle="size mismatch")
def _(c, tmp):
    config = {**c.state["config"], "model": {**c.state["config"]["model"], "hidden_size": 16}}
    return checkpoint(c, tmp, {**c.state, "config": config})


@case("checkpoint-other-version", needle="version 2 is not supported")
def _(c, tmp):
    return checkpoint(c, tmp, {**c.state, "version": 2}, command="sample")


@case("checkpoint-missing-key", needle="('inference')")
def _(c, tmp):
    return checkpoint(c, tmp, {k: v for k, v in c.state.items() if k != "inference"})


@case("checkpoint-not-seqvi", needle="no 'seqvi-checkpoint' marker")
def _(c, tmp):
    return checkpoint(c, tmp, {"weight": torch.zeros(3)})


@case("checkpoint-resume-missing-key", needle="cannot resume")
def _(c, tmp):
    run_dir = tmp / "run"
    shutil.copytree(c.run_dir, run_dir)
    torch.save({k: v for k, v in c.state.items() if k != "optimizer"}, run_dir / "checkpoints" / "last.pt")
    return ["train", c.recipe, "--run-dir", run_dir, "--device", "cpu", "train.epochs=2"], "last.pt"


@case("run-config-corrupt", needle="corrupt run config")
def _(c, tmp):
    run_dir = tmp / "run"
    shutil.copytree(c.run_dir, run_dir)
    (run_dir / "config.yaml").write_text("- not\n- a mapping\n")
    return ["train", c.recipe, "--run-dir", run_dir, "--device", "cpu"], "config.yaml"


@case("run-dir-other-config", needle="different config (train.lr: 0.01 -> 0.5)")
def _(c, tmp):
    run_dir = tmp / "run"
    shutil.copytree(c.run_dir, run_dir)
    return ["train", c.recipe, "train.lr=0.5", "--run-dir", run_dir, "--device", "cpu"], "run"


# Synthetic corpus (.npz) --------------------------------------------------------------

def lgssm_npz(tmp: Path, data: bytes | None = None, **arrays) -> tuple[list, str]:
    path = tmp / "lgssm.npz"
    if data is not None:
        path.write_bytes(data)
    else:
        np.savez(path, **arrays)
    return ["preprocess", "lgssm", "--source", path, "--root", tmp / "data"], "lgssm.npz"


X = np.zeros((2, 5, 3))


@case("npz-garbage", needle="not a readable .npz")
def _(c, tmp):
    return lgssm_npz(tmp, data=b"PK\x03\x04" + bytes(range(200)))


@case("npz-object-array-runs-nothing", needle="allow_pickle=False")
def _(c, tmp):
    return lgssm_npz(tmp, x_train=np.array([RunsCommand(tmp / "npz_ran")], dtype=object), x_valid=X, x_test=X,
                     system=np.array('{"C": [[1, 0], [0, 1], [1, 1]]}'))


@case("npz-system-not-json", needle="array 'system'")
def _(c, tmp):
    return lgssm_npz(tmp, x_train=X, x_valid=X, x_test=X, system=np.array("{not json"))


# Downloads ------------------------------------------------------------------------------

def download(c, tmp: Path, url: str, sha256: str | None = None) -> tuple[list, str]:
    name = tmp.name[-20:].lower().replace("_", "-")
    (c.manifests / f"{name}.yaml").write_text(yaml.safe_dump({
        "name": name, "title": "t", "adapter": "midi", "download": "http",
        "files": [{"name": "corpus.zip", "sha256": sha256, "urls": [url]}]}))
    return ["download", name, "--root", tmp / "data"], url


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@case("download-host-not-answering", needle="host did not answer")
def _(c, tmp):
    return download(c, tmp, f"http://127.0.0.1:{closed_port()}/corpus.zip")


@case("download-404", needle="HTTP 404")
def _(c, tmp):
    return download(c, tmp, f"{c.url}/missing.zip")


@case("download-truncated-body", needle="truncated at 10 of 1000 bytes")
def _(c, tmp):
    return download(c, tmp, f"{c.url}/short.zip")


@case("download-checksum-mismatch", needle="expected " + "0" * 64)
def _(c, tmp):
    return download(c, tmp, f"{c.url}/whole.zip", sha256="0" * 64)


# Nonexistent and unusable paths, for every command --------------------------------------

@case("path-sample-out-is-a-file", needle="File exists")
def _(c, tmp):
    (tmp / "out_file").write_text("x")
    return ["sample", "--checkpoint", c.run_dir, "--device", "cpu", "--num", 1, "--length", 4,
            "--out", tmp / "out_file"], "out_file"


@case("path-download-root-under-a-file", needle="Not a directory")
def _(c, tmp):
    (tmp / "afile").write_text("x")
    return ["download", "tiny", "--root", tmp / "afile"], "afile"


@case("path-preprocess-source", needle="no such file or folder")
def _(c, tmp):
    return ["preprocess", "tiny", "--source", tmp / "no_such_corpus.zip"], "no_such_corpus.zip"


@case("path-train-recipe", needle="no such file")
def _(c, tmp):
    return ["train", tmp / "no_such.yaml"], "no_such.yaml"


@case("path-eval-checkpoint", needle="no such run directory or checkpoint")
def _(c, tmp):
    return ["eval", "--checkpoint", tmp / "no_such_run"], "no_such_run"


@case("path-sample-checkpoint", needle="no such run directory or checkpoint")
def _(c, tmp):
    return ["sample", "--checkpoint", tmp / "no_such.pt"], "no_such.pt"


@case("path-predict-checkpoint", needle="no such run directory or checkpoint")
def _(c, tmp):
    return ["predict", "--checkpoint", tmp / "no_such_run"], "no_such_run"


@case("path-eval-json-is-a-folder", needle="is a folder")
def _(c, tmp):
    (tmp / "out_folder").mkdir()
    return ["eval", "--checkpoint", c.run_dir, "--device", "cpu", "--json", tmp / "out_folder"], "out_folder"


@case("path-run-dir-empty", needle="no checkpoints/best.pt or last.pt")
def _(c, tmp):
    (tmp / "empty_run").mkdir()
    return ["sample", "--checkpoint", tmp / "empty_run"], "empty_run"


# --------------------------------------------------------------------------- the test


def assert_one_error(result, name: str, needle: str) -> None:
    out = result.output
    assert result.exit_code == 2, out
    assert "Traceback" not in out
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    assert name in errors[0], errors[0]
    assert needle in errors[0], errors[0]


@pytest.mark.parametrize("build, mode, needle", CASES)
def test_bad_input_gets_one_clear_answer(ctx, tmp_path, monkeypatch, build, mode, needle):
    monkeypatch.setenv("SEQVI_MANIFESTS", str(ctx.manifests))
    args, name = build(ctx, tmp_path)
    result = run(*args)
    if mode == "error":
        assert_one_error(result, name, needle)
    else:
        out = result.output
        assert result.exit_code == 0, out
        assert "Traceback" not in out
        assert "skipped 1 unreadable files" in out, out
        listed = [line for line in out.splitlines() if line.strip().startswith(f"skipped {name}:")]
        assert len(listed) == 1 and needle in listed[0], out
        assert_one_error(run(*args, "--strict"), name, needle)
    assert not list(tmp_path.glob("*_ran")), "a refused input ran a command"


def test_table_is_big_enough():
    assert len(CASES) >= 40
    kinds = {p.id.split("-")[0] for p in CASES}
    assert {"recipe", "midi", "pickle", "sphere", "wav", "avi", "h5", "zip", "checkpoint", "npz", "download", "path"} <= kinds


# --------------------------------------------------------------------------- nothing executed


def test_pickle_that_runs_a_command_is_refused_and_the_command_does_not_run(ctx, tmp_path, monkeypatch):
    monkeypatch.setenv("SEQVI_MANIFESTS", str(ctx.manifests))
    # The payload is live: an ordinary unpickler runs it.
    probe = tmp_path / "ordinary_unpickler_ran"
    pickle.loads(pickle.dumps(RunsCommand(probe)))
    assert probe.exists()
    marker = tmp_path / "seqvi_ran"
    payload = pickle.dumps({"train": [RunsCommand(marker)], "valid": [], "test": []}, protocol=2)
    (tmp_path / "evil.pickle").write_bytes(payload)
    result = run("preprocess", "jsb-chorales", "--source", tmp_path / "evil.pickle", "--root", tmp_path / "d")
    assert_one_error(result, "evil.pickle", "posix.system")
    torch.save({**ctx.state, "model": RunsCommand(marker)}, tmp_path / "evil.pt")
    for command in ("eval", "sample", "predict"):
        assert_one_error(run(command, "--checkpoint", tmp_path / "evil.pt"), "evil.pt", "posix.system")
    recipe_path = tmp_path / "evil.yaml"
    recipe_path.write_text(f"seed: !!python/object/apply:os.system ['touch {marker}']\n")
    assert_one_error(run("train", recipe_path), "evil.yaml", "python/object/apply")
    assert not marker.exists()


def test_alias_bomb_is_refused_quickly(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 12)]
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(lines) + "\n")  # 10^12 nodes once expanded
    # "alias bomb" is said only by the node count taken before the document is built: refused before
    # expanding (order, not wall time).
    assert_one_error(run("train", path), "laughs.yaml", "alias bomb")


# --------------------------------------------------------------------------- fuzzing regressions

# Inputs found by fuzz/fuzz_sphere.py (atheris); each broke the reader's contract before its fix.
FUZZ_AUDIO = {
    # RIFF WAV whose fmt chunk says 0 samples per second: read as rate 0 before the fix.
    "wav-rate-zero": "UklGRqQnAABXQVZFZm10IBAAAAABAAEAAAAAAAAAAAACABAAZGF0YYAAAAAAANUDPwfcCWMLqgunCnlOSVNUXzFBCiAgIDEwMjQK"
                     "ZGF0YWJhc05JU1RfMUEKICAgMTAyNApkYXRhYmFzZV9pZCAtczUgVElNSVQKc2FtcGxlX2NvdW50IC1pIDY0CnNhbXBsZV9y"
                     "YXRlIC1pIDE2MDAwCmNoYW5uZWxfY291bnQgLWkgMQpzYW1wbGVfbl9lX2lkIC159jr5uvyWYnl0AA==",
}


@pytest.mark.parametrize("key", sorted(FUZZ_AUDIO))
def test_fuzz_found_audio_inputs_are_refused(key):
    data = base64.b64decode(FUZZ_AUDIO[key])
    with pytest.raises(DataError, match=r"^fuzz\.wav: "):
        read_audio(data, "fuzz.wav")
