"""Training data: named sources mixed by sampling rate, read in a resumable deterministic order."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Sampler

from ..errors import InputError
from ..muse.layouts import LAYOUTS

ENV_MUSE, ENV_REFCOCO = "PIXELLM_MUSE_ROOT", "PIXELLM_REFCOCO_ROOT"



def parse_mix(spec: str) -> dict[str, float]:
    """``"shapes=2,refcoco=9"`` -> {"shapes": 2.0, "refcoco": 9.0}; rates need not sum to 1."""
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, rate = part.partition("=")
        if name not in LAYOUTS:
            raise InputError(f"unknown data source {name!r} in --mix; known: {', '.join(LAYOUTS)}")
        out[name] = float(rate or 1.0)
        if out[name] <= 0:
            raise InputError(f"--mix rate for {name!r} must be > 0")
    if not out:
        raise InputError("--mix names no data source")
    return out


def _root(name: str, given: str | None, env: str | None) -> Path:
    root = given or (os.environ.get(env) if env else None)
    if not root:
        raise InputError(f"data source {name!r} needs a path (--{name}-root"
                         + (f" or ${env}" if env else "") + f"); expected layout: {LAYOUTS[name]}")
    p = Path(root)
    if not p.exists():
        raise InputError(f"data source {name!r}: {p} does not exist; expected layout: {LAYOUTS[name]}")
    return p


def load_source(name: str, *, root: str | None, split: str = "train", strict: bool = True) -> Sequence:
    """The samples of one named source (lazy sequences of :class:`pixellm.muse.Sample`)."""
    from ..muse import MuseDataset, RefCocoDataset, multi_referring

    if name in ("shapes", "muse"):
        r = _root(name, root, ENV_MUSE if name == "muse" else None)
        path = r / f"muse_{split}.json"
        if not path.is_file():
            raise InputError(f"data source {name!r}: {path} not found; expected layout: {LAYOUTS[name]}")
        return MuseDataset(path, r / "images", strict=strict)
    r = _root(name, root, ENV_REFCOCO)
    if not (r / "refcoco").is_dir():
        raise InputError(f"data source {name!r}: {r / 'refcoco'} not found; expected layout: {LAYOUTS[name]}")
    ds = RefCocoDataset(r, dataset="refcoco", split_by="unc", split=split, strict=strict)
    return multi_referring(ds) if name == "multiref" else ds


class MixtureSampler(Sampler[int]):
    """Infinite deterministic index stream; item ``n`` depends only on (seed, n).

    The global stream is split across processes (rank r takes positions r, r+W, ...), so 1
    process and W processes see the same global batches, and a resumed run restarts exactly at
    ``start`` (a global sample position).

    With ``lengths`` (token length per flat index), each chunk of ``bucket`` consecutive global
    positions is reordered by length, so a batch holds similar lengths and little padding;
    the reorder depends only on the chunk, which keeps the guarantees above.
    """

    def __init__(self, *, sizes: Sequence[int], rates: Sequence[float], seed: int,
                 start: int = 0, rank: int = 0, world: int = 1,
                 lengths: Sequence[int] | None = None, bucket: int = 1) -> None:
        self.sizes, self.seed, self.start, self.rank, self.world = list(sizes), seed, start, rank, world
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.bucket = max(1, bucket) if lengths is not None else 1
        p = np.asarray(rates, dtype=np.float64)
        self.probs = p / p.sum()
        self.offsets = np.cumsum([0, *self.sizes])
        self._cache: tuple = (None, None)

    def index(self, n: int) -> int:
        """The flat dataset index of global sample position ``n``."""
        rng = np.random.default_rng([self.seed, n])
        src = int(rng.choice(len(self.sizes), p=self.probs))
        epoch, pos = divmod(n, max(self.sizes[src], 1))
        return int(self.offsets[src] + self._perm(src, epoch)[pos])

    def _perm(self, src: int, epoch: int) -> np.ndarray:
        if self._cache[0] != (src, epoch):  # one permutation per (source, epoch), cached
            self._cache = ((src, epoch), np.random.default_rng([self.seed, src, epoch]).permutation(self.sizes[src]))
        return self._cache[1]

    def chunk(self, c: int) -> list[int]:
        """Flat indices of global positions [c*bucket, (c+1)*bucket), length-sorted if bucketing."""
        idx = [self.index(n) for n in range(c * self.bucket, (c + 1) * self.bucket)]
        if self.lengths is not None and self.bucket > 1:
            idx.sort(key=lambda i: self.lengths[i])
        return idx

    def __iter__(self):
        n = self.start + self.rank
        c, items = -1, []
        while True:
            if n // self.bucket != c:
                c = n // self.bucket
                items = self.chunk(c)
            yield items[n - c * self.bucket]
            n += self.world

    def __len__(self) -> int:  # effectively infinite; DataLoader only needs a number
        return 2**31

