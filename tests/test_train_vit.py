"""Tests of course_lib.train_vit: the launcher variables, the sharded sampler, and the script
itself on one process and on two CPU processes under torchrun and under accelerate launch (gloo)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from course_lib import CourseError
from course_lib import train_vit

TIMEOUT = 600  # seconds per subprocess; a healthy run takes well under a minute
ARGS = ["--n-train", "1024", "--n-val", "512", "--epochs", "2", "--batch-size", "64", "--lr", "2e-3",
        "--seed", "0", "--threads", "1", "--quiet"]


# --------------------------------------------------------------------------- unit


def test_dist_env_alone_is_rank_zero_of_one():
    info = train_vit.dist_env({})
    assert (info.rank, info.world_size, info.backend, info.is_main, info.distributed) == (0, 1, None, True, False)


def test_dist_env_reads_launcher_variables():
    info = train_vit.dist_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (info.rank, info.local_rank, info.world_size, info.is_main) == (1, 1, 2, False)


@pytest.mark.parametrize("env", [{"RANK": "2", "WORLD_SIZE": "2"}, {"RANK": "x", "WORLD_SIZE": "2"},
                                 {"RANK": "0", "WORLD_SIZE": "0"}])
def test_dist_env_rejects_inconsistent_values(env):
    with pytest.raises(CourseError):
        train_vit.dist_env(env)


def test_sharded_batches_reassemble_the_single_process_batches():
    n, batch = 100, 8
    single = list(train_vit.ShardedBatchSampler(n, batch, 0, 1, seed=3))
    shards = [list(train_vit.ShardedBatchSampler(n, batch, r, 2, seed=3)) for r in range(2)]
    assert len(single) == len(shards[0]) == len(shards[1]) == n // batch
    for k, full in enumerate(single):
        a, b = shards[0][k], shards[1][k]
        assert len(a) == len(b) == batch // 2
        assert sorted(torch.cat([a, b]).tolist()) == sorted(full.tolist())
        assert a.tolist() == full[0::2].tolist()
    # every item at most once per epoch, and a new order next epoch
    s = train_vit.ShardedBatchSampler(n, batch, 0, 1, seed=3)
    e1, e2 = torch.cat(list(s)), torch.cat(list(s))
    assert len(set(e1.tolist())) == len(e1) and not torch.equal(e1, e2)


@pytest.mark.parametrize("kw", [dict(n=100, global_batch=7, rank=0, world_size=2),
                                dict(n=100, global_batch=8, rank=2, world_size=2),
                                dict(n=4, global_batch=8, rank=0, world_size=1)])
def test_sharded_sampler_rejects_bad_input(kw):
    with pytest.raises(CourseError):
        train_vit.ShardedBatchSampler(**kw)


def test_script_rejects_bad_arguments(capsys):
    assert train_vit.main(["--epochs", "0", "--quiet"]) == 2
    assert "--epochs" in capsys.readouterr().err


# --------------------------------------------------------------------------- the script, 1 vs 2 processes


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", COURSE_HEADLESS="1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def _run(cmd: list[str], out: Path) -> dict:
    proc = subprocess.run(cmd + ARGS + ["--out", str(out / "ckpt"), "--summary", str(out / "summary.json")],
                          env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    one = tmp_path_factory.mktemp("one")
    two = tmp_path_factory.mktemp("two")
    s1 = _run([sys.executable, "-m", "course_lib.train_vit"], one)
    s2 = _run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "course_lib.train_vit"], two)
    acc = tmp_path_factory.mktemp("accelerate")
    s3 = _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), "-m", "course_lib.train_vit"], acc)
    return {"one": (s1, one), "two": (s2, two), "accelerate": (s3, acc)}


def test_two_processes_ran_with_gloo(runs):
    s1, _ = runs["one"]
    s2, _ = runs["two"]
    assert (s1["world_size"], s1["backend"]) == (1, None)
    assert (s2["world_size"], s2["backend"], s2["device"]) == (2, "gloo", "cpu")
    assert s2["per_process_batch"] * 2 == s2["global_batch"] == s1["global_batch"]
    assert s1["steps_per_epoch"] == s2["steps_per_epoch"] == 1024 // 64


def test_accelerate_launch_runs_the_same_script_on_two_processes(runs):
    s1, _ = runs["one"]
    s3, _ = runs["accelerate"]
    assert (s3["world_size"], s3["backend"], s3["device"]) == (2, "gloo", "cpu")
    assert s3["per_process_batch"] * 2 == s3["global_batch"] == s1["global_batch"]
    np.testing.assert_allclose(s3["train_loss"], s1["train_loss"], atol=5e-3)


@pytest.mark.parametrize("which", ["one", "two", "accelerate"])
def test_it_trains(runs, which):
    s, _ = runs[which]
    assert len(s["train_loss"]) == 2 and all(np.isfinite(s["train_loss"]))
    assert s["train_loss"][-1] < s["train_loss"][0] - 0.05, s["train_loss"]
    assert s["val_loss"][-1] < s["val_loss"][0], s["val_loss"]
    assert s["final_val_acc"] > 0.15  # ten classes: chance is 0.10


def test_two_processes_agree_with_one(runs):
    s1, _ = runs["one"]
    s2, _ = runs["two"]
    # the first epoch is the same computation up to summation order; small differences then grow
    assert abs(s1["train_loss"][0] - s2["train_loss"][0]) < 1e-4
    np.testing.assert_allclose(s2["train_loss"], s1["train_loss"], atol=5e-3)
    np.testing.assert_allclose(s2["val_loss"], s1["val_loss"], atol=5e-3)
    assert abs(s1["final_val_acc"] - s2["final_val_acc"]) <= 0.02


@pytest.mark.parametrize("which", ["one", "two"])
def test_checkpoint_loads_and_reproduces_the_accuracy(runs, which):
    from transformers import ViTForImageClassification

    from course_lib import train

    s, folder = runs[which]
    model = ViTForImageClassification.from_pretrained(folder / "ckpt")
    assert model.config.num_labels == 10
    _, _, Xva, yva = train_vit._load_data(s["n_train"], s["n_val"], s["seed"])
    acc = train.evaluate(model, train.make_loader(Xva, yva, batch_size=256), device="cpu")["accuracy"]
    assert abs(acc - s["final_val_acc"]) <= 2 / s["n_val"]
    history = train.load_history(folder / "ckpt")
    assert history is not None and history.num_epochs == 2
