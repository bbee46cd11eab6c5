"""Which (query, key) pairs are visible: shared by every attention kernel.

Glossary: M = Nq (query length), N = Nk (key length), L = seqlens[b] (valid length,
right padding). Row i sees key j iff
    j < min(L, N)                      (padding keys are masked)
    i < min(L, M)      when M == N     (padding queries see nothing: zero output)
    j <= i + N - M     when IS_CAUSAL  (bottom-right alignment, as FlashAttention-2)
"""

import triton
import triton.language as tl


@triton.jit
def valid_lengths(seqlens_ptr, batch, n_queries, n_keys, HAS_SEQLENS: tl.constexpr):
    """(valid_queries, valid_keys) of one batch element; negative lengths clamp to 0."""
    if HAS_SEQLENS:
        # Clamp before narrowing: an int64 length past 2^31 must not wrap negative.
        length = tl.load(seqlens_ptr + batch)
        length = tl.minimum(tl.maximum(length, 0), tl.maximum(n_queries, n_keys)).to(tl.int32)
        valid_keys = tl.minimum(length, n_keys)
        valid_queries = tl.where(n_queries == n_keys, tl.minimum(length, n_queries), n_queries)
    else:
        valid_keys = n_keys
        valid_queries = n_queries
    return valid_queries, valid_keys


@triton.jit
def visible_tile(offs_m, offs_n, n_queries, n_keys, valid_queries, valid_keys, IS_CAUSAL: tl.constexpr):
    """Bool (BLOCK_M, BLOCK_N) tile: True where row offs_m may attend to key offs_n."""
    mask = (offs_m[:, None] < valid_queries) & (offs_n[None, :] < valid_keys)
    if IS_CAUSAL:
        mask = mask & (offs_n[None, :] <= offs_m[:, None] + (n_keys - n_queries))
    return mask


@triton.jit
def visible_key_end(row_end, n_queries, n_keys, valid_keys, IS_CAUSAL: tl.constexpr):
    """One past the last key that any row below row_end may see."""
    if IS_CAUSAL:
        return tl.maximum(tl.minimum(valid_keys, row_end + (n_keys - n_queries)), 0)
    else:
        return valid_keys


@triton.jit
def visible_query_start(key_start, n_queries, n_keys, IS_CAUSAL: tl.constexpr):
    """First query row that may see any key at or after key_start."""
    if IS_CAUSAL:
        return tl.maximum(key_start - (n_keys - n_queries), 0)
    else:
        return 0


@triton.jit
def first_masked_tile(start_m, n_queries, n_keys, valid_queries, valid_keys, IS_CAUSAL: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Index of the first BLOCK_N-key tile in which some row of [start_m, start_m + BLOCK_M)
    cannot see some key: every row sees every key of the tiles before it, so those
    tiles need no mask (0 when some row of the block is padding or past n_queries)."""
    first = valid_keys // BLOCK_N
    if IS_CAUSAL:
        # Row start_m sees keys up to start_m + N - M; a tile is whole for it (and so
        # for the rows below) while its last key stays within that.
        first = tl.minimum(first, tl.maximum(start_m + (n_keys - n_queries) + 1, 0) // BLOCK_N)
    return tl.where(start_m + BLOCK_M <= valid_queries, first, 0)


@triton.jit
def heaviest_first(program, n_programs, IS_CAUSAL: tl.constexpr):
    """Row block of the program'th of n_programs query-block programs: under causal
    masking the last row block sees the most keys, so it goes first. The GPU starts
    programs in launch order, and small blocks last leave little idle at the end
    of a launch, where a large block started last runs on alone."""
    if IS_CAUSAL:
        return n_programs - 1 - program
    else:
        return program
