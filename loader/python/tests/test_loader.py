"""mdm_loader against the Rust loader: order, resume, bytes, errors, zero copy, GIL."""

import itertools
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import mdm_loader
from conftest import DUMP, order, run, write_imagenet, ingest


def take(loader: mdm_loader.Loader, n: int) -> list[mdm_loader.Batch]:
    return list(itertools.islice(loader, n))


@pytest.mark.parametrize("world", [1, 2, 3])
def test_order_equals_mdm_loader_order(shards: Path, world: int) -> None:
    steps = 90 // (6 * world) + 2  # into the second epoch
    for rank in range(world):
        want = order(shards, "--batch", 6, "--seed", 3, "--world", world, "--rank", rank, "--steps", steps)
        loader = mdm_loader.Loader(str(shards), batch_size=6, seed=3, rank=rank, world_size=world, workers=2)
        got = [b.ids for b in take(loader, steps)]
        assert got == want, f"rank {rank} of {world}"
        assert loader.rank == rank and loader.world_size == world


def test_rank_and_world_from_torchrun_env(shards: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    loader = mdm_loader.Loader(str(shards), batch_size=4, seed=3, workers=1)
    assert (loader.rank, loader.world_size) == (1, 3)
    want = order(shards, "--batch", 4, "--seed", 3, "--world", 3, "--rank", 1, "--steps", 3)
    assert [b.ids for b in take(loader, 3)] == want
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(mdm_loader.ConfigError, match="RANK"):
        mdm_loader.Loader(str(shards))


def test_resume_from_state_dict_yields_exactly_the_remaining_steps(shards: Path) -> None:
    opts = dict(batch_size=7, seed=11, workers=2, mixed_ratio="32:2,16:1")
    whole = [b.ids for b in take(mdm_loader.Loader(str(shards), **opts), 20)]
    first = mdm_loader.Loader(str(shards), **opts)
    head = [b.ids for b in take(first, 8)]
    state = first.state_dict()
    assert state["steps"] == 8 and isinstance(state["cursor"]["position"], int)
    # Survives torch.save-style round trips of plain values, and a fresh loader resumes it.
    import json
    state = json.loads(json.dumps(state))
    again = mdm_loader.Loader(str(shards), **opts)
    take(again, 3)  # already iterated: load_state_dict must rewind it
    again.load_state_dict(state)
    rest = [b.ids for b in take(again, 12)]
    assert head + rest == whole
    assert [b.step for b in take(again, 1)] == [20]
    with pytest.raises(mdm_loader.StateError, match="fingerprint"):
        mdm_loader.Loader(str(shards), batch_size=7, seed=12, workers=1).load_state_dict(state)


def test_arrays_have_shapes_dtypes_and_the_rust_loaders_bytes(shards: Path, tmp_path: Path) -> None:
    steps, batch = 4, 8
    run(DUMP, shards, tmp_path, batch, 5, 2, 1, steps, "32:1,16:1")
    loader = mdm_loader.Loader(str(shards), batch_size=batch, seed=5, rank=1, world_size=2,
                               mixed_ratio=[(32, 1.0), (16, 1.0)], workers=2)
    seen = set()
    for b in take(loader, steps):
        assert b.ids == (tmp_path / f"step-{b.step}.ids").read_text().split("\n")
        assert len(b) == batch and b.labels.dtype == np.int64 and b.labels.shape == (batch,)
        assert set(b.labels.tolist()) <= {0, 1, 2}
        assert b.embeddings is None and b.mask is None  # ImageNet shards carry no text
        for res, px in b.pixels.items():
            rows = b.rows[res]
            assert px.dtype == np.uint8 and px.shape == (len(rows), 3, res, res) and px.flags.c_contiguous
            assert (b.resolutions[rows] == res).all()
            assert px.tobytes() == (tmp_path / f"step-{b.step}-{res}.u8").read_bytes()
            seen.add(res)
        assert sum(len(r) for r in b.rows.values()) == batch
    assert seen == {32, 16}


def test_arrays_are_views_of_the_batch_not_copies(shards: Path) -> None:
    b = next(mdm_loader.Loader(str(shards), batch_size=4, workers=1))
    px = b.pixels[32]
    assert px.base is b
    assert not px.flags.owndata
    # Two views share memory: a write through one shows in the other.
    again = b.pixels[32]
    assert np.shares_memory(px, again)
    px[0, 0, 0, 0] = 255 - int(px[0, 0, 0, 0])
    assert again[0, 0, 0, 0] == px[0, 0, 0, 0]
    del b, again
    assert int(px.sum()) >= 0  # the view keeps the batch's buffer alive
    try:
        import torch
    except Exception:  # torch may not import on a CPU-only venv
        return
    t = torch.from_numpy(px)
    assert t.data_ptr() == px.ctypes.data


def test_recycled_buffers_never_touch_arrays_still_held(shards: Path, tmp_path: Path) -> None:
    """Pixel buffers go back to the loader only once every array viewing them is gone: arrays kept
    across later steps keep their bytes, and steps built in recycled buffers have the right ones."""
    steps, batch = 12, 8
    run(DUMP, shards, tmp_path, batch, 7, 1, 0, steps, "32:1")
    loader = mdm_loader.Loader(str(shards), batch_size=batch, seed=7, rank=0, world_size=1,
                               mixed_ratio=[(32, 1.0)], workers=2, prefetch=2)
    kept = {}
    for b in take(loader, steps):
        px = b.pixels[32]
        assert px.tobytes() == (tmp_path / f"step-{b.step}-32.u8").read_bytes(), f"step {b.step}"
        if b.step % 3 == 0:
            kept[b.step] = px  # held: its buffer must not be reused
        del b, px
    for step, px in kept.items():
        assert px.tobytes() == (tmp_path / f"step-{step}-32.u8").read_bytes(), f"kept step {step}"


def corrupt_copy(shards: Path, dst: Path) -> tuple[str, int, str]:
    """Copies the set with one byte of shard 1's row 3 jpeg_32 flipped: (shard file, row, id)."""
    import shutil
    shutil.copytree(shards, dst)
    shard = sorted(dst.glob("*.parquet"))[1]
    table = pq.read_table(shard, columns=["id", "jpeg_32"])
    victim = table.column("jpeg_32")[3].as_py()
    data = bytearray(shard.read_bytes())
    at = data.find(victim)
    assert at > 0, "payload stored verbatim"
    data[at + len(victim) // 2] ^= 0x40
    shard.write_bytes(bytes(data))
    return shard.name, 3, table.column("id")[3].as_py()


def test_a_corrupt_shard_raises_the_named_error(shards: Path, tmp_path: Path) -> None:
    name, row, sid = corrupt_copy(shards, tmp_path / "bad")
    steps = 90 // 10
    fail = mdm_loader.Loader(str(tmp_path / "bad"), batch_size=10, corrupt="fail", workers=2, shuffle=False)
    with pytest.raises(mdm_loader.CorruptShardError) as err:
        take(fail, steps)
    e = err.value
    assert isinstance(e, mdm_loader.LoaderError)
    assert e.shard.endswith(name) and e.row == row and e.id == sid and "checksum" in e.what
    assert f"row {row}" in str(e)
    with pytest.raises(mdm_loader.LoaderError, match="earlier error"):
        next(fail)
    skip = mdm_loader.Loader(str(tmp_path / "bad"), batch_size=10, workers=2, shuffle=False)
    skipped = [s for b in take(skip, steps) for s in b.skipped]
    assert [(s["row"], s["id"]) for s in skipped] == [(row, sid)]


def test_config_errors_are_typed(shards: Path, tmp_path: Path) -> None:
    with pytest.raises(mdm_loader.ConfigError, match="rank 2 is not below world size 2"):
        mdm_loader.Loader(str(shards), rank=2, world_size=2)
    with pytest.raises(mdm_loader.ConfigError, match="mixed_ratio"):
        mdm_loader.Loader(str(shards), mixed_ratio="32:x")
    with pytest.raises(mdm_loader.LoaderError, match="manifest"):
        mdm_loader.Loader(str(tmp_path / "missing"))


def test_waiting_releases_the_gil(tmp_path: Path) -> None:
    write_imagenet(tmp_path / "src", 64, side=300, noise=True)
    big = tmp_path / "big"
    run(Path(DUMP).parents[1] / "mdm", "ingest", "imagenet", "--src", tmp_path / "src", "--split", "train",
        "--out", big, "--resolution", "256", "--threads", "2", "--quiet")
    loader = mdm_loader.Loader(str(big), batch_size=64, workers=1, prefetch=1)
    ticks: list[float] = []
    stop = threading.Event()

    def count() -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.001)

    t = threading.Thread(target=count)
    t.start()
    waits = []
    for _ in range(3):
        t0 = time.monotonic()
        next(loader)
        waits.append((t0, time.monotonic()))
    stop.set()
    t.join()
    long = [(a, b) for a, b in waits if b - a > 0.015]
    assert long, f"batches came too fast to tell: {waits}"
    for a, b in long:
        inside = [x for x in ticks if a + 0.003 < x < b - 0.003]
        assert len(inside) >= 3, f"the other thread did not run during a {b - a:.3f} s wait"


def test_ctrl_c_raises_keyboard_interrupt(tmp_path: Path, shards: Path) -> None:
    script = (
        "import sys, mdm_loader\n"
        f"loader = mdm_loader.Loader({str(shards)!r}, batch_size=8, workers=1)\n"
        "print('ready', flush=True)\n"
        "try:\n"
        "    for b in loader: pass\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', loader.state_dict()['steps'] > 0, flush=True)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=20)
    assert p.returncode == 0 and out.strip() == "interrupted True"


def test_text_batches_carry_embeddings_mask_and_captions(text_shards: Path) -> None:
    loader = mdm_loader.Loader(str(text_shards), batch_size=4, workers=1)
    for b in take(loader, 3):
        emb, mask, tokens = b.embeddings, b.mask, b.tokens
        assert b.embeddings_dtype == "float16" and emb.dtype == np.float16 and emb.base is b
        assert mask.dtype == np.bool_ and mask.base is b and tokens.dtype == np.uint32
        assert emb.shape[:2] == mask.shape == (4, int(tokens.max())) and emb.shape[2] > 0
        assert (mask.sum(axis=1) == tokens).all() and (mask[:, 0]).all()
        assert not emb[~mask].any(), "padding is zero"
        assert all(c is not None and c.startswith("photo ") for c in b.captions)
        assert (b.labels == -1).all()


def test_stats_count_what_was_yielded_and_close_stops(shards: Path) -> None:
    loader = mdm_loader.Loader(str(shards), batch_size=5, workers=1, mixed_ratio="32:1,16:1")
    batches = take(loader, 4)
    s = loader.stats()
    assert s["batches"] == 4 and s["samples"] == 20 and s["skipped"] == 0
    assert sum(s["samples_per_resolution"].values()) == 20
    assert s["samples_per_resolution"] == {r: sum(len(b.rows.get(r, [])) for b in batches) for r in (32, 16)}
    assert loader.epoch_len == 90
    loader.close()
    with pytest.raises(mdm_loader.LoaderError, match="closed"):
        next(loader)


def test_stubs_match_the_module() -> None:
    import ast
    import inspect

    stub = Path(mdm_loader.__file__).with_name("_native.pyi")
    classes = {n.name: n for n in ast.walk(ast.parse(stub.read_text())) if isinstance(n, ast.ClassDef)}
    assert set(classes) == set(mdm_loader.__all__)
    for name, node in classes.items():
        obj = getattr(mdm_loader, name)
        stubbed = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
        public = {n for n in dir(obj) if not n.startswith("_")} - set(dir(Exception))
        assert public == {n for n in stubbed if not n.startswith("_")}, name
    init = next(n for n in classes["Loader"].body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    params = [a.arg for a in init.args.args[1:] + init.args.kwonlyargs]
    assert params == list(inspect.signature(mdm_loader.Loader).parameters)
