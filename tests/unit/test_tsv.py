"""TSVFile (random access, cached index), base64 images, and the bad-row policy."""
from __future__ import annotations

import base64
import io
import logging
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from ofa_ds.data import tsv as tsv_mod
from ofa_ds.data.bad_rows import BadRow, BadRowPolicy
from ofa_ds.data.tsv import TSVFile, decode_base64_image

ROWS = [["0", "naïve café", "a", "x"], ["1", "", "b", "y"], ["2", "你好", "c", "z"], ["3", "d", "e", "f"]]


def _write(path, rows, end="\n"):
    path.write_bytes("".join("\t".join(r) + end for r in rows).encode("utf-8"))
    return path


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("OFA_DS_CACHE_DIR", str(tmp_path / "cache"))


# ----------------------------------------------------------------------------- TSVFile
def test_random_access_and_selected_cols(tmp_path):
    path = _write(tmp_path / "data.tsv", ROWS)
    f = TSVFile(path, num_columns=4)
    assert len(f) == 4 and f.num_columns == 4
    assert TSVFile(path).num_columns is None  # no format given: the rows decide nothing
    assert [f.row(i) for i in (3, 0, 2, 1)] == [ROWS[i] for i in (3, 0, 2, 1)]
    assert f[2] == ROWS[2]
    assert TSVFile(path, selected_cols="3,0").row(2) == ["z", "2"]  # picks and orders, like OFA
    assert TSVFile(path, selected_cols=[1]).row(0) == ["naïve café"]
    with pytest.raises(IndexError):
        f.row(4)
    with pytest.raises(ValueError, match="out of range"):
        TSVFile(path, selected_cols="0,4", num_columns=4)
    # Without num_columns a row needs the columns the selection reads; these 4-column rows are bad.
    with pytest.raises(BadRow, match=r"wrong column count \(expected at least 5, got 4\)"):
        TSVFile(path, selected_cols="0,4").row(0)
    with pytest.raises(ValueError, match="integers"):
        TSVFile(path, selected_cols="0,a")
    with pytest.raises(ValueError):
        TSVFile(tmp_path / "missing.tsv")


def test_line_endings(tmp_path):
    assert TSVFile(_write(tmp_path / "crlf.tsv", ROWS, end="\r\n")).row(1) == ROWS[1]
    path = tmp_path / "no_final_newline.tsv"
    path.write_text("a\tb\nc\td", encoding="utf-8")
    f = TSVFile(path)
    assert len(f) == 2 and f.row(1) == ["c", "d"]
    (tmp_path / "empty.tsv").write_bytes(b"")
    assert len(TSVFile(tmp_path / "empty.tsv")) == 0


def test_bad_rows_raise_with_location(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_bytes(b"0\ta\tb\n1\tonly two\n\n3\ta\tb\textra\n4\t\xff\xfe\tb\n5\tok\tok\n")
    f = TSVFile(path, num_columns=3)
    assert len(f) == 6  # an empty line is still a row, so row numbers stay line numbers
    for i, reason in [(1, "wrong column count"), (2, "wrong column count"), (3, "wrong column count"),
                      (4, "invalid utf-8")]:
        with pytest.raises(BadRow) as info:
            f.row(i)
        assert (info.value.file, info.value.row, info.value.reason) == (str(path), i, reason)
        assert f"row {i}" in str(info.value)
    assert f.row(5) == ["5", "ok", "ok"]
    assert TSVFile(path, num_columns=2).row(1) == ["1", "only two"]


def test_index_cached_beside_file_and_rebuilt_when_changed(tmp_path, monkeypatch):
    path = _write(tmp_path / "data.tsv", ROWS)
    f = TSVFile(path)
    assert f.index_path == tmp_path / "data.tsv.index.npy" and f.index_path.is_file()

    def no_scan(_):
        raise AssertionError("index should come from the cache")

    monkeypatch.setattr(tsv_mod, "_scan_offsets", no_scan)
    assert TSVFile(path).row(3) == ROWS[3]
    monkeypatch.undo()
    monkeypatch.setenv("OFA_DS_CACHE_DIR", str(tmp_path / "cache"))

    _write(path, ROWS + [["4", "new", "row", "!"]])  # different size, so the cache is stale
    f = TSVFile(path)
    assert len(f) == 5 and f.row(4) == ["4", "new", "row", "!"]


def test_index_falls_back_when_directory_is_read_only(tmp_path, monkeypatch):
    data_dir = tmp_path / "ro"
    data_dir.mkdir()
    path = _write(data_dir / "data.tsv", ROWS)
    real_write = TSVFile._write_index
    # Simulated read-only directories (the tests may run as root, where chmod does not stop writes).
    read_only = {data_dir}
    monkeypatch.setattr(TSVFile, "_write_index", staticmethod(
        lambda cand, data: False if cand.parent in read_only else real_write(cand, data)))

    f = TSVFile(path)
    assert f.index_path.parent == tmp_path / "cache" and f.row(2) == ROWS[2]
    assert not (data_dir / "data.tsv.index.npy").exists()
    assert TSVFile(path).index_path == f.index_path  # found again in the fallback cache

    read_only.add(tmp_path / "cache")
    f.index_path.unlink()
    f = TSVFile(path)
    assert f.index_path is None and f.row(1) == ROWS[1]  # in memory only


def test_no_index_is_written_beside_reference_data(tmp_path, monkeypatch):
    data_dir = tmp_path / "reference"
    data_dir.mkdir()
    path = _write(data_dir / "data.tsv", ROWS)
    monkeypatch.setenv("OFA_DS_READONLY_DATA", f"{tmp_path / 'elsewhere'}{os.pathsep}{data_dir}")
    f = TSVFile(path)
    assert f.index_path.parent == tmp_path / "cache" and f.row(3) == ROWS[3]
    assert list(data_dir.iterdir()) == [path]  # the directory is as it was, although writable


def test_pickle_and_dataloader_workers(tmp_path):
    path = _write(tmp_path / "data.tsv", ROWS * 10)
    f = TSVFile(path, selected_cols="0")
    g = pickle.loads(pickle.dumps(f))
    assert g.row(7) == ["3"] and g.index_path == f.index_path

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(f)

        def __getitem__(self, i):
            return int(f.row(i)[0])

    loader = torch.utils.data.DataLoader(Rows(), batch_size=4, num_workers=2)
    assert torch.cat(list(loader)).tolist() == [i % 4 for i in range(40)]


# ----------------------------------------------------------------------------- images
def _png_bytes(mode="RGBA", size=(7, 5)):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8), mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue(), img


def test_decode_base64_image_both_alphabets():
    raw, img = _png_bytes()
    expected = np.asarray(img.convert("RGB"))
    std, url = base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()
    assert std != url  # the test data really uses "+"/"/" vs "-"/"_"
    for data in (std, url, url.rstrip("="), std + "\n"):
        out = decode_base64_image(data)
        assert out.mode == "RGB" and out.size == (7, 5)
        np.testing.assert_array_equal(np.asarray(out), expected)


@pytest.mark.parametrize("data,reason", [
    ("", "empty image field"),
    ("abcde", "invalid base64"),
    (base64.b64encode(b"not an image at all").decode(), "undecodable image"),
])
def test_decode_base64_image_failures(data, reason):
    with pytest.raises(BadRow) as info:
        decode_base64_image(data, file="x.tsv", row=9, field="image")
    assert (info.value.file, info.value.row, info.value.field, info.value.reason) == ("x.tsv", 9, "image", reason)
    assert "x.tsv: row 9, field 'image'" in str(info.value)


# ------------------------------------------------------------------------- BadRowPolicy
def test_policy_skips_counts_and_rate_limits(caplog):
    policy = BadRowPolicy(warn_limit=2)
    with caplog.at_level(logging.WARNING, logger="ofa_ds.data"):
        for i in range(5):
            policy.record(BadRow("a.tsv", i, None, "wrong column count"))
        policy.record(BadRow("b.tsv", 0, "image", "undecodable image"))
    messages = [r.getMessage() for r in caplog.records]
    assert sum("a.tsv: row" in m for m in messages) == 2
    assert sum("suppressed" in m for m in messages) == 1
    assert any("b.tsv: row 0, field 'image': undecodable image" in m for m in messages)
    assert policy.summary() == {"a.tsv": {"wrong column count": 5}, "b.tsv": {"undecodable image": 1}}

    policy.set_epoch(1)
    policy.record(BadRow("a.tsv", 3, None, "wrong column count"))
    assert policy.summary() == {"a.tsv": {"wrong column count": 1}}
    assert policy.summary(0)["a.tsv"]["wrong column count"] == 5
    assert (policy.total(0), policy.total(1), policy.total()) == (6, 1, 7)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ofa_ds.data"):
        policy.log_summary(0)
    assert "epoch 0: skipped 6 bad rows" in caplog.text and "b.tsv: undecodable image: 1" in caplog.text


def test_policy_strict_raises_first():
    err = BadRow("a.tsv", 4, "image", "undecodable image", "truncated")
    with pytest.raises(BadRow, match=r"a.tsv: row 4, field 'image': undecodable image \(truncated\)"):
        BadRowPolicy(strict=True).record(err)


def test_policy_state_round_trip_and_merge():
    policy = BadRowPolicy()
    policy.record(BadRow("a.tsv", 0, None, "r"))
    policy.set_epoch(2)
    policy.record(BadRow("a.tsv", 1, None, "r"))
    policy.merge({"w.tsv": {"r": 3}})  # e.g. a DataLoader worker's summary()

    resumed = BadRowPolicy()
    resumed.load_state_dict(pickle.loads(pickle.dumps(policy.state_dict())))
    assert resumed.epoch == 2
    assert resumed.summary() == {"a.tsv": {"r": 1}, "w.tsv": {"r": 3}}
    assert resumed.summary(0) == {"a.tsv": {"r": 1}}
    resumed.record(BadRow("a.tsv", 5, None, "r"))
    assert resumed.summary()["a.tsv"]["r"] == 2


def test_bad_row_pickles_with_attributes():
    err = pickle.loads(pickle.dumps(BadRow("a.tsv", 2, 1, "wrong column count", "expected 3, got 2")))
    assert (err.file, err.row, err.field, err.reason, err.detail) == ("a.tsv", 2, 1, "wrong column count",
                                                                       "expected 3, got 2")
    assert isinstance(err, ValueError)
