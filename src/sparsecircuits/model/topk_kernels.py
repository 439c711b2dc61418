"""Exact top-k along the rows of a matrix on CPU, compiled with Numba.

Each row's k-th largest value is found without sorting: float bits map to unsigned integers of
the same order (the keys: float32 for `topk_rows`, float32, bfloat16 or float16 magnitudes for
AbsTopK), and a candidate threshold is tested by counting, in one vectorised pass
over the row in L1 cache, the keys at or above it. The search stops as soon as exactly k keys are,
which any threshold between the k-th and the (k+1)-th largest gives. The first row of a matrix is
searched bit by bit from the top (14-17 counts on rows of 256-1,024 normal values); each later row
starts from the previous row's threshold and takes secant steps on the count (5-6 counts), since
the rows of one activation have similar distributions. Entries tied at the k-th value are kept
from the lowest index, so every row keeps exactly k.

`abs_topk_rows` is AbsTopK's forward in the same pass: it ranks by magnitude (no `abs` tensor) and
writes the kept values and a one-byte mask of them (no separate multiply); `bias_abs_topk_rows`
does the same in place on a matmul's output after adding the layer's bias; `masked_rows` is the
backward, the gradient copied through that mask (with the bias gradient's column sums in the same
pass for the fused linear layer).
Rows are independent, so the entry points split a large matrix into blocks of rows, one per thread
of PyTorch's own OpenMP pool (threads of our own were measured slower: PyTorch's workers spin on the
other cores between its operations); each row's result is the same whichever thread computes it.
"""

from __future__ import annotations

import ctypes
import functools
import os

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

SIGN = np.uint32(0x80000000)


@numba.njit(nogil=True, cache=True, inline="always")
def _order_key(bits: np.uint32) -> np.uint32:
    """An unsigned integer ordered as the float32 with these bits; -0 and +0 tie."""
    return ~bits if bits & SIGN and bits != SIGN else bits | SIGN


@numba.njit(nogil=True, cache=True, inline="always")
def _count_at_least(key: np.ndarray, candidate: np.int64) -> np.int64:
    count = np.uint32(0)
    c = np.uint32(candidate)
    for j in range(key.shape[0]):
        count = np.uint32(count + np.uint32(key[j] >= c))  # kept 32-bit: 8 lanes per vector, not 4
    return np.int64(count)


@numba.njit(nogil=True, cache=True)
def _bitwise_threshold(key: np.ndarray, k: int, top_bit: int) -> tuple[np.int64, bool]:
    """(t, exact): the largest t with at least k keys >= t, fixed one bit at a time from the top;
    exact when exactly k are (no tie to break), which stops the search early."""
    t = np.int64(0)
    for bit in range(top_bit, -1, -1):
        candidate = t | np.int64(1 << bit)
        count = _count_at_least(key, candidate)
        if count >= k:
            t = candidate
            if count == k:
                return t, True
    return t, False


@numba.njit(nogil=True, cache=True)
def _threshold_near(key: np.ndarray, k: int, top: np.int64, guess: np.int64,
                    slope: float) -> tuple[np.int64, bool, float]:
    """`_bitwise_threshold` started from a guess (the previous row's threshold): secant steps on the
    count (slope: keys per counted entry, carried from row to row), bisection of the bracket if
    they have not converged after a few counts. Returns (t, exact, slope)."""
    lo, count_lo, hi = np.int64(0), np.int64(key.shape[0]), top + 1  # count(lo) >= k > count(hi)
    c = min(max(guess, lo + 1), hi - 1)
    last_c, last_count = np.int64(-1), np.int64(-1)
    counts = 0
    while hi - lo > 1:
        count = _count_at_least(key, c)
        counts += 1
        if count == k:
            return c, True, slope
        if count > k:
            lo, count_lo = c, count
        else:
            hi = c
        if last_count >= 0 and last_count != count:
            slope = max(1.0, abs(c - last_c) / abs(last_count - count))
        last_c, last_count = c, count
        if counts >= 6:
            c = lo + (hi - lo) // 2
            continue
        step = c + np.int64((count - k) * slope)
        if step <= lo or step >= hi:  # stepped out of the bracket: halfway to its edge instead
            step = (c + (lo if step <= lo else hi)) // 2
        c = min(max(step, lo + 1), hi - 1)
    return lo, count_lo == k, slope


@numba.njit(nogil=True, cache=True, inline="always")
def _row_keys(bits: np.ndarray, key: np.ndarray) -> np.int64:
    """key = the order keys of one row of float32 bits; returns the largest."""
    top = np.uint32(0)
    for j in range(bits.shape[0]):
        key[j] = _order_key(bits[j])
        top = max(top, key[j])
    return np.int64(top)


@numba.njit(nogil=True, cache=True, inline="always")
def _row_threshold(key: np.ndarray, k: int, top: np.int64, top_bit: int, guess: np.int64,
                   slope: float) -> tuple[np.int64, bool, float]:
    """The k-th largest key of a row (and whether exactly k reach it): from the previous row's
    threshold when there is one (guess >= 0), else bit by bit."""
    if guess >= 0:
        return _threshold_near(key, k, top, guess, slope)
    t, exact = _bitwise_threshold(key, k, top_bit)
    return t, exact, max(1.0, (top - t) / k)


@numba.njit(nogil=True, cache=True, inline="always")
def _keep_ties(key: np.ndarray, t: np.int64, k: int, keep: np.ndarray) -> None:
    """keep[j] = 1 for exactly the k largest keys when more than k reach t: ties at t are kept
    from the lowest index."""
    t32 = np.uint32(t)
    above = np.uint32(0)
    for j in range(key.shape[0]):
        above = np.uint32(above + np.uint32(key[j] > t32))
    missing = k - np.int64(above)
    for j in range(key.shape[0]):
        kept = key[j] > t32
        if key[j] == t32 and missing > 0:
            kept = True
            missing -= 1
        keep[j] = kept


@numba.njit(nogil=True, cache=True, inline="always")
def _select_row(key: np.ndarray, top: np.int64, k: int, top_bit: int, guess: np.int64, slope: float,
                keep: np.ndarray) -> tuple[np.int64, float]:
    """keep[j] = 1 at the k largest keys of a row (largest: `top`); returns (threshold, slope) for
    the next row's search."""
    t, exact, slope = _row_threshold(key, k, top, top_bit, guess, slope)
    if exact:
        t32 = np.uint32(t)  # compared at the keys' width (a 64-bit compare halves the lanes)
        for j in range(key.shape[0]):
            keep[j] = key[j] >= t32
    else:
        _keep_ties(key, t, k, keep)
    return t, slope


@numba.njit(nogil=True, cache=True)
def _topk_rows(bits: np.ndarray, keep: np.ndarray, k: int, guess: np.int64 = -1) -> np.int64:
    """keep (bool or float32, like bits) = 1 at the k largest float32s of each row, given as their
    bits. The search of the first row starts from `guess` (an order key, -1: none); returns the
    last row's threshold."""
    key = np.empty(bits.shape[1], np.uint32)
    guess, slope = np.int64(guess), 1.0
    for r in range(bits.shape[0]):
        guess, slope = _select_row(key, _row_keys(bits[r], key), k, 31, guess, slope, keep[r])
    return guess


_INFINITY_BITS = np.uint32(0x7F800000)


_COLUMN_NETWORK_MAX = 16  # larger per-column counts go through a transposed copy


@numba.njit(nogil=True, cache=True)
def _protect_column_tops(magnitude: np.ndarray, protected: np.ndarray, j: int) -> None:
    """protected |= the j largest magnitudes of every column (ties from the lowest row), in row
    order without a transposed copy: each column's j largest so far are kept sorted, and every row
    is merged in by a max/min step per place (vectorised across the columns)."""
    rows, cols = magnitude.shape
    top = np.zeros((j, cols), np.uint32)  # descending; rows >= j, so the zeros are all replaced or tie
    for r in range(rows):
        for i in range(j - 1, 0, -1):
            for c in range(cols):
                top[i, c] = max(top[i, c], min(top[i - 1, c], magnitude[r, c]))
        for c in range(cols):
            top[0, c] = max(top[0, c], magnitude[r, c])
    ties_left = np.full(cols, j, np.int64)  # per column: j minus the tops above its j-th
    for i in range(j):
        for c in range(cols):
            ties_left[c] -= top[i, c] > top[j - 1, c]
    for r in range(rows):
        for c in range(cols):
            tied = magnitude[r, c] == top[j - 1, c] and ties_left[c] > 0
            ties_left[c] -= tied
            protected[r, c] |= magnitude[r, c] > top[j - 1, c] or tied


@numba.njit(nogil=True, cache=True)
def weight_keep_mask(bits: np.ndarray, keep: np.ndarray, k: int, per_row: int, per_column: int,
                     guess: np.int64) -> np.int64:
    """keep (bool, like bits) = the weight top-k of one matrix, given as its float32 bits: the
    `per_row` largest magnitudes of every row and the `per_column` largest of every column are
    protected; if they are fewer than k, the rest of the k are the largest other magnitudes (ties
    from the lowest flat index). `guess`: the search's starting threshold (the previous step's,
    which the weights have barely moved from; -1: none); returns this one's."""
    rows, cols = bits.shape
    magnitude = np.empty((rows, cols), np.uint32)  # |w| as bits: their order is the magnitudes'
    for r in range(rows):
        for c in range(cols):
            magnitude[r, c] = bits[r, c] & np.uint32(0x7FFFFFFF)
    protected = np.zeros((rows, cols), np.bool_)
    if per_row > 0:
        _topk_rows(magnitude, protected, min(per_row, cols))
    if 0 < per_column <= _COLUMN_NETWORK_MAX:
        _protect_column_tops(magnitude, protected, min(per_column, rows))
    elif per_column > 0:
        by_column = np.empty((cols, rows), np.bool_)
        _topk_rows(np.ascontiguousarray(magnitude.T), by_column, min(per_column, rows))
        protected |= by_column.T
    if protected.sum() >= k:
        keep[:] = protected
        return guess
    for r in range(rows):
        for c in range(cols):
            if protected[r, c]:
                magnitude[r, c] = _INFINITY_BITS
    return _topk_rows(magnitude.reshape(1, rows * cols), keep.reshape(1, rows * cols), k, guess)


@numba.njit(nogil=True, cache=True, inline="always")
def _abs_topk_row(bits: np.ndarray, out: np.ndarray, keep: np.ndarray, key: np.ndarray, k: int, sign_bit: int,
                  guess: np.int64, slope: float) -> tuple[np.int64, float]:
    magnitude = np.uint32((1 << sign_bit) - 1)
    top = np.uint32(0)
    for j in range(bits.shape[0]):
        key[j] = np.uint32(bits[j]) & magnitude
        top = max(top, key[j])
    guess, slope = _select_row(key, np.int64(top), k, sign_bit - 1, guess, slope, keep)
    for j in range(bits.shape[0]):
        out[j] = bits[j] if keep[j] else 0
    return guess, slope


@numba.njit(nogil=True, cache=True)
def _abs_topk_rows(bits: np.ndarray, out: np.ndarray, keep: np.ndarray, k: int, sign_bit: int) -> None:
    """out = x at the k entries of largest magnitude of each row of x, 0 elsewhere; keep (bool) = 1
    there. x and out are given as their bits (float32 as uint32, bfloat16 and float16 as uint16,
    sign at `sign_bit`): the magnitude order is the order of the bits below the sign, and a kept
    value is copied as is."""
    key = np.empty(bits.shape[1], np.uint32)
    guess, slope = np.int64(-1), 1.0
    for r in range(bits.shape[0]):
        guess, slope = _abs_topk_row(bits[r], out[r], keep[r], key, k, sign_bit, guess, slope)


@numba.njit(nogil=True, cache=True)
def _abs_topk_rows_in_place(bits: np.ndarray, keep: np.ndarray, k: int, sign_bit: int) -> None:
    """`_abs_topk_rows` with out = x (one array, so that the copy stays vectorised)."""
    key = np.empty(bits.shape[1], np.uint32)
    guess, slope = np.int64(-1), 1.0
    for r in range(bits.shape[0]):
        row = bits[r]
        guess, slope = _abs_topk_row(row, row, keep[r], key, k, sign_bit, guess, slope)


@numba.njit(nogil=True, cache=True)
def _bias_abs_topk_rows(y: np.ndarray, bias: np.ndarray, keep: np.ndarray, k: int) -> None:
    """In place on float32 y (a matmul's output): y + bias, then AbsTopK of each row as
    `_abs_topk_rows` (keep = 1 at the kept entries). An empty bias adds nothing."""
    bits = y.view(np.uint32)
    key = np.empty(y.shape[1], np.uint32)
    guess, slope = np.int64(-1), 1.0
    for r in range(y.shape[0]):
        if bias.shape[0]:
            for j in range(y.shape[1]):
                y[r, j] += bias[j]
        row = bits[r]
        guess, slope = _abs_topk_row(row, row, keep[r], key, k, 31, guess, slope)


_SUM_BLOCK = 64  # rows summed in float32 before the float64 total: 8 lanes per vector, not 4


@numba.njit(nogil=True, cache=True)
def _masked_rows(grad: np.ndarray, keep: np.ndarray, grad_in: np.ndarray, column_sums: np.ndarray) -> None:
    """grad_in = grad where keep, 0 elsewhere: AbsTopK's backward (grad and grad_in as bits, or
    float32). A nonempty `column_sums` (float64, one per column) also accumulates grad_in's columns,
    blocks of rows in float32 and their sums in float64: the gradient of a bias added before the
    AbsTopK, in the same pass."""
    block = np.zeros(column_sums.shape[0], np.float32)
    for r in range(grad.shape[0]):
        for j in range(grad.shape[1]):
            grad_in[r, j] = grad[r, j] if keep[r, j] else 0
        if column_sums.shape[0]:
            for j in range(grad.shape[1]):
                block[j] += grad_in[r, j]
            if (r + 1) % _SUM_BLOCK == 0 or r + 1 == grad.shape[0]:
                for j in range(grad.shape[1]):
                    column_sums[j] += block[j]
                    block[j] = 0


# Running a kernel on PyTorch's own OpenMP threads. Between its parallel operations PyTorch's OpenMP
# workers spin on the other cores, so a thread of ours there competes with a spinning worker; a
# parallel region of the same OpenMP runtime (GOMP_parallel, what `#pragma omp parallel` compiles
# to) hands each waiting worker a block of rows at once. The callback is a Numba C function; it
# reads its arrays (up to three of one shape, split by rows, and an auxiliary one it reads whole) and
# the runtime's thread functions from a job of int64s:
_JOB_THREAD_FN, _JOB_THREADS_FN, _JOB_ROWS, _JOB_COLS, _JOB_K, _JOB_EXTRA, _JOB_AUX, _JOB_ARRAYS = range(8)
_JOB_LEN = _JOB_ARRAYS + 3
_PARALLEL_MIN_ENTRIES = 1 << 15  # smaller matrices run on the calling thread


@intrinsic
def _pointer(typingctx, address):
    """An int64 address as the void pointer `numba.carray` views memory from."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)
    return types.voidptr(types.int64), codegen


@intrinsic
def _call_int_function(typingctx, address):
    """The result of the C function `int f(void)` at an int64 address."""
    def codegen(context, builder, signature, args):
        function = builder.inttoptr(args[0], ir.FunctionType(ir.IntType(32), []).as_pointer())
        return builder.sext(builder.call(function, []), ir.IntType(64))
    return types.int64(types.int64), codegen


@numba.njit(nogil=True, cache=True, inline="always")
def _job_rows(job: np.ndarray) -> tuple[int, int]:
    """This OpenMP thread's block of rows: [start, stop)."""
    thread, threads = _call_int_function(job[_JOB_THREAD_FN]), _call_int_function(job[_JOB_THREADS_FN])
    return job[_JOB_ROWS] * thread // threads, job[_JOB_ROWS] * (thread + 1) // threads


@numba.njit(nogil=True, cache=True, inline="always")
def _job_array(job: np.ndarray, i: int, dtype) -> np.ndarray:
    return numba.carray(_pointer(job[_JOB_ARRAYS + i]), (job[_JOB_ROWS], job[_JOB_COLS]), dtype)


@numba.cfunc(types.void(types.voidptr), nogil=True, cache=True)
def _topk_rows_block(data):
    job = numba.carray(data, _JOB_LEN, np.int64)
    start, stop = _job_rows(job)
    bits = _job_array(job, 0, np.uint32)[start:stop]
    if job[_JOB_EXTRA]:  # keep is float32
        _topk_rows(bits, _job_array(job, 1, np.float32)[start:stop], job[_JOB_K])
    else:
        _topk_rows(bits, _job_array(job, 1, np.bool_)[start:stop], job[_JOB_K])


@numba.njit(nogil=True, cache=True, inline="always")
def _abs_topk_job(job: np.ndarray, start: int, stop: int, bits_dtype, sign_bit: int) -> None:
    bits, keep = _job_array(job, 0, bits_dtype)[start:stop], _job_array(job, 2, np.bool_)[start:stop]
    if job[_JOB_ARRAYS] == job[_JOB_ARRAYS + 1]:  # out is x
        _abs_topk_rows_in_place(bits, keep, job[_JOB_K], sign_bit)
    else:
        _abs_topk_rows(bits, _job_array(job, 1, bits_dtype)[start:stop], keep, job[_JOB_K], sign_bit)


@numba.cfunc(types.void(types.voidptr), nogil=True, cache=True)
def _abs_topk_rows_block(data):
    job = numba.carray(data, _JOB_LEN, np.int64)
    start, stop = _job_rows(job)
    if job[_JOB_EXTRA] == 31:  # the sign bit: float32 bits, else 16-bit floats'
        _abs_topk_job(job, start, stop, np.uint32, 31)
    else:
        _abs_topk_job(job, start, stop, np.uint16, job[_JOB_EXTRA])


@numba.cfunc(types.void(types.voidptr), nogil=True, cache=True)
def _bias_abs_topk_rows_block(data):
    job = numba.carray(data, _JOB_LEN, np.int64)
    start, stop = _job_rows(job)
    bias = numba.carray(_pointer(job[_JOB_AUX]), (job[_JOB_EXTRA],), np.float32)  # extra: its length
    _bias_abs_topk_rows(_job_array(job, 0, np.float32)[start:stop], bias, _job_array(job, 1, np.bool_)[start:stop],
                        job[_JOB_K])


# The masked copy's extra entry: the arrays' element type.
_MASK_BITS16, _MASK_BITS32, _MASK_FLOAT32_COLUMN_SUMS = range(3)


@numba.cfunc(types.void(types.voidptr), nogil=True, cache=True)
def _masked_rows_block(data):
    job = numba.carray(data, _JOB_LEN, np.int64)
    start, stop = _job_rows(job)
    keep = _job_array(job, 1, np.bool_)[start:stop]
    if job[_JOB_EXTRA] == _MASK_FLOAT32_COLUMN_SUMS:  # aux: one row of column sums per thread
        thread, threads = _call_int_function(job[_JOB_THREAD_FN]), _call_int_function(job[_JOB_THREADS_FN])
        sums = numba.carray(_pointer(job[_JOB_AUX]), (threads, job[_JOB_COLS]), np.float64)[thread]
        _masked_rows(_job_array(job, 0, np.float32)[start:stop], keep, _job_array(job, 2, np.float32)[start:stop], sums)
    elif job[_JOB_EXTRA] == _MASK_BITS32:
        _masked_rows(_job_array(job, 0, np.uint32)[start:stop], keep, _job_array(job, 2, np.uint32)[start:stop],
                     np.empty(0, np.float64))
    else:
        _masked_rows(_job_array(job, 0, np.uint16)[start:stop], keep, _job_array(job, 2, np.uint16)[start:stop],
                     np.empty(0, np.float64))


@functools.cache
def _openmp_runtime():
    """(GOMP_parallel, addresses of omp_get_thread_num and omp_get_num_threads) of the OpenMP
    runtime PyTorch's ATen runs on, or None where ATen does not use OpenMP or its runtime's
    symbols are not visible (the kernels then run on the calling thread)."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info() or os.name != "posix":
        return None
    process = ctypes.CDLL(None)  # torch loads its OpenMP runtime with global symbols
    try:
        parallel = process.GOMP_parallel
        thread_fn, threads_fn = process.omp_get_thread_num, process.omp_get_num_threads
    except AttributeError:
        return None
    parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    parallel.restype = None
    as_address = lambda f: ctypes.cast(f, ctypes.c_void_p).value  # noqa: E731
    return parallel, as_address(thread_fn), as_address(threads_fn)


def _run_on_threads(block, arrays: tuple[np.ndarray, ...], k: int, extra: int, aux: int = 0) -> bool:
    """Run the C callback `block` over the rows of `arrays` (2-D, C-contiguous, one shape) on
    PyTorch's OpenMP threads, with `aux` the address of an auxiliary array; False, having run
    nothing, where that does not apply."""
    threads = torch.get_num_threads()
    rows, cols = arrays[0].shape
    runtime = _openmp_runtime()
    if (threads < 2 or rows < 2 * threads or rows * cols < _PARALLEL_MIN_ENTRIES or runtime is None
            or not all(a.flags.c_contiguous and a.shape == (rows, cols) for a in arrays)):
        return False
    parallel, thread_fn, threads_fn = runtime
    job = np.zeros(_JOB_LEN, np.int64)
    job[:_JOB_ARRAYS] = thread_fn, threads_fn, rows, cols, k, extra, aux
    job[_JOB_ARRAYS:_JOB_ARRAYS + len(arrays)] = [a.ctypes.data for a in arrays]
    parallel(block.address, job.ctypes.data, threads, 0)  # ctypes releases the GIL for the call
    return True


def topk_rows(bits: np.ndarray, keep: np.ndarray, k: int) -> None:
    """keep (bool or float32, like bits) = 1 at the k largest float32s of each row, given as their bits."""
    if not _run_on_threads(_topk_rows_block, (bits, keep), k, keep.dtype == np.float32):
        _topk_rows(bits, keep, k)


def abs_topk_rows(bits: np.ndarray, out: np.ndarray, keep: np.ndarray, k: int, sign_bit: int) -> None:
    """out = x at the k entries of largest magnitude of each row of x, 0 elsewhere, keep = 1 there,
    as bits (see `_abs_topk_rows`); out may be x's own array (in place)."""
    if _run_on_threads(_abs_topk_rows_block, (bits, out, keep), k, sign_bit):
        return
    if out.ctypes.data == bits.ctypes.data:
        _abs_topk_rows_in_place(bits, keep, k, sign_bit)
    else:
        _abs_topk_rows(bits, out, keep, k, sign_bit)


def bias_abs_topk_rows(y: np.ndarray, bias: np.ndarray | None, keep: np.ndarray, k: int) -> None:
    """In place on float32 y: y + bias (None: no bias), then AbsTopK of each row; keep = 1 at the kept entries."""
    bias = np.empty(0, np.float32) if bias is None else np.ascontiguousarray(bias, np.float32)
    if not _run_on_threads(_bias_abs_topk_rows_block, (y, keep), k, bias.shape[0], bias.ctypes.data):
        _bias_abs_topk_rows(y, bias, keep, k)


def masked_rows(grad: np.ndarray, keep: np.ndarray, grad_in: np.ndarray) -> None:
    """grad_in = grad where keep, 0 elsewhere (grad and grad_in as 16- or 32-bit unsigned bits)."""
    width = _MASK_BITS32 if grad.dtype == np.uint32 else _MASK_BITS16
    if not _run_on_threads(_masked_rows_block, (grad, keep, grad_in), 0, width):
        _masked_rows(grad, keep, grad_in, np.empty(0, np.float64))


def masked_rows_with_column_sums(grad: np.ndarray, keep: np.ndarray, grad_in: np.ndarray) -> np.ndarray:
    """grad_in = grad where keep, 0 elsewhere (float32), and the sums of grad_in's columns (float64)."""
    sums = np.zeros((torch.get_num_threads(), grad.shape[1]), np.float64)  # a row per thread at most
    if not _run_on_threads(_masked_rows_block, (grad, keep, grad_in), 0, _MASK_FLOAT32_COLUMN_SUMS, sums.ctypes.data):
        _masked_rows(grad, keep, grad_in, sums[0])
    return sums.sum(0)
