"""Influence selectors over a matrix read in row blocks: the same selections as in memory, out of core.

A 5.8M x 1k influence matrix is 23 GB of float32, more than a 24 GB machine
can hold beside anything else. The selectors only need, per pool row, a score
computed from that row (`row_scores`: LESS, sum, instance-max), or, for BIDS,
the column statistics, a sorted prefix of each column's unselected rows and the
rows the iteration picks (`bids_streamed`). Both read the matrix through a
`MatrixSource` (the influence store, or `ArraySource` for a matrix in memory)
and select exactly what the in-memory functions in `bidsml.selection` select:
tests compare them on matrices small enough to refill every column.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
from numba import njit

from bidsml.bids_picks import ColumnLists, bids_loop, lowest_tied_row, set_tops, z_value
from bidsml.selection import STATS_ROWS, bids_iterate, column_stats, zscore

SAMPLE_ROWS = 16384  # evenly spaced rows the store keeps for quantiles and BIDS's first thresholds
MAPPED_BUDGET = 1 << 30  # bytes of the memory-mapped matrix BIDS's picks may keep mapped


class MatrixSource(Protocol):
    """An N x M float32 matrix read in row blocks."""

    shape: tuple[int, int]

    def blocks(self, rows: int = STATS_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """Yields (first row, float32 block) in row order."""

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Returns the rows idx (float32, in the order given)."""

    def array(self) -> np.ndarray:
        """Returns the matrix as a float32 array compiled loops read in place (memory-mapped on disk)."""

    def release(self, start: int = 0, stop: int | None = None, over: int | None = None) -> None:
        """Lets the process drop its mapped pages of rows start..stop (after a compiled loop has read them); with
        `over`, only when its resident mapped pages exceed that many bytes."""

    def column_stats(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Returns per-column (mean, sample std, is-constant), as `bidsml.selection.column_stats` computes them."""

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """Returns (row indices, their float32 rows) of the evenly spaced sample (`sample_rows`)."""

    def nonfinite(self) -> tuple[int, int] | None:
        """Returns the first (row, column) whose score is not finite, or None."""


def sample_rows(n: int) -> np.ndarray:
    """Returns the SAMPLE_ROWS evenly spaced rows of an n-row pool (all rows when n <= SAMPLE_ROWS)."""
    return np.arange(0, n, -(-n // SAMPLE_ROWS), dtype=np.int64)


class ArraySource:
    """A matrix in memory as a MatrixSource (tests, small pools, `bidsflow select` on an array)."""

    def __init__(self, A: np.ndarray, block_rows: int = STATS_ROWS):
        self.A, self.block_rows = A, block_rows
        self.shape = A.shape
        self._stats = None
        self._array = None

    def blocks(self, rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        step = self.block_rows
        for s in range(0, self.shape[0], step):
            yield s, np.asarray(self.A[s : s + step], dtype=np.float32)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        return np.asarray(self.A[np.asarray(idx)], dtype=np.float32)

    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.ascontiguousarray(self.A, dtype=np.float32)
        return self._array

    def release(self, start: int = 0, stop: int | None = None, over: int | None = None) -> None:
        pass

    def column_stats(self):
        if self._stats is None:
            self._stats = column_stats(self.A)
        return self._stats

    def sample(self):
        idx = sample_rows(self.shape[0])
        return idx, self.rows(idx)

    def nonfinite(self):
        bad = np.argwhere(~np.isfinite(self.A))
        return (int(bad[0][0]), int(bad[0][1])) if len(bad) else None


def as_source(A) -> MatrixSource:
    """Returns A itself when it is a MatrixSource, else an ArraySource over it."""
    return A if hasattr(A, "blocks") else ArraySource(np.asarray(A))


def row_scores(src: MatrixSource, score: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Returns score(block) for every row block, concatenated (a score per row, or a row of scores)."""
    return np.concatenate([score(block) for _, block in src.blocks()])


class _Transform:
    """Z[:, j'] = zscore(A[:, kept[j']]) (BIDS), or A itself (mean 0, std 1: exact in float64)."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, kept: np.ndarray):
        self.kept, self.mean, self.std = kept, mean[kept], std[kept]

    def __call__(self, block: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
        if cols is None:
            return zscore(block[:, self.kept], self.mean, self.std)
        return zscore(block[:, self.kept[cols]], self.mean[cols], self.std[cols])

    def raw_floor(self, t: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Returns float32 raw scores below which no z-score exceeds t (a safe prefilter in the raw matrix)."""
        with np.errstate(invalid="ignore"):
            a = self.mean[cols] + self.std[cols] * (t - (np.abs(t) + 1.0) * 1e-5)
        a = np.where(np.isfinite(t), a, -np.inf).astype(np.float32)
        return np.nextafter(a, np.float32(-np.inf))


@njit(cache=True, nogil=True)
def _scan_block(block, start, src_cols, floor, mean, std, t, selected, i0, out_c, out_r, out_v, n):
    """Appends (column, row, z) for block rows i0.. that are unselected with a raw score >= floor and z > t, in row
    order; returns (entries, the block row it stopped at: len(block) when done, earlier when the buffers are full)."""
    m = len(src_cols)
    for i in range(i0, block.shape[0]):
        if selected[start + i]:
            continue
        if n + m > len(out_c):
            return n, i
        for c in range(m):
            x = block[i, src_cols[c]]
            if x >= floor[c]:
                z = z_value(x, mean[c], std[c])
                if z > t[c]:
                    out_c[n] = c
                    out_r[n] = start + i
                    out_v[n] = z
                    n += 1
    return n, block.shape[0]


@njit(cache=True)
def _sorted_lists(c, r, v, n_cols):
    """Returns (rows, values, bounds): the entries (given in row order) grouped by column, each column's sorted by
    value descending, then row; column i's are [bounds[i]:bounds[i + 1]].

    A counting sort by column, then per column a stable radix sort (three
    11-bit passes) on a 32-bit key that orders float32 values descending
    (-0.0 as 0.0, which no comparison of the loop tells apart).
    """
    n = len(c)
    bounds = np.zeros(n_cols + 1, dtype=np.int64)
    for i in range(n):
        bounds[c[i] + 1] += 1
    for j in range(n_cols):
        bounds[j + 1] += bounds[j]
    fill = bounds[:-1].copy()
    key, rows = np.empty(n, dtype=np.uint32), np.empty(n, dtype=r.dtype)
    bits = v.view(np.uint32)
    for i in range(n):
        p = fill[c[i]]
        fill[c[i]] += 1
        b = bits[i] if bits[i] != 0x80000000 else np.uint32(0)
        key[p] = ~((~b) if b >> 31 else (b | np.uint32(0x80000000)))  # descending: the ascending key's complement
        rows[p] = r[i]
    key2, rows2 = np.empty(n, dtype=np.uint32), np.empty(n, dtype=r.dtype)
    count = np.zeros(2049, dtype=np.int64)
    for j in range(n_cols):
        lo, hi = bounds[j], bounds[j + 1]
        sk, sr, dk, dr = key, rows, key2, rows2
        for shift in (0, 11, 22):
            count[:] = 0
            for i in range(lo, hi):
                count[((sk[i] >> shift) & 2047) + 1] += 1
            for d in range(2048):
                count[d + 1] += count[d]
            for i in range(lo, hi):
                d = (sk[i] >> shift) & 2047
                q = lo + count[d]
                count[d] += 1
                dk[q] = sk[i]
                dr[q] = sr[i]
            sk, sr, dk, dr = dk, dr, sk, sr
    # three passes: the sorted entries are in key2 / rows2
    vals = np.empty(n, dtype=np.float32)
    vb = vals.view(np.uint32)
    for i in range(n):
        asc = ~key2[i]
        vb[i] = (asc & np.uint32(0x7FFFFFFF)) if asc >> 31 else ~asc
    return rows2, vals, bounds


class _StreamedColumns:
    """For each column of Z, every unselected row above a threshold, sorted (value desc, row asc).

    Such a list is an exact prefix of the column's order over its unselected
    rows, whatever its length, which is all BIDS's iteration needs (the
    in-memory `_ColumnBlocks` keeps the first B instead). How deep each column
    will be read is estimated by running BIDS on the store's evenly spaced
    sample (`estimate`); thresholds come from the sample's unselected rows
    (about 1.5 times the target above them). When lists run out, one scan over
    the matrix refills them and every list that, at the rate it has been used,
    would run out before the K-th pick.
    """

    def __init__(self, src: MatrixSource, tf: _Transform, selected: np.ndarray, target: int, k: int, estimate: bool):
        self.src, self.tf, self.selected = src, tf, selected
        N, M = src.shape[0], len(tf.kept)
        self.sample_rows, sample = src.sample()
        zs = tf(sample)
        self.sample = np.ascontiguousarray(zs.T)  # (M, s): each column's values over the sample rows
        self.target = np.full(M, min(target, N), dtype=np.int64)
        if estimate:
            self.target = np.maximum(self.target, _depth_estimate(zs, N, k))
        self.lists = ColumnLists(M, np.float32)
        self.complete = np.zeros(M, dtype=bool)  # the list holds every unselected row of its column
        self.filled_at = np.zeros(M, dtype=np.int64)  # the pick count when each list was filled
        self.top_row = np.zeros(M, dtype=np.int64)
        self.top_val = np.zeros(M, dtype=np.float64)
        self.top_row[:] = -1
        self.tops = np.zeros(1 + (1 << 16), dtype=np.int64)  # a ring of the rows that become tops (prefetch)
        self.scans = 0
        self.entries = 0  # list entries the scans collected
        self._refill(np.arange(M))
        self._set_tops(np.arange(M))

    def _thresholds(self, cols: np.ndarray, factor: float) -> np.ndarray:
        """Returns per column the sample value with about factor * target unselected pool rows above it (-inf when
        the sample's unselected rows are fewer)."""
        N, s = self.src.shape[0], self.sample.shape[1]
        rank = np.ceil(factor * self.target[cols] * s / N).astype(np.int64) + 2
        left = ~self.selected[self.sample_rows]
        t = np.full(len(cols), -np.inf, dtype=np.float32)
        for i, j in enumerate(cols):
            vals = self.sample[j] if left.all() else self.sample[j][left]
            if rank[i] < len(vals):
                t[i] = -np.partition(-vals, rank[i])[rank[i]]
        return t

    def _refill(self, cols: np.ndarray) -> None:
        factor = 1.5
        while len(cols):
            t = self._thresholds(cols, factor)
            self._scan(cols, t)
            self.complete[cols] = t == -np.inf
            # a threshold above every unselected row of a column leaves it empty: lower it
            L = self.lists
            empty = L.end[cols] == L.start[cols]
            cols = cols[empty & ~self.complete[cols]]
            factor *= 4

    def _scan(self, cols: np.ndarray, t: np.ndarray) -> None:
        """One pass over the matrix: each column in cols gets its unselected rows with Z > t, sorted."""
        self.scans += 1
        floor = self.tf.raw_floor(t.astype(np.float64), cols)
        src_cols = self.tf.kept[cols].astype(np.int64)
        mean, std = self.tf.mean[cols], self.tf.std[cols]
        size = max(1 << 16, int(1.7 * self.target[cols].sum()) + len(cols))
        A, step = self.src.array(), STATS_ROWS
        starts = list(range(0, len(A), step))
        halves = [starts[: (len(starts) + 1) // 2], starts[(len(starts) + 1) // 2 :]]
        row_type = np.int32 if self.src.shape[0] < 2**31 else np.int64

        def scan(starts: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            """Scans the blocks at `starts` (in order) into buffers of its own; returns the entries found."""
            part = max(1 << 16, size // 2)
            c, r, v = np.empty(part, dtype=np.int32), np.empty(part, dtype=row_type), np.empty(part, dtype=np.float32)
            n = 0
            for start in starts:  # the matrix read in place, block by block
                block, i = A[start : start + step], 0
                while True:
                    n, i = _scan_block(block, start, src_cols, floor, mean, std, t, self.selected, i, c, r, v, n)
                    if i == len(block):
                        break
                    c, r, v = (np.concatenate([x, np.empty_like(x)]) for x in (c, r, v))  # full: double them
                self.src.release(start, start + len(block))
            return c[:n], r[:n], v[:n]

        # two threads (the compiled scan lets go of the GIL), each on half of the rows: their entries, joined in
        # order, are in row order
        with ThreadPoolExecutor(2) as pool:
            parts = list(pool.map(scan, halves))
        c, r, v = (np.concatenate([p[i] for p in parts]) for i in range(3))
        del parts
        self.entries += len(c)
        self.lists.put(cols, *_sorted_lists(c, r, v, len(cols)))

    def _set_tops(self, cols: np.ndarray) -> None:
        L, exhausted = self.lists, np.zeros(len(self.top_val), dtype=bool)
        set_tops(L.rows, L.vals, L.pos, L.end, cols, self.selected, self.top_row, self.top_val, exhausted, self.tops)
        # a fresh list is empty only when every row is selected
        self.top_val[np.flatnonzero(exhausted)] = -np.inf

    def refill(self, cols: np.ndarray, step: int, k: int) -> None:
        """Refills the lists in cols after `step` of k picks, in one scan with every list that would run out before
        the end at 1.5 times the rate it has been used (`bids_loop` calls it)."""
        if self.selected.all():
            self.top_val[cols] = -np.inf
            return
        L = self.lists
        used = L.pos - L.start
        need = np.ceil(1.5 * used * ((k - step) / np.maximum(step - self.filled_at, 1))).astype(np.int64)
        low = (L.unselected_left(self.selected) < need) & ~self.complete
        low[cols] = True
        refill = np.flatnonzero(low)
        grown = self.target.copy()
        grown[cols] *= 2
        self.target[refill] = np.clip(np.maximum(need[refill], grown[refill]), 1, self.src.shape[0])
        self._refill(refill)
        self.filled_at[refill] = step
        self._set_tops(refill)  # fresh lists hold unselected rows only: no further refill

    def tie_past_list(self, j: int, step: int, k: int) -> bool:
        """A tie ran past the end of column j's list: refills it (returns True: pick again), unless the list holds
        the whole column (False: its ties are all there)."""
        if self.complete[j]:
            return False
        self.refill(np.array([j]), step, k)
        return True

    def lowest_tied_row(self, j: int, r_j: float, best: float) -> int:
        """Returns the lowest unselected row z with Z[z, j] - r_j == best (rounded as the naive loop does)."""
        column = None if self.complete[j] else self._column(j)  # a complete list holds every unselected row
        return lowest_tied_row(*self.lists.remaining(j), self.selected, r_j, best, column)

    def _column(self, j: int):
        """Returns a function reading column j of Z from the source (all rows)."""
        return lambda: np.concatenate([self.tf(block, np.array([j]))[:, 0] for _, block in self.src.blocks()])


def _depth_estimate(zs: np.ndarray, n: int, k: int) -> np.ndarray:
    """Returns, per column, how many pool rows BIDS's K picks will read of it, estimated by running BIDS on the
    sample (k * s / n picks) and scaling each column's depth there (the selected rows above its best unselected
    one) by n / s, with a quarter more for the sampling error."""
    s = len(zs)
    ks = int(np.ceil(k * s / n))
    if ks >= s:
        return np.full(zs.shape[1], n, dtype=np.int64)
    picked = np.zeros(s, dtype=bool)
    picked[bids_iterate(zs, ks, block=256)] = True
    best_left = zs[~picked].max(axis=0)
    depth = (zs[picked] >= best_left).sum(axis=0)
    return np.minimum(n, np.ceil(1.25 * (depth + 1) * n / s)).astype(np.int64)


def bids_streamed(
    src: MatrixSource, k: int, normalize: bool = True, target: int = 1024, estimate: bool = True
) -> tuple[np.ndarray, dict[str, int]]:
    """Returns (BIDS's selection, {'scans': passes over the matrix, 'list_entries': rows the column lists held})
    reading the matrix in row blocks.

    The same sequence as `bids_iterate(normalize_columns(A)[0], k)` (or on A
    itself without `normalize`): columns z-scored with the stored statistics
    (constant columns dropped), each column a sorted prefix of its unselected
    rows (`_StreamedColumns`: at least `target` rows per column, more where
    BIDS on the store's sample reads deeper with `estimate`), and each pick's
    row read from the source's memory map by the compiled loop.
    """
    N, M = src.shape
    if normalize:
        mean, std, constant = src.column_stats()
        tf = _Transform(mean, std, np.flatnonzero(~constant))
    else:
        tf = _Transform(np.zeros(M), np.ones(M), np.arange(M))
    selected = np.zeros(N, dtype=bool)
    cols = _StreamedColumns(src, tf, selected, target, k, estimate)
    transform = (tf.kept, tf.mean, tf.std) if normalize else None
    release = lambda: src.release(over=MAPPED_BUDGET)  # noqa: E731
    out = bids_loop(cols, selected, src.array(), transform, k, release, getattr(src, "prefetch", None))
    return out, {"scans": cols.scans, "list_entries": cols.entries}
