"""The policy worker's checkpoints (in-process, a 1-rank gloo group, no Ray): an exact round trip of
model, optimizer and lr schedule through safetensors + JSON, and a checkpoint whose every file is a
malicious pickle is refused without running it."""

import hashlib
import json
import pickle
import socket

import pytest
import torch

from ovlt_rl.checkpoint import CheckpointError, CheckpointManager
from ovlt.config import load_config
from ovlt_rl.models.loading import load_processor, resolve_model_path
from ovlt_rl.models.sequences import make_sample
from ovlt_rl.workers.policy import PolicyWorker, worker_settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def worker():
    model_path = resolve_model_path("tiny")
    cfg = load_config("sft", ["actor.use_kl_loss=false", "actor.lr=1e-2", "trainer.device=cpu", "data.train_files=[x]",
                              "actor.global_batch_size=4", "actor.micro_batch_size=4", "actor.lr_schedule=cosine",
                              "actor.warmup_ratio=0.2"])
    w = PolicyWorker(model_path, 0, 1, "127.0.0.1", _free_port(), **worker_settings(cfg))
    w.setup(total_opt_steps=10)
    w.processor = load_processor(model_path)
    yield w
    w.shutdown()


def _step(w):
    from PIL import Image

    from ovlt_rl.data.prompts import chat_messages, encode_prompt, render_prompt

    img = Image.new("RGB", (56, 56), "red")
    p = encode_prompt(w.processor, render_prompt(w.processor, chat_messages([{"role": "user", "content": "<image>What?"}])), [img])
    samples = [make_sample(p, [30, 31, 32, 33 + i]) for i in range(4)]
    m = w.sft_step(samples, denominator=float(sum(int(s["loss_mask"][1:].sum()) for s in samples)))
    assert m["sft/skipped"] == 0.0


def _snapshot(w):
    params = {k: v.clone() for k, v in w.full_state_dict().items()}
    moments = {i: {k: v.full_tensor().clone() if hasattr(v, "full_tensor") else v.clone() for k, v in st.items()}
               for i, st in enumerate(w.optimizer.state.values())}
    return params, moments, w.optimizer.param_groups[0]["lr"], w.opt_steps


def test_round_trip_is_exact_and_holds_no_pickle(worker, tmp_path):
    m = CheckpointManager(tmp_path / "ck")
    _step(worker)
    _step(worker)
    path = m.save(2, worker.save_checkpoint, {"step": 2})
    saved = _snapshot(worker)
    _step(worker)  # move everything on
    assert not torch.equal(next(iter(_snapshot(worker)[0].values())), next(iter(saved[0].values())))

    assert m.resume(worker.load_checkpoint) == (2, path)
    params, moments, lr, opt_steps = _snapshot(worker)
    assert opt_steps == saved[3] == 2 and lr == pytest.approx(saved[2])
    assert params.keys() == saved[0].keys() and all(torch.equal(params[k], saved[0][k]) for k in params)
    assert all(torch.equal(moments[i][k], saved[1][i][k]) for i in moments for k in moments[i])
    # Only safetensors and JSON: no file starts with a pickle's protocol opcode.
    names = sorted(p.name for p in path.iterdir())
    assert names == ["driver_state.json", "manifest.json", "shard-00001-model-00001-of-00001.safetensors", "worker_state.json"]
    assert not any(p.read_bytes()[:1] == b"\x80" for p in path.iterdir())


class _Plant:
    """A pickle that, when unpickled, creates `marker` (any code could run there instead)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant_everywhere(path, marker, *, manifest_too=False):
    """Replace every file of a checkpoint with a malicious pickle, and update the manifest's sizes
    (and sha256 where it has them) so that the integrity check passes."""
    payload = pickle.dumps(_Plant(marker))
    manifest = json.loads((path / "manifest.json").read_text())
    for name in manifest["files"]:
        (path / name).write_bytes(payload)
        entry = manifest["files"][name]
        if isinstance(entry, dict):
            entry.update(size=len(payload), sha256=hashlib.sha256(payload).hexdigest())
        else:  # a manifest of sizes only
            manifest["files"][name] = len(payload)
    (path / "manifest.json").write_bytes(payload if manifest_too else json.dumps(manifest).encode())


def test_a_checkpoint_of_malicious_pickles_is_refused_and_never_run(worker, tmp_path):
    marker = tmp_path / "PWNED"
    pickle.loads(pickle.dumps(_Plant(marker)))  # the payload works: unpickling it creates the marker
    assert marker.exists()
    marker.unlink()

    m = CheckpointManager(tmp_path / "ck")
    _step(worker)
    path = m.save(1, worker.save_checkpoint, {"step": 1})
    _plant_everywhere(path, marker)
    assert m.latest() == (1, path)  # it passes the integrity check: the loader itself must refuse it
    with pytest.raises(Exception):
        worker.load_checkpoint(str(path))
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="none is usable"):
        CheckpointManager(tmp_path / "ck").resume(worker.load_checkpoint)
    assert not marker.exists()

    _plant_everywhere(path, marker, manifest_too=True)
    with pytest.raises(CheckpointError, match="unreadable manifest.json"):
        CheckpointManager(tmp_path / "ck").resume(worker.load_checkpoint)
    assert not marker.exists()


def test_a_resume_with_another_world_size_is_refused_with_the_reason(worker, tmp_path):
    m = CheckpointManager(tmp_path / "ck")
    path = m.save(1, worker.save_checkpoint, {"step": 1})
    state = json.loads((path / "worker_state.json").read_text())
    assert state["world_size"] == 1
    worker.world = 2
    try:
        with pytest.raises(ValueError, match=r"written by 1 policy ranks and this run has 2 \(actor.num_workers\)"):
            worker.load_checkpoint(str(path))
    finally:
        worker.world = 1


def test_a_rank_state_split_over_several_files_round_trips(worker, tmp_path):
    from ovlt_rl.workers.sharded_state import load_state, save_state

    _step(worker)
    save_state(str(tmp_path), worker.policy, worker.optimizer, 0, 1, {}, file_bytes=4 << 20)
    files = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert len(files) >= 4 and files[0] == f"shard-00001-model-00001-of-{len(files):05d}.safetensors"
    assert all(p.stat().st_size < 8 << 20 for p in tmp_path.glob("*.safetensors"))
    saved = _snapshot(worker)
    _step(worker)
    load_state(str(tmp_path), worker.policy, worker.optimizer, 1)
    params, moments, _, _ = _snapshot(worker)
    assert all(torch.equal(params[k], saved[0][k]) for k in params)
    assert all(torch.equal(moments[i][k], saved[1][i][k]) for i in moments for k in moments[i])
