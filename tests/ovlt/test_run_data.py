"""A run's data: files a recipe prepares are made or reused before the engine starts."""

import json

from omegaconf import OmegaConf

from ovlt.config import load_config
from ovlt.run_data import ensure_data


def test_recipe_data_made_with_other_prepare_settings_is_named_in_a_warning(tmp_path, caplog):
    out = tmp_path / "tiny-data"
    out.mkdir()
    for name in ("sft.parquet", "val.parquet"):
        (out / name).write_bytes(b"")  # present: ensure_data only checks where they came from
    cfg = load_config("sft", ["recipe=tiny", f"data.prepare_dir={out}",
                              f"data.train_files=[{out / 'sft.parquet'}]", f"data.val_files=[{out / 'val.parquet'}]"])
    with caplog.at_level("WARNING", logger="ovlt"):
        ensure_data(cfg)  # no manifest: files put there by hand are used as given
        made = OmegaConf.to_container(OmegaConf.structured(load_config("prepare", ["recipe=tiny/prepare", f"prepare.output_dir={out}"])))
        (out / "manifest.json").write_text(json.dumps({"config": made}))
        ensure_data(cfg)  # same settings: reused
        assert not [r for r in caplog.records if r.levelname == "WARNING"]

        made["prepare"]["simulate"]["restate_rate"] = 0.9
        made["prepare"]["filters"]["pick"] = "longest"
        (out / "manifest.json").write_text(json.dumps({"config": made}))
        ensure_data(cfg)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "(prepare.filters.pick, prepare.simulate.restate_rate differ)" in warned[0]
    assert (out / "sft.parquet").exists()  # nothing deleted
