"""`ovlt prepare convert`: other layouts to ovlt's Parquet, images read into the file."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ovlt.cli import main
from ovlt_rl.data.formats import DataFormat, read_source
from ovlt_rl.data.schema import read_rows


def _png(color: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (56, 56), color).save(buf, format="PNG")
    return buf.getvalue()


def test_easyr1_rows_with_image_paths_become_a_self_contained_rl_file(tmp_path, capsys):
    media = tmp_path / "media"
    media.mkdir()
    (media / "r.png").write_bytes(_png("red"))
    (media / "b.png").write_bytes(_png("blue"))
    pq.write_table(pa.table({"problem": ["<image>Color?", "<image><image>Colors?"], "answer": ["red", "red, blue"],
                             "images": [["r.png"], ["r.png", "b.png"]]}), tmp_path / "easyr1.parquet")
    out = tmp_path / "out" / "rl.parquet"
    assert main(["prepare", "convert", f"src={tmp_path / 'easyr1.parquet'}", f"out={out}", "data.format=easyr1",
                 "data.prompt_key=problem", f"data.image_dir={media}"]) == 0
    assert "2 rows" in capsys.readouterr().out
    (media / "r.png").unlink()  # the converted file no longer needs the image folder
    rows = read_rows(out)
    assert [r["prompt"] for r in rows] == [[{"role": "user", "content": "<image>Color?"}], [{"role": "user", "content": "<image><image>Colors?"}]]
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["red", "red, blue"]
    assert [[i["bytes"] for i in r["images"]] for r in rows] == [[_png("red")], [_png("red"), _png("blue")]]
    assert all(i["path"] is None for r in rows for i in r["images"])
    assert "response" not in rows[0]


def test_sharegpt_rows_become_an_sft_file(tmp_path):
    (tmp_path / "a.png").write_bytes(_png("green"))
    data = [{"messages": [{"role": "user", "content": "<image>Color?"}, {"role": "assistant", "content": "<answer>green</answer>"}],
             "images": ["a.png"]}]
    (tmp_path / "sft.json").write_text(json.dumps(data))
    out = tmp_path / "sft.parquet"
    assert main(["prepare", "convert", f"src={tmp_path / 'sft.json'}", f"out={out}", "data.format=sharegpt"]) == 0
    (row,) = read_rows(out)
    assert row["response"] == "<answer>green</answer>"
    assert row["prompt"] == [{"role": "user", "content": "<image>Color?"}]
    assert row["images"] == [{"bytes": _png("green"), "path": None}]
    assert read_source(out, DataFormat()) == read_rows(out)


def test_a_missing_image_stops_the_conversion_naming_row_and_path(tmp_path):
    pq.write_table(pa.table({"prompt": ["<image>Color?"], "answer": ["red"], "images": [["gone.png"]]}), tmp_path / "x.parquet")
    from ovlt_rl.data.formats import FormatError

    with pytest.raises(FormatError, match=r"x.parquet row 0: image .*gone.png can't be read"):
        main(["prepare", "convert", f"src={tmp_path / 'x.parquet'}", f"out={tmp_path / 'y.parquet'}", "data.format=easyr1"])
    assert not (tmp_path / "y.parquet").exists()


def test_convert_usage_errors(tmp_path, capsys):
    assert main(["prepare", "convert", f"src={tmp_path}"]) == 2
    assert "usage: ovlt prepare convert" in capsys.readouterr().err
    assert main(["prepare", "convert", "src=a", "out=b", "data.max_pixels=3"]) == 2
    assert "convert takes data.format" in capsys.readouterr().err
