"""BIDS's pick loop, compiled: the iteration over per-column sorted prefixes, shared by the in-memory and the
streamed selection.

The naive loop (`bidsml.selection.bids_naive`) picks, K times, the lowest
unselected row z with the largest u(z) = max_j (Z[z, j] - r_j), then sets r to
the mean of Z over the selected rows (a float64 sum in selection order). With
each column's unselected rows kept as a sorted prefix (value desc, row asc),
max_z u(z) = max_j (top_j - r_j), and a pick costs O(M) plus the rows it skips.
The loop below runs that in machine code (numba) until it is done, a column's
prefix runs out (the caller refills it: a matrix scan), or a tie runs past the
end of a prefix (the caller settles that pick by reading the whole column).
Its arithmetic is the naive loop's, operation for operation, so the sequence is
the same bit for bit: tests compare it with `bids_naive`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
from numba import njit

DONE, REFILL, TIE_PAST_LIST = 0, 1, 2


@njit(cache=True, nogil=True, inline="always")
def z_value(x, mean, std):
    """Returns float32((float64(x) - mean) / std): the z-score's bits, as `bidsml.selection.zscore` computes them."""
    return np.float32((np.float64(x) - mean) / std)


class ColumnLists:
    """Per column, its prefix of (row, value) pairs in pick order, end to end in two flat arrays.

    Column j's list is `rows[start[j]:end[j]]` (and `vals`), `pos[j]` the
    first entry not yet passed (entries before it are selected rows). A new list
    for a column is appended at the tail; the arrays are compacted (the live
    entries only) when the tail reaches the capacity.
    """

    def __init__(self, m: int, dtype):
        self.rows = np.empty(0, dtype=np.int64)  # or int32 for lists `put` whole (fewer bytes per entry)
        self.vals = np.empty(0, dtype=dtype)
        self.start = np.zeros(m, dtype=np.int64)
        self.end = np.zeros(m, dtype=np.int64)
        self.pos = np.zeros(m, dtype=np.int64)
        self.tail = 0

    def put(self, cols: np.ndarray, rows: np.ndarray, vals: np.ndarray, bounds: np.ndarray) -> None:
        """Sets column cols[i]'s list to rows/vals[bounds[i]:bounds[i+1]] (each sorted: value desc, row asc)."""
        n = int(bounds[-1] - bounds[0])
        if len(cols) == len(self.start) and bounds[0] == 0 and len(rows) == n == len(vals):  # every list, anew
            self.rows, self.vals, self.tail = rows, vals, n
            self.start[:], self.end[:] = bounds[:-1], bounds[1:]
            self.pos[:] = self.start
            return
        if self.tail + n > len(self.rows):
            self._compact(cols, n)
        at = self.tail - int(bounds[0])
        self.rows[self.tail : self.tail + n] = rows[bounds[0] : bounds[-1]]
        self.vals[self.tail : self.tail + n] = vals[bounds[0] : bounds[-1]]
        self.start[cols] = bounds[:-1] + at
        self.end[cols] = bounds[1:] + at
        self.pos[cols] = self.start[cols]
        self.tail += n

    def _compact(self, replaced: np.ndarray, extra: int) -> None:
        keep = np.ones(len(self.start), dtype=bool)
        keep[replaced] = False
        live = np.where(keep, self.end - self.pos, 0)
        size = 2 * (int(live.sum()) + extra) + 1024
        rows, vals = np.empty(size, dtype=self.rows.dtype), np.empty(size, dtype=self.vals.dtype)
        new_start = np.zeros_like(self.start)
        new_start[1:] = np.cumsum(live)[:-1]
        _copy_live(self.rows, self.vals, self.pos, self.end, live, new_start, rows, vals)
        self.rows, self.vals = rows, vals
        self.start[:] = new_start
        self.pos[:] = new_start
        self.end[:] = new_start + live
        self.tail = int(live.sum())

    def remaining(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns column j's (rows, values) from its position on."""
        return self.rows[self.pos[j] : self.end[j]], self.vals[self.pos[j] : self.end[j]]

    def unselected_left(self, selected: np.ndarray) -> np.ndarray:
        """Returns, per column, how many entries from its position on are unselected rows."""
        return _unselected_left(self.rows, self.pos, self.end, selected)


@njit(cache=True)
def _copy_live(rows, vals, pos, end, live, new_start, out_rows, out_vals):
    for j in range(len(pos)):
        for i in range(live[j]):
            out_rows[new_start[j] + i] = rows[pos[j] + i]
            out_vals[new_start[j] + i] = vals[pos[j] + i]


@njit(cache=True)
def _unselected_left(rows, pos, end, selected):
    out = np.zeros(len(pos), dtype=np.int64)
    for j in range(len(pos)):
        for p in range(pos[j], end[j]):
            if not selected[rows[p]]:
                out[j] += 1
    return out


@njit(cache=True, nogil=True)
def set_tops(rows, vals, pos, end, cols, selected, top_row, top_val, exhausted, tops):
    """Moves each column in cols past its selected entries; sets its top row and value, or marks it exhausted.

    Every new top row is also written to the ring `tops` (tops[1:], tops[0] counting them; none when it has length
    1): the rows the loop may pick, which a prefetcher can read ahead. Returns whether a column ran out."""
    ran_out = False
    size = len(tops) - 1
    for j in cols:
        p = pos[j]
        while p < end[j] and selected[rows[p]]:
            p += 1
        pos[j] = p
        if p == end[j]:
            exhausted[j] = True
            ran_out = True
        else:
            if size > 0 and top_row[j] != rows[p]:
                tops[1 + tops[0] % size] = rows[p]
                tops[0] += 1
            top_row[j] = rows[p]
            top_val[j] = np.float64(vals[p])
    return ran_out


@njit(cache=True, nogil=True)
def take(w, step, A, kept, mean, std, zscored, selected, r_sum, r, out):
    """Records row w as pick number `step` and updates r: row w of Z added to the float64 sum, r = sum / (step + 1).

    Row w of Z is A[w, kept] z-scored as `bidsml.selection.zscore` does (float64, then float32) when `zscored`,
    else A[w] itself."""
    out[step] = w
    selected[w] = True
    for jj in range(len(kept)):
        x = A[w, kept[jj]]
        if zscored:
            r_sum[jj] += np.float64(z_value(x, mean[jj], std[jj]))
        else:
            r_sum[jj] += np.float64(x)
    for jj in range(len(kept)):
        r[jj] = r_sum[jj] / (step + 1)


@njit(cache=True, nogil=True)
def advance(w, rows, vals, pos, end, selected, top_row, top_val, exhausted, tops):
    """Moves every column whose top was row w to its next unselected entry; returns whether one ran out."""
    ran_out = False
    col = np.empty(1, dtype=np.int64)
    for j in range(len(top_row)):
        if top_row[j] == w:
            col[0] = j
            ran_out |= set_tops(rows, vals, pos, end, col, selected, top_row, top_val, exhausted, tops)
    return ran_out


@njit(cache=True, nogil=True)
def picks(step, k, rows, vals, pos, end, top_row, top_val, selected, r_sum, r, out, A, kept, mean, std, zscored,
          exhausted, tie_col, tops):
    """Runs picks `step`.. until K are made (DONE), a list runs out (REFILL, after that pick) or a tie runs past the
    end of a list (TIE_PAST_LIST, before that pick; the column in tie_col[0]). Returns (picks made, status)."""
    m = len(top_val)
    while step < k:
        best = -np.inf
        for j in range(m):
            d = top_val[j] - r[j]
            if d > best:
                best = d
        w = -1
        for j in range(m):
            if top_val[j] - r[j] == best:
                # the lowest unselected row of column j whose rounded difference ties the best
                low = -1
                p = pos[j]
                past = True
                while p < end[j]:
                    z = rows[p]
                    if not selected[z]:
                        if np.float64(vals[p]) - r[j] != best:
                            past = False
                            break
                        if low < 0 or z < low:
                            low = z
                    p += 1
                if past:
                    tie_col[0] = j
                    return step, TIE_PAST_LIST
                if w < 0 or low < w:
                    w = low
        take(w, step, A, kept, mean, std, zscored, selected, r_sum, r, out)
        step += 1
        if advance(w, rows, vals, pos, end, selected, top_row, top_val, exhausted, tops):
            return step, REFILL
    return step, DONE


def lowest_tied_row(rows: np.ndarray, vals: np.ndarray, selected: np.ndarray, r_j: float, best: float, column) -> int:
    """Returns the lowest unselected row z with Z[z, j] - r_j == best (rounded as the naive loop does), given the
    column's list from its position on (sorted: value desc, row asc); `column()` returns the whole column, read
    only when the ties may run past the list's end (None: the list holds every unselected row of it)."""
    unselected = ~selected[rows]
    tied = (vals.astype(np.float64) - r_j == best) & unselected
    if column is None or not tied[np.flatnonzero(unselected)[-1]]:
        return int(rows[tied].min())  # the ties end within the list
    col = np.asarray(column(), dtype=np.float64)
    return int(np.flatnonzero((col - r_j == best) & ~selected)[0])


RELEASE_EVERY = 1024  # picks between calls of bids_loop's `release` (which may drop mapped pages)


def bids_loop(
    cols,
    selected: np.ndarray,
    A: np.ndarray,
    transform: tuple | None,
    k: int,
    release: Callable[[], None] | None = None,
    prefetch=None,
) -> np.ndarray:
    """Returns K rows picked by BIDS's iteration over per-column sorted prefixes of the unselected rows.

    `cols` holds the prefixes (`lists`: a ColumnLists; `top_row`, `top_val`;
    `refill(columns, step, k)` for lists that ran out; `tie_past_list(j, step,
    k)`, which may extend a list whose ties ran past its end, else
    `lowest_tied_row(j, r_j, best)` settles the pick), `selected` the mask they read, `A` the matrix
    rows are read from and `transform` (kept columns, mean, std) z-scores them,
    or None when A is Z itself. `release()` is called every RELEASE_EVERY
    picks (a memory-mapped A lets go of the pages of the rows read);
    `prefetch(tops)`, a context manager, runs beside the compiled loop reading
    ahead the rows written to `cols.tops` (every row that becomes a column's
    top: each is picked or still a top at the end, so at most K + M reads).
    """
    m = len(cols.top_val)
    if transform is None:
        kept, mean, std, zscored = np.arange(m, dtype=np.int64), np.zeros(m), np.ones(m), False
    else:
        kept, mean, std = transform
        kept, zscored = np.asarray(kept, dtype=np.int64), True
    mean, std = np.ascontiguousarray(mean, dtype=np.float64), np.ascontiguousarray(std, dtype=np.float64)
    r, r_sum = np.zeros(m), np.zeros(m)
    out = np.empty(k, dtype=np.int64)
    exhausted, tie_col = np.zeros(m, dtype=bool), np.zeros(1, dtype=np.int64)
    with prefetch(cols.tops) if prefetch is not None else contextlib.nullcontext():
        _run(cols, selected, A, kept, mean, std, zscored, k, release, r, r_sum, out, exhausted, tie_col)
    return out


def _run(cols, selected, A, kept, mean, std, zscored, k, release, r, r_sum, out, exhausted, tie_col) -> None:
    """bids_loop's picks: the compiled loop, and between its runs the refills, ties and releases it hands back."""
    step = 0
    while step < k:
        L = cols.lists
        stop = min(k, (step // RELEASE_EVERY + 1) * RELEASE_EVERY)
        step, status = picks(step, stop, L.rows, L.vals, L.pos, L.end, cols.top_row, cols.top_val, selected,
                             r_sum, r, out, A, kept, mean, std, zscored, exhausted, tie_col, cols.tops)
        if release is not None and step == stop:
            release()
        if status == TIE_PAST_LIST:
            if cols.tie_past_list(int(tie_col[0]), step, k):
                continue  # the list was extended: pick again
            # this pick by the slow path: per tied column, its lowest tied row (the whole column where needed)
            diff = cols.top_val - r
            best = diff.max()
            w = min(cols.lowest_tied_row(int(j), r[j], best) for j in np.flatnonzero(diff == best))
            take(w, step, A, kept, mean, std, zscored, selected, r_sum, r, out)
            step += 1
            if not advance(w, L.rows, L.vals, L.pos, L.end, selected, cols.top_row, cols.top_val, exhausted, cols.tops):
                continue
        if exhausted.any() and step < k:
            cols.refill(np.flatnonzero(exhausted), step, k)
            exhausted[:] = False
