"""The restricted unpickler: real pickles, including a malicious one, never mocked."""

import os
import pickle
import struct

import pytest

from seqvi.data.safe_pickle import load_note_pickle
from seqvi.errors import DataError


class RunsAShellCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_a_pickle_that_calls_os_system_is_refused_before_it_runs(tmp_path, protocol):
    marker = tmp_path / "MARKER"
    evil = {"train": [[[60]]], "valid": RunsAShellCommand(f"touch {marker}"), "test": []}
    path = write(tmp_path, "evil.pickle", pickle.dumps(evil, protocol=protocol))
    with pytest.raises(DataError) as err:
        load_note_pickle(path)
    assert not marker.exists()
    message = str(err.value)
    assert "posix.system" in message or "os.system" in message
    assert "evil.pickle" in message and "\n" not in message


def test_builtins_are_refused_too(tmp_path):
    path = write(tmp_path, "set.pickle", pickle.dumps({"train": {60, 64}, "valid": [], "test": []}, protocol=2))
    with pytest.raises(DataError, match=r"(__builtin__|builtins)\.set"):
        load_note_pickle(path)


def test_a_protocol_2_nested_list_corpus_loads_as_ints(tmp_path):
    corpus = {
        "train": [[[60, 64.0], [], (67, 72)], [[21]]],
        "valid": [[[108.0]]],
        "test": [],
        "comment": "extra keys are ignored",
    }
    path = write(tmp_path, "corpus.pickle", pickle.dumps(corpus, protocol=2))
    loaded = load_note_pickle(path)
    assert loaded == {"train": [[[60, 64], [], [67, 72]], [[21]]], "valid": [[[108]]], "test": []}
    assert all(type(n) is int for seq in loaded["train"] for step in seq for n in step)
    assert type(loaded["valid"][0][0][0]) is int


def test_a_python_2_style_pickle_with_byte_string_keys_loads(tmp_path):
    # What Python 2's cPickle.dump(obj, f, 2) writes: str keys as SHORT_BINSTRING,
    # 67.0 as BINFLOAT, ints as BININT1.
    data = (
        b"\x80\x02}(U\x05train]]](K<K@eaG" + struct.pack(">d", 67.0) + b"\x85aa"
        b"U\x05valid]U\x04test]u."
    )
    loaded = load_note_pickle(write(tmp_path, "py2.pickle", data))
    assert loaded == {"train": [[[60, 64], [67]]], "valid": [], "test": []}


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty"])
def test_truncated_or_garbage_pickles_are_refused(tmp_path, kind):
    good = pickle.dumps({"train": [[[60, 64]] * 20], "valid": [], "test": []}, protocol=2)
    data = {"truncated": good[: len(good) // 2], "garbage": b"\x80\x02\xff\xfe garbage", "empty": b""}[kind]
    path = write(tmp_path, f"{kind}.pickle", data)
    with pytest.raises(DataError, match="not a readable pickle") as err:
        load_note_pickle(path)
    assert f"{kind}.pickle" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "corpus, where",
    [
        ({"train": [[[60], [61, "x"]]], "valid": [], "test": []}, r"train\[0\]\[1\]\[1\] is 'x'"),
        ({"train": [], "valid": [[[60], [61], {"a": 1}]], "test": []}, r"valid\[0\]\[2\] is a dict"),
        ({"train": [], "valid": [], "test": [[[60]], "abc"]}, r"test\[1\] is a str"),
        ({"train": [[[60.5]]], "valid": [], "test": []}, r"train\[0\]\[0\]\[0\] is 60\.5"),
        ({"train": [[[True]]], "valid": [], "test": []}, r"train\[0\]\[0\]\[0\] is True"),
        ({"train": (), "valid": [], "test": []}, r"train is a tuple"),
        ({"train": [], "test": []}, r"no split 'valid'"),
        ([[[60]]], r"holds a list, expected a dict"),
    ],
)
def test_wrong_structure_names_the_path(tmp_path, corpus, where):
    path = write(tmp_path, "shape.pickle", pickle.dumps(corpus, protocol=2))
    with pytest.raises(DataError, match=where) as err:
        load_note_pickle(path)
    assert "shape.pickle" in str(err.value)


def test_a_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        load_note_pickle(tmp_path / "absent.pickle")
