"""Shard sets for the tests, made by the `mdm` binary from generated JPEGs (nothing shipped)."""

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[3]
MDM = ROOT / "target" / "release" / "mdm"
DUMP = ROOT / "target" / "release" / "examples" / "dump_batches"
WNIDS = ["n01440764", "n01443537", "n01484850"]


def run(*args: object) -> str:
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    assert out.returncode == 0, f"{args}: {out.stderr}"
    return out.stdout


def write_imagenet(root: Path, n: int, side: int = 48, noise: bool = False) -> None:
    """`n` photos of flat colours with a gradient (plus noise: slower to decode), in three classes."""
    rng = np.random.default_rng(0)
    for i in range(n):
        wnid = WNIDS[i % len(WNIDS)]
        y, x = np.mgrid[0:side, 0:side]
        base = rng.integers(0, 200, size=3)
        img = np.stack([(base[c] + (x + y * c) % 56) for c in range(3)], axis=-1)
        if noise:
            img = img + rng.integers(0, 56, size=img.shape)
        img = img.astype(np.uint8)
        path = root / "train" / wnid / f"{wnid}_{i:04d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path, quality=90)


def ingest(src: Path, out: Path, shard_inputs: int) -> Path:
    run(MDM, "ingest", "imagenet", "--src", src, "--split", "train", "--out", out, "--resolution", "32",
        "--extra-resolution", "16", "--shard-inputs", shard_inputs, "--threads", "2", "--quiet")
    return out


@pytest.fixture(scope="session")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """90 images at 32² (+16²) in shards of 20."""
    assert MDM.exists() and DUMP.exists(), "build first: cargo build --release --workspace --all-targets"
    tmp = tmp_path_factory.mktemp("set")
    write_imagenet(tmp / "src", 90)
    return ingest(tmp / "src", tmp / "shards", 20)


def order(shards: Path, *args: object) -> list[list[str]]:
    """`mdm loader order` lines as lists of ids, step by step."""
    lines = run(MDM, "loader", "order", "--shards", shards, *args).splitlines()
    steps = []
    for i, line in enumerate(lines):
        head, ids = line.split(": ", 1)
        assert head == f"step {i}", line
        steps.append(ids.split(" "))
    return steps


@pytest.fixture(autouse=True)
def no_torchrun_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    os.environ.pop("RANK", None)


@pytest.fixture(scope="session")
def text_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 captioned images embedded inline by an untrained tiny T5 (`mdm make-tiny-t5`)."""
    tmp = tmp_path_factory.mktemp("text")
    write_imagenet(tmp / "src", 12)
    lines = ["url\tcaption"]
    for i, path in enumerate(sorted((tmp / "src").rglob("*.JPEG"))):
        words = " ".join(["dog"] * (1 + i % 4))
        lines.append(f"{path.relative_to(tmp / 'src')}\tphoto {i} of a {words}")
    (tmp / "t.tsv").write_text("\n".join(lines) + "\n")
    run(MDM, "make-tiny-t5", tmp / "t5")
    run(MDM, "ingest", "cc12m", "--src", tmp / "t.tsv", "--image-root", tmp / "src", "--out", tmp / "shards",
        "--resolution", "32", "--shard-inputs", 4, "--quiet", "--t5-device", "cpu", "--t5", tmp / "t5")
    return tmp / "shards"
