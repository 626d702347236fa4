"""Random projections of gradients into k dims, identical on every device.

The projection of the concatenated gradient (all LoRA parameters in sorted
name order, each flattened) is built per parameter from the GLOBAL coordinate
index, so projecting module by module and summing equals projecting the whole
vector. Hashes and random signs are computed with numpy on the CPU from the
seed and the coordinate index, then moved to the device: the same seed gives
the same features on any CPU or GPU.

- `sjlt`: sparse JL / CountSketch: coordinate i goes to bucket h(i) with sign
  s(i). Inner products are preserved with the variance of dense +-1.
- `rademacher`: dense +-1/sqrt(k) matrix, for small D (tests, parity checks).

Projectors register by name in `PROJECTORS` (`features.projector` in a
recipe); a new one subclasses `Projector` and implements `add_into`.
"""

from __future__ import annotations

import numpy as np
import torch

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """Returns the splitmix64 finaliser of uint64 counters (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


PROJECTORS: dict[str, type[Projector]] = {}


def register_projector(name: str):
    """Class decorator: registers a projector under `name` (a name registered twice is refused)."""

    def deco(cls):
        if name in PROJECTORS:
            raise ValueError(f"projector {name!r} registered twice")
        cls.kind = name
        PROJECTORS[name] = cls
        return cls

    return deco


def make_projector(kind: str, dim: int, seed: int, shapes: dict[str, tuple[int, ...]]) -> Projector:
    """Returns the registered projector `kind` for parameter blocks of the given shapes."""
    if kind not in PROJECTORS:
        raise ValueError(f"unknown projector {kind!r}; registered: {', '.join(sorted(PROJECTORS))}")
    return PROJECTORS[kind](dim, seed, shapes)


class Projector:
    """Projects per-parameter gradient blocks into a shared k-dim sketch (coordinates in global order)."""

    kind = ""

    def __init__(self, dim: int, seed: int, shapes: dict[str, tuple[int, ...]]):
        self.dim, self.seed = dim, seed
        self.offsets: dict[str, int] = {}
        off = 0
        for name in sorted(shapes):
            self.offsets[name] = off
            off += int(np.prod(shapes[name]))
        self.total = off
        self._cache: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._sizes = {n: int(np.prod(s)) for n, s in shapes.items()}

    def _hashes(self, name: str) -> np.ndarray:
        idx = np.arange(self.offsets[name], self.offsets[name] + self._sizes[name], dtype=np.uint64)
        return splitmix64(idx ^ splitmix64(np.full(1, self.seed, dtype=np.uint64)))

    def add_into(self, sketch: torch.Tensor, name: str, g: torch.Tensor) -> None:
        """Adds the projection of g (B, D_name) into sketch (B, k), in place."""
        raise NotImplementedError

    def project(self, flat: dict[str, torch.Tensor]) -> torch.Tensor:
        """Returns the projection (B, k) of per-parameter blocks {name: (B, D_name)}."""
        B = next(iter(flat.values())).shape[0]
        out = torch.zeros(B, self.dim, device=next(iter(flat.values())).device)
        for name in sorted(flat):
            self.add_into(out, name, flat[name])
        return out


@register_projector("sjlt")
class SJLTProjector(Projector):
    """Sparse JL / CountSketch: coordinate i goes to bucket h(i) with sign s(i)."""

    def _sjlt(self, name: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (name, str(device))
        if key not in self._cache:
            h = self._hashes(name)
            bucket = (h % np.uint64(self.dim)).astype(np.int64)
            sign = np.where((h >> np.uint64(63)) == 1, -1.0, 1.0).astype(np.float32)
            self._cache[key] = (torch.from_numpy(bucket).to(device), torch.from_numpy(sign).to(device))
        return self._cache[key]

    def add_into(self, sketch: torch.Tensor, name: str, g: torch.Tensor) -> None:
        bucket, sign = self._sjlt(name, g.device)
        sketch.index_add_(1, bucket, g * sign)


@register_projector("rademacher")
class RademacherProjector(Projector):
    """Dense +-1/sqrt(k) matrix, for small D (tests, parity checks)."""

    def __init__(self, dim: int, seed: int, shapes: dict[str, tuple[int, ...]]):
        super().__init__(dim, seed, shapes)
        if self.total * dim > 2e8:
            raise ValueError(f"dense Rademacher projection of D={self.total} to k={dim} is too large; use sjlt")

    def _dense(self, name: str, device: torch.device) -> torch.Tensor:
        key = (name, str(device))
        if key not in self._cache:
            # one uint64 hash per (coordinate, output dim): bit 63 gives the sign
            idx = np.arange(self.offsets[name], self.offsets[name] + self._sizes[name], dtype=np.uint64)
            cols = np.arange(self.dim, dtype=np.uint64)
            with np.errstate(over="ignore"):
                h = splitmix64((idx[:, None] * np.uint64(self.dim) + cols[None, :]) ^ np.uint64(self.seed * 7919 + 1))
            mat = (np.where((h >> np.uint64(63)) == 1, -1.0, 1.0) / np.sqrt(self.dim)).astype(np.float32)
            self._cache[key] = (torch.from_numpy(mat).to(device), torch.empty(0))
        return self._cache[key][0]

    def add_into(self, sketch: torch.Tensor, name: str, g: torch.Tensor) -> None:
        sketch += g @ self._dense(name, g.device)


class ExactProjector(Projector):
    """The identity: the whole concatenated gradient, unprojected (for fidelity checks; D columns)."""

    kind = "exact"

    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        super().__init__(0, 0, shapes)
        self.dim = self.total

    def add_into(self, sketch: torch.Tensor, name: str, g: torch.Tensor) -> None:
        off = self.offsets[name]
        sketch[:, off : off + g.shape[1]] += g
