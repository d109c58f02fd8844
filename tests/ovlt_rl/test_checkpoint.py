"""Atomic checkpoints: commit by rename, prune after commit, skip truncated or corrupted ones (sha256),
fall back when the newest fails to load, refuse the old pickle format, refuse to restart."""

import json

import pytest

from ovlt_rl.checkpoint import CheckpointError, CheckpointManager


def _writer(payload: bytes):
    def write(d):
        with open(f"{d}/shard.bin", "wb") as f:
            f.write(payload)

    return write


def test_save_commits_and_latest_finds_it(tmp_path):
    m = CheckpointManager(tmp_path / "ck", keep=2)
    assert m.latest() is None
    p = m.save(10, _writer(b"abc"), {"step": 10, "sampler": {"epoch": 0, "pos": 3}})
    assert p.name == "step_000010"
    step, path = m.latest()
    assert step == 10 and path == p
    assert m.driver_state(path)["sampler"]["pos"] == 3
    assert not list((tmp_path / "ck").glob(".tmp-*"))


def test_prunes_only_old_ones(tmp_path):
    m = CheckpointManager(tmp_path / "ck", keep=2)
    for s in (1, 2, 3):
        m.save(s, _writer(b"x" * s), {"step": s})
    names = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert names == ["step_000002", "step_000003"]


def test_truncated_checkpoint_is_ignored(tmp_path):
    m = CheckpointManager(tmp_path / "ck", keep=3)
    m.save(1, _writer(b"good"), {"step": 1})
    p2 = m.save(2, _writer(b"newer"), {"step": 2})
    (p2 / "shard.bin").write_bytes(b"ne")  # truncated after commit (disk trouble)
    step, path = m.latest()
    assert step == 1


def test_unfinished_write_is_ignored(tmp_path):
    m = CheckpointManager(tmp_path / "ck", keep=3)
    m.save(1, _writer(b"good"), {"step": 1})

    def crash(d):
        _writer(b"partial")(d)
        raise KeyboardInterrupt  # killed mid-write

    with pytest.raises(KeyboardInterrupt):
        m.save(2, crash, {"step": 2})
    assert m.latest()[0] == 1
    m.save(2, _writer(b"again"), {"step": 2})  # the stale temp folder doesn't block the next save
    assert m.latest()[0] == 2


def test_no_valid_checkpoint_is_an_error(tmp_path):
    m = CheckpointManager(tmp_path / "ck")
    p = m.save(5, _writer(b"data"), {"step": 5})
    manifest = json.loads((p / "manifest.json").read_text())
    manifest["files"]["shard.bin"]["size"] = 999
    (p / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="none is usable"):
        m.latest()


def test_same_size_corruption_falls_back_to_the_previous_checkpoint(tmp_path, caplog):
    m = CheckpointManager(tmp_path / "ck", keep=3)
    m.save(1, _writer(b"good"), {"step": 1})
    p2 = m.save(2, _writer(b"newer"), {"step": 2})
    (p2 / "shard.bin").write_bytes(b"nEwer")  # same size, one byte flipped (bit rot, a bad copy)
    with caplog.at_level("WARNING"):
        step, path = CheckpointManager(tmp_path / "ck").latest()
    assert step == 1 and path.name == "step_000001"
    assert "shard.bin fails its sha256 check" in caplog.text


def test_manifest_lists_size_and_sha256_of_every_file(tmp_path):
    import hashlib

    m = CheckpointManager(tmp_path / "ck")
    p = m.save(3, _writer(b"payload"), {"step": 3}, extra_files={"config.yaml": "a: 1\n"})
    files = json.loads((p / "manifest.json").read_text())["files"]
    assert sorted(files) == ["config.yaml", "driver_state.json", "shard.bin"]
    assert files["shard.bin"] == {"size": 7, "sha256": hashlib.sha256(b"payload").hexdigest()}


def test_resume_falls_back_when_the_newest_fails_to_load_and_sets_it_aside(tmp_path, caplog):
    m = CheckpointManager(tmp_path / "ck", keep=3)
    m.save(1, _writer(b"good"), {"step": 1})
    m.save(2, _writer(b"unloadable"), {"step": 2})
    loaded = []

    def load(path):
        if (path / "shard.bin").read_bytes() == b"unloadable":
            raise ValueError("header too large")
        loaded.append(path.name)

    with caplog.at_level("WARNING"):
        step, path = m.resume(load)
    assert step == 1 and loaded == ["step_000001"]
    assert "step_000002 failed to load (ValueError: header too large)" in caplog.text
    # The broken one is kept for inspection under another name and never resumed again.
    assert (tmp_path / "ck" / "broken-step_000002" / "shard.bin").is_file()
    assert [p.name for p in sorted((tmp_path / "ck").glob("step_*"))] == ["step_000001"]


def test_resume_refuses_when_no_checkpoint_loads(tmp_path):
    m = CheckpointManager(tmp_path / "ck", keep=3)
    m.save(1, _writer(b"x"), {"step": 1})

    def load(path):
        raise OSError("disk gone")

    with pytest.raises(CheckpointError, match=r"none is usable \(step_000001: failed to load \(OSError: disk gone\)\)"):
        m.resume(load)


def test_a_checkpoint_of_the_pickle_format_is_refused_not_loaded(tmp_path):
    """What ovlt wrote before: DCP's pickled .metadata, *.distcp and worker_state.pt, a manifest of sizes."""
    d = tmp_path / "ck" / "step_000004"
    d.mkdir(parents=True)
    files = {".metadata": b"\x80\x04.", "__0_0.distcp": b"x", "worker_state.pt": b"y", "driver_state.json": b"{}"}
    for name, data in files.items():
        (d / name).write_bytes(data)
    (d / "manifest.json").write_text(json.dumps({"step": 4, "files": {n: len(b) for n, b in files.items()}}))
    m = CheckpointManager(tmp_path / "ck")
    loads = []
    with pytest.raises(CheckpointError, match="older pickle format"):
        m.resume(loads.append)
    assert loads == []


def test_a_file_the_manifest_does_not_list_makes_the_checkpoint_invalid(tmp_path):
    m = CheckpointManager(tmp_path / "ck", keep=3)
    m.save(1, _writer(b"good"), {"step": 1})
    p2 = m.save(2, _writer(b"newer"), {"step": 2})
    (p2 / "extra.safetensors").write_bytes(b"planted")  # the shard loader would read it too
    assert CheckpointManager(tmp_path / "ck").latest()[0] == 1
    assert CheckpointManager.is_valid(p2) == (False, "files not in manifest.json: extra.safetensors")


@pytest.mark.parametrize("entry", [{"size": 4}, 4, {"size": "4", "sha256": "x"}], ids=["no-sha256", "size-only", "bad-type"])
def test_a_malformed_manifest_entry_is_named_not_a_crash(tmp_path, entry):
    m = CheckpointManager(tmp_path / "ck")
    p = m.save(1, _writer(b"good"), {"step": 1})
    manifest = json.loads((p / "manifest.json").read_text())
    manifest["files"]["shard.bin"] = entry
    (p / "manifest.json").write_text(json.dumps(manifest))
    assert CheckpointManager.is_valid(p) == (False, "unreadable manifest.json (bad entry 'shard.bin')")


def test_a_manifest_naming_files_outside_the_checkpoint_is_invalid(tmp_path):
    m = CheckpointManager(tmp_path / "ck")
    p = m.save(1, _writer(b"good"), {"step": 1})
    manifest = json.loads((p / "manifest.json").read_text())
    manifest["files"]["../../secret"] = {"size": 1, "sha256": "0" * 64}
    (p / "manifest.json").write_text(json.dumps(manifest))
    assert CheckpointManager.is_valid(p) == (False, "unreadable manifest.json (bad entry '../../secret')")


def test_a_fatal_error_is_not_a_load_failure_and_nothing_is_set_aside(tmp_path):
    """A refusal (e.g. the config check) stops the resume: no fallback to an older checkpoint."""
    m = CheckpointManager(tmp_path / "ck", keep=3)
    for s in (1, 2):
        m.save(s, _writer(b"x" * s), {"step": s})

    class Refused(ValueError):
        pass

    def load(path):
        raise Refused(f"no: {path.name}")

    with pytest.raises(Refused, match="step_000002"):
        m.resume(load, fatal=(Refused,))
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["step_000001", "step_000002"]


def test_setting_aside_twice_keeps_both_broken_checkpoints(tmp_path):
    m = CheckpointManager(tmp_path / "ck", keep=3)
    m.save(1, _writer(b"a"), {"step": 1})
    for payload in (b"first", b"second"):
        m.save(2, _writer(payload), {"step": 2})
        assert m.set_aside_newer(1)
    kept = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert kept == ["broken-step_000002", "broken-step_000002.1", "step_000001"]
    assert {(tmp_path / "ck" / k / "shard.bin").read_bytes() for k in kept[:2]} == {b"first", b"second"}
    assert not list((tmp_path / "ck").rglob("*.partial"))
