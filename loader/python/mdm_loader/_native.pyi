from os import PathLike
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import numpy.typing as npt

class LoaderError(Exception):
    """An error of building or running a Loader."""

class CorruptShardError(LoaderError):
    """Corrupt shard data (checksum mismatch, undecodable payload, file unlike its manifest)."""

    shard: str
    row: int | None
    id: str | None
    what: str

class ConfigError(LoaderError):
    """Settings, or shard sets, that cannot work together."""

class StateError(LoaderError):
    """A state dict saved by a loader with other order settings, or not a loader state."""

class Batch:
    """One rank's part of one step. Per-sample fields are in the global order."""

    @property
    def epoch(self) -> int: ...
    @property
    def step(self) -> int:
        """Batches yielded before this one since the first start (resumes included)."""
    @property
    def position(self) -> int:
        """Epoch position of the global step's first sample."""
    @property
    def global_batch(self) -> int:
        """Samples in the whole global step (all ranks)."""
    @property
    def ids(self) -> list[str]: ...
    @property
    def captions(self) -> list[str | None]: ...
    @property
    def labels(self) -> npt.NDArray[np.int64]:
        """Class labels, -1 where a sample has none."""
    @property
    def positions(self) -> npt.NDArray[np.uint64]: ...
    @property
    def padded(self) -> npt.NDArray[np.bool_]:
        """True for samples repeated to fill the epoch's last batch (epoch_end="pad")."""
    @property
    def sets(self) -> npt.NDArray[np.int64]:
        """Index of the source each sample came from."""
    @property
    def resolutions(self) -> npt.NDArray[np.uint32]: ...
    @property
    def pixels(self) -> dict[int, npt.NDArray[np.uint8]]:
        """{resolution: [n, 3, r, r] or [n, T, 3, r, r]} uint8 RGB, views whose .base is this batch."""
    @property
    def rows(self) -> dict[int, npt.NDArray[np.int64]]:
        """{resolution: batch row of each sample in pixels[resolution]}."""
    @property
    def embeddings(self) -> npt.NDArray[np.float16] | npt.NDArray[np.uint16] | None:
        """[batch, max_tokens, dim] T5 embeddings, a view; bfloat16 comes as uint16
        (``torch.from_numpy(a).view(torch.bfloat16)``). None for sets without text."""
    @property
    def embeddings_dtype(self) -> Literal["float16", "bfloat16"] | None: ...
    @property
    def mask(self) -> npt.NDArray[np.bool_] | None:
        """[batch, max_tokens], True for a real token, a view."""
    @property
    def tokens(self) -> npt.NDArray[np.uint32] | None:
        """Real tokens of each sample."""
    @property
    def skipped(self) -> list[dict[str, Any]]:
        """Corrupt rows left out of this batch (corrupt="skip"): shard, row, id, what."""
    def __len__(self) -> int: ...

class Loader:
    """Streams shard sets as batches, endlessly (epoch after epoch).

    Options and defaults are LoaderBuilder's. rank/world_size default to torchrun's RANK and
    WORLD_SIZE (else 0 of 1); workers to the available cores.
    """

    def __init__(
        self,
        sources: str | Sequence[str | tuple[str, float]],
        *,
        batch_size: int = 32,
        mixed_ratio: str | Sequence[tuple[int, float]] | None = None,
        buckets: int | None = None,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        workers: int | None = None,
        prefetch: int = 4,
        shuffle: bool | dict[str, int] | None = None,
        epoch_end: Literal["drop", "pad"] = "drop",
        corrupt: Literal["skip", "fail"] = "skip",
        verify_checksums: bool = True,
        captions: bool = True,
        text: bool = True,
        random_flip: bool = False,
        random_crop: float = 1.0,
        video_frames: int = 16,
        row_group_cache_bytes: int | None = None,
        order_log: str | PathLike[str] | None = None,
    ) -> None: ...
    def __iter__(self) -> Iterator[Batch]: ...
    def __next__(self) -> Batch: ...
    def state_dict(self) -> dict[str, Any]:
        """The cursor after the last batch yielded (plain ints, strings and lists)."""
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restart from ``state``: the next batch is the one after the saved one."""
    def stats(self) -> dict[str, Any]: ...
    @property
    def epoch_len(self) -> int:
        """Samples in one epoch, over all ranks."""
    @property
    def rank(self) -> int: ...
    @property
    def world_size(self) -> int: ...
    def close(self) -> None:
        """Stop the loader's threads."""
