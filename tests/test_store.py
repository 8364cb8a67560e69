"""HDF5 store: round trip, atomic replace, lazy reads, deterministic batches."""

import h5py
import numpy as np
import pytest

from seqvi.data.batches import crop_batch, epoch_order, whole_batches
from seqvi.data.store import Store, StoreWriter
from seqvi.errors import DataError


def build(path, seqs, attrs=None):
    writer = StoreWriter(path, (3,), "float32")
    for split, items in seqs.items():
        for i, x in enumerate(items):
            writer.add(split, f"{split}{i}", x)
    return writer.close(attrs or {"adapter": "test", "likelihood": "gaussian"})


@pytest.fixture
def seqs():
    rng = np.random.default_rng(0)
    return {s: [rng.normal(size=(n, 3)).astype(np.float32) for n in lens]
            for s, lens in {"train": [5, 9, 2, 7], "valid": [4], "test": [3, 6]}.items()}


def test_round_trip_and_attrs(tmp_path, seqs):
    path = build(tmp_path / "s.h5", seqs, {"adapter": "test", "sources": {"a.zip": "ff"}})
    with Store(path) as store:
        assert store.frame_shape == (3,)
        assert store.attrs["sources"] == {"a.zip": "ff"}
        train = store.split("train")
        assert list(train.lengths) == [5, 9, 2, 7]
        for i, x in enumerate(seqs["train"]):
            np.testing.assert_array_equal(train.read(i), x)
        np.testing.assert_array_equal(train.read(1, 2, 5), seqs["train"][1][2:5])
        allx = np.concatenate(seqs["train"])
        np.testing.assert_allclose(store.attrs["mean"], allx.mean(0), rtol=1e-5)
        np.testing.assert_allclose(store.attrs["std"], allx.std(0), rtol=1e-4)


def test_reader_does_not_load_frames(tmp_path, seqs):
    path = build(tmp_path / "s.h5", seqs)
    with Store(path) as store:
        assert isinstance(store.split("train").frames, h5py.Dataset)  # sliced on demand, not an array


def test_empty_split_is_an_error_and_previous_store_survives(tmp_path, seqs):
    path = build(tmp_path / "s.h5", seqs)
    before = path.read_bytes()
    writer = StoreWriter(path, (3,), "float32")
    writer.add("train", "x", seqs["train"][0])
    with pytest.raises(DataError, match="split 'valid' is empty"):
        writer.close({})
    assert path.read_bytes() == before
    assert not path.with_name("s.h5.tmp").exists()


def test_missing_and_corrupt_store(tmp_path):
    with pytest.raises(DataError, match="seqvi preprocess"):
        Store(tmp_path / "nope.h5")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all" * 10)
    with pytest.raises(DataError, match="bad.h5: not a readable HDF5"):
        Store(bad)


def test_batches_are_deterministic_crops_with_masks(tmp_path, seqs):
    path = build(tmp_path / "s.h5", seqs)
    with Store(path) as store:
        train = store.split("train")
        order = epoch_order(train, 3, seed=1, epoch=0)
        assert sorted(np.concatenate(order).tolist()) == [0, 1, 2, 3]
        assert [len(o) for o in order] == [4]  # a trailing batch of one joins the batch before it
        assert [len(o) for o in epoch_order(train, 2, 1, 0)] == [2, 2]
        assert [o.tolist() for o in order] == [o.tolist() for o in epoch_order(train, 3, 1, 0)]
        x, mask, *_ = crop_batch(train, np.array([1, 2]), 4, seed=1, epoch=0, batch=0)
        assert x.shape == (2, 4, 3) and mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
        # the crop of sequence 1 is a contiguous window of it
        full = seqs["train"][1]
        starts = [s for s in range(6) if np.allclose(full[s:s + 4], x[0].numpy())]
        assert len(starts) == 1
        x2, *_ = crop_batch(train, np.array([1, 2]), 4, seed=1, epoch=0, batch=0)
        assert np.array_equal(x.numpy(), x2.numpy())
        assert epoch_order(train, 3, 1, 0, min_length=5)[0].tolist() != [] and \
            2 not in np.concatenate(epoch_order(train, 3, 1, 0, min_length=5))
        seen = []
        for xb, mb, _, _, idx in whole_batches(store.split("test"), 1):
            seen.append(int(idx[0]))
            assert mb.sum() == len(seqs["test"][idx[0]])
        assert sorted(seen) == [0, 1]


# --------------------------------------------------------------------------- inputs and rewards


def build_controlled(path, seqs, width=2):
    """The ``seqs`` store with inputs (T, width) and rewards (T,) that encode (split, sequence, step)."""
    writer = StoreWriter(path, (3,), "float32")
    for s, (split, items) in enumerate(seqs.items()):
        for i, x in enumerate(items):
            steps = np.arange(len(x), dtype=np.float32)
            inputs = np.stack([steps + 100 * i + 1000 * s] * width, 1) + np.arange(width, dtype=np.float32) / 10
            writer.add(split, f"{split}{i}", x, inputs=inputs, rewards=-steps - 100 * i)
    return writer.close({"adapter": "test", "likelihood": "gaussian"})


def test_inputs_and_rewards_are_row_aligned_with_frames(tmp_path, seqs):
    path = build_controlled(tmp_path / "c.h5", seqs)
    with Store(path) as store:
        assert store.attrs["input_dim"] == 2
        for s, split in enumerate(("train", "valid", "test")):
            data = store.split(split)
            assert data.has_inputs and data.has_rewards
            for i, x in enumerate(seqs[split]):
                u, r = data.read_inputs(i), data.read_rewards(i)
                assert u.shape == (len(x), 2) and u.dtype == np.float32 and r.shape == (len(x),)
                np.testing.assert_array_equal(u[:, 0], np.arange(len(x)) + 100 * i + 1000 * s)
                np.testing.assert_array_equal(r, -np.arange(len(x)) - 100 * i)
                np.testing.assert_array_equal(data.read(i), x)
        train = store.split("train")
        np.testing.assert_array_equal(train.read_inputs(1, 2, 5)[:, 0], [102, 103, 104])
        np.testing.assert_array_equal(train.read_rewards(1, 2, 5), [-102, -103, -104])


def test_store_without_inputs_reads_as_before(tmp_path, seqs):
    path = build(tmp_path / "s.h5", seqs)
    with Store(path) as store:
        assert "input_dim" not in store.attrs
        train = store.split("train")
        assert not train.has_inputs and not train.has_rewards
        with pytest.raises(DataError, match="split 'train' has no inputs"):
            train.read_inputs(0)
        with pytest.raises(DataError, match="split 'train' has no rewards"):
            train.read_rewards(0)


def test_store_of_the_old_layout_still_opens(tmp_path, seqs):
    """Offsets and names of fixed size, as stores were written before appends existed."""
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:
        for split, items in seqs.items():
            group = f.create_group(split)
            group.create_dataset("frames", data=np.concatenate(items))
            group.create_dataset("offsets", data=np.cumsum([0] + [len(x) for x in items]).astype(np.int64))
            group.create_dataset("names", data=np.asarray([f"n{i}" for i in range(len(items))], dtype=object),
                                 dtype=h5py.string_dtype())
        f.attrs["frame_shape"] = np.asarray([3])
    with Store(path) as store:
        np.testing.assert_array_equal(store.split("test").read(1), seqs["test"][1])
        assert not store.split("test").has_inputs


def test_writer_refuses_a_mix_of_sequences_with_and_without_inputs(tmp_path, seqs):
    writer = StoreWriter(tmp_path / "m.h5", (3,), "float32")
    x = seqs["train"][0]
    writer.add("train", "a", x, inputs=np.zeros((len(x), 1)), rewards=np.zeros(len(x)))
    with pytest.raises(DataError, match="b: carries inputs of width None"):
        writer.add("valid", "b", x)
    with pytest.raises(DataError, match="c: carries inputs of width 2"):
        writer.add("train", "c", x, inputs=np.zeros((len(x), 2)), rewards=np.zeros(len(x)))
    with pytest.raises(DataError, match=r"d: inputs have shape \(4, 1\)"):
        writer.add("train", "d", x, inputs=np.zeros((4, 1)), rewards=np.zeros(len(x)))
    writer.abort()


@pytest.mark.parametrize("key, bad, needle", [
    ("inputs", np.zeros((3, 2), np.float32), r"split 'valid' inputs have shape \(3, 2\), expected \(4, A\)"),
    ("inputs", np.zeros((4, 5), np.float32), "split 'valid' inputs are 5 wide, the store's input_dim is 2"),
    ("rewards", np.zeros(7, np.float32), r"split 'valid' rewards have shape \(7,\)"),
    ("inputs", None, "split 'valid' has no inputs, but the store's input_dim is 2"),
])
def test_mismatched_inputs_or_rewards_are_a_data_error_naming_the_split(tmp_path, seqs, key, bad, needle):
    path = build_controlled(tmp_path / "c.h5", seqs)
    with h5py.File(path, "r+") as f:
        del f["valid"][key]
        if bad is not None:
            f["valid"].create_dataset(key, data=bad)
    with Store(path) as store:
        store.split("train")   # the other splits are fine
        with pytest.raises(DataError, match=needle):
            store.split("valid")
