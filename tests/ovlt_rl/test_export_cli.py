"""`ovlt export` end to end: real tiny SFT runs (Ray actors, FSDP2 on gloo, 1 rank in fp32 and 2
ranks in bf16) write checkpoints; each step's export loads in transformers with the policy's
weights at that step (the runs' own `hf/` folders, written by save_hf at the end of a 1-step and
of a 2-step run), in the training dtype. A corrupted shard, a checkpoint of the older pickle format
and an occupied output folder are refused with messages naming them; no pickle runs."""

import hashlib
import json
import pickle
import shutil

import pytest
import torch

from ovlt.cli import main
from ovlt_rl.controller import run_sft
from ovlt.config import load_config
from ovlt_rl.data.schema import write_rows

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_down_after")]


def _sft(out, data, ranks, dtype, steps):
    run_sft(load_config("sft", [
        "model.path=tiny", f"model.dtype={dtype}", f"data.train_files=[{data}]", "data.max_prompt_length=128",
        "data.max_response_length=16", f"actor.num_workers={ranks}", "actor.global_batch_size=4",
        "actor.micro_batch_size=2", "actor.lr=1e-2", "trainer.device=cpu", "trainer.loggers=[jsonl]",
        "trainer.save_every=1", "trainer.keep_checkpoints=3", "trainer.hf_max_shard_size=2MB",
        f"trainer.total_steps={steps}", f"trainer.output_dir={out}"]))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, image_row):
    """{ranks: run folder}: step 1 run with its hf/ kept as hf_step1/, then resumed to step 2."""
    root = tmp_path_factory.mktemp("export")
    rows = [image_row(k % 4 + 1, response=f"<think>I count them.</think><answer>{k % 4 + 1}</answer>") for k in range(8)]
    data = write_rows(rows, root / "sft.parquet")
    out = {}
    for ranks, dtype in ((1, "fp32"), (2, "bf16")):
        run = root / f"run{ranks}"
        _sft(run, data, ranks, dtype, steps=1)
        (run / "hf").rename(run / "hf_step1")
        _sft(run, data, ranks, dtype, steps=2)  # resumes from step 1
        out[ranks] = run
    return out


def _weights(folder):
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder)  # dtype from config.json
    return model.dtype, model.state_dict()


def _assert_same_model(a, b):
    a_dtype, a_sd = _weights(a)
    b_dtype, b_sd = _weights(b)
    assert a_dtype == b_dtype
    assert a_sd.keys() == b_sd.keys()
    for k in a_sd:
        assert torch.equal(a_sd[k], b_sd[k]), k


@pytest.mark.parametrize("ranks,dtype", [(1, torch.float32), (2, torch.bfloat16)])
def test_each_step_exports_the_policy_of_that_step(runs, ranks, dtype, capsys):
    run = runs[ranks]
    assert main(["export", f"run={run}"]) == 0  # the newest: step 2
    assert f"model: {run / 'export' / 'step_2'}" in capsys.readouterr().out
    assert main(["export", f"run={run}", "step=1"]) == 0
    step1, step2 = run / "export" / "step_1", run / "export" / "step_2"

    # The same folder as the run's own hf/: files (multi-shard at 2MB), processor, generation config.
    assert sorted(p.name for p in step2.iterdir()) == sorted(p.name for p in (run / "hf").iterdir())
    assert (step2 / "model.safetensors.index.json").is_file() and (step2 / "generation_config.json").is_file()
    assert json.loads((step2 / "config.json").read_text())["dtype"] == str(dtype).removeprefix("torch.")
    _assert_same_model(step2, run / "hf")
    _assert_same_model(step1, run / "hf_step1")
    got_dtype, sd1 = _weights(step1)
    assert got_dtype == dtype
    _, sd2 = _weights(step2)
    changed = [k for k in sd1 if not torch.equal(sd1[k], sd2[k])]
    assert len(changed) > len(sd1) // 2  # step 2 trained on

    from ovlt_rl.models.loading import load_processor

    assert load_processor(str(step1)).tokenizer("How many?").input_ids  # the processor loads as is


def test_explicit_dtype_casts_the_master_weights(runs, tmp_path):
    run = runs[2]  # trained in bf16 from fp32 master weights
    assert main(["export", f"run={run}", "dtype=fp32", f"out={tmp_path / 'fp32'}"]) == 0
    fp32_dtype, fp32 = _weights(tmp_path / "fp32")
    _, bf16 = _weights(run / "hf")
    assert fp32_dtype == torch.float32
    assert any(not torch.equal(v, v.to(torch.bfloat16).float()) for v in fp32.values())  # really fp32 values
    for k, v in bf16.items():
        assert torch.equal(fp32[k].to(torch.bfloat16), v), k


def test_an_occupied_output_folder_needs_force(runs, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["export", f"run={runs[1]}", f"out={out}"]) == 2
    assert f"out={str(out)!r} exists and is not empty: pass force=true" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
    assert main(["export", f"run={runs[1]}", f"out={out}", "force=true"]) == 0
    assert not (out / "notes.txt").exists()
    _assert_same_model(out, runs[1] / "hf")


def test_bad_arguments_are_named(runs, capsys):
    assert main(["export", f"run={runs[1]}", "dtype=fp16"]) == 2
    assert "dtype='fp16': expected one of auto, bf16, fp32" in capsys.readouterr().err
    assert main(["export", f"run={runs[1]}", "step=7"]) == 1
    assert "step_000007: no such committed checkpoint (committed steps in" in capsys.readouterr().err
    assert main(["export", f"run={runs[1]}", "steps=1"]) == 2
    assert "argument 'steps=1'" in capsys.readouterr().err


def test_a_corrupted_shard_is_refused_naming_it(runs, tmp_path, capsys, caplog):
    run = tmp_path / "run"
    shutil.copytree(runs[2] / "checkpoints", run / "checkpoints")
    name = "shard-00002-model-00001-of-00001.safetensors"
    shard = run / "checkpoints" / "step_000002" / name
    blob = bytearray(shard.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # same size: only the sha256 can tell
    shard.write_bytes(bytes(blob))

    assert main(["export", f"run={run}", "step=2"]) == 1
    assert f"step_000002 can't be exported: {name} fails its sha256 check (corrupted)" in capsys.readouterr().err
    assert not (run / "export").exists()
    # Without step=: the newest that verifies (step 1), with a warning naming the skipped one.
    assert main(["export", f"run={run}"]) == 0
    assert f"skipped the newer checkpoint step_000002: {name} fails its sha256 check" in caplog.text
    assert sorted(p.name for p in (run / "export").iterdir()) == ["step_1"]
    _assert_same_model(run / "export" / "step_1", runs[2] / "hf_step1")


class _Plant:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_format_checkpoint_is_refused_unopened(tmp_path, capsys):
    """What ovlt wrote before (DCP's pickled .metadata, *.distcp, worker_state.pt), here as pickles
    that would create a file if anything unpickled them, with a manifest that matches them."""
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(_Plant(marker))
    d = tmp_path / "run" / "checkpoints" / "step_000003"
    d.mkdir(parents=True)
    for name in (".metadata", "__0_0.distcp", "worker_state.pt", "driver_state.json", "config.yaml"):
        (d / name).write_bytes(payload)
    files = {p.name: {"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()} for p in d.iterdir()}
    (d / "manifest.json").write_text(json.dumps({"step": 3, "files": files}))
    assert main(["export", f"run={tmp_path / 'run'}"]) == 1
    err = capsys.readouterr().err
    assert "step_000003: written in the older pickle format (.metadata, worker_state.pt, __0_0.distcp), which is never loaded" in err
    assert main(["export", f"run={tmp_path / 'run'}", "step=3"]) == 1
    assert "older pickle format" in capsys.readouterr().err
    assert not marker.exists()
    assert not (tmp_path / "run" / "export").exists()


@pytest.mark.parametrize("rank,message", [
    (1, "elements in the shard files (written by 2 ranks): a rank's shard is missing"),  # a gap at offset 0
    (2, "(written by 2 ranks) does not fit its base model tiny: is a rank's shard file missing? "
        "export to"),  # no gap: the tensors just end early, shorter than the model's
])
def test_a_missing_rank_is_refused_even_with_a_matching_manifest(runs, tmp_path, capsys, rank, message):
    run = tmp_path / "run"
    shutil.copytree(runs[2] / "checkpoints" / "step_000001", run / "checkpoints" / "step_000001")
    d = run / "checkpoints" / "step_000001"
    assert json.loads((d / "worker_state.json").read_text())["dtype"] == "bf16"  # recorded for export
    name = f"shard-0000{rank}-model-00001-of-00001.safetensors"
    (d / name).unlink()
    manifest = json.loads((d / "manifest.json").read_text())
    del manifest["files"][name]
    (d / "manifest.json").write_text(json.dumps(manifest))
    assert main(["export", f"run={run}"]) == 1
    err = capsys.readouterr().err
    assert message in err
    if rank == 2:
        assert "tensor shapes differ from" in err
    assert not (run / "export").exists()
