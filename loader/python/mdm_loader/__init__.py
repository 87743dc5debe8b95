"""mdm's streaming shard loader for PyTorch.

``Loader`` iterates mixed-resolution batches of uint8 NCHW (video NTCHW) numpy arrays that are
views of the Rust loader's buffers (``torch.from_numpy`` is free), with T5 embeddings and mask,
labels, captions and ids. ``state_dict()``/``load_state_dict()`` resume mid-epoch exactly.
"""

import numpy  # noqa: F401  (imported here, not at the first batch: arrays are numpy views)

from ._native import Batch, ConfigError, CorruptShardError, Loader, LoaderError, StateError

__all__ = ["Batch", "ConfigError", "CorruptShardError", "Loader", "LoaderError", "StateError"]
