"""Integer entropy-coding tables and range coding of quantized latents (with `constriction`'s range coder).

A codec's tables are computed once per model version and then shipped, never recomputed by a decoder, so that the
encoder and every decoder code with exactly the same integers:

- a factorized density (the factorized prior's latents, the hyperprior's hyper-latents) becomes one table per
  channel, over the integers where all but `TAIL_MASS` of its mass lies;
- the hyperprior's Gaussians become one table per entry of a quantized scale table (`SCALE_TABLE`, log-spaced like
  tensorflow-compression's and CompressAI's); each latent is coded with the first entry at least its predicted scale.

A table is a probability mass function in integers summing to 2**PRECISION, each value >= 1, whose last symbol is
an escape: a value outside the table's range is coded as the escape and its value written in the overflow bytes
(zigzag varints). The tables are plain numpy arrays (`tables_arrays`), so a decoder needs numpy and constriction
only: see docs/codec.md's reference decoder.
"""

import numpy as np

#: Bits of the integer probabilities: every table sums to 2**24, constriction's own precision, so its coder uses
#: the tables' integers as they are. (16 bits, CompressAI's, would spend 5% of a 256-scale table's mass on the
#: floor of 1 per symbol: 0.07 bits per latent at that scale.)
PRECISION = 24
#: Mass left outside a table's range (to the escape symbol).
TAIL_MASS = 1e-9
#: The quantized scales of the hyperprior's Gaussians: 128 log-spaced values from the scale bound 0.11 to 256 (a
#: ratio of 1.063 between neighbours). Under 64 (tensorflow-compression's and CompressAI's) the latents of a partly
#: trained hyperprior cost 0.6-1.5% more bits than the model's own estimate, under 128 0.05-0.6% (three test
#: photographs).
SCALE_TABLE = np.exp(np.linspace(np.log(0.11), np.log(256.0), 128))
#: The widest range searched for a factorized density's support: values in [-GRID, GRID].
GRID = 2048


def quantize_pmf(pmf):
    """Float bin masses (length n, summing to at most 1) -> n + 1 integers >= 1 summing to 2**PRECISION, the last
    the escape symbol's (the mass outside): 1 each, then the rest shared in proportion to the masses, rounding
    down, and the units left over going to the largest remainders (deterministic: ties by position)."""
    pmf = np.asarray(pmf, np.float64)
    if pmf.ndim != 1 or not np.all(np.isfinite(pmf)) or np.any(pmf < 0):
        raise ValueError("pmf must be a 1-D array of finite, non-negative masses")
    masses = np.append(pmf, max(0.0, 1.0 - pmf.sum()))
    free = (1 << PRECISION) - len(masses)
    if free < 0:
        raise ValueError(f"a table of {len(masses)} symbols does not fit {PRECISION}-bit probabilities")
    scaled = masses / masses.sum() * free
    counts = np.floor(scaled).astype(np.int64)
    leftover = free - int(counts.sum())
    counts[np.argsort(-(scaled - counts), kind="stable")[:leftover]] += 1
    return (counts + 1).astype(np.int32)


def _pack(rows, offsets):
    """Ragged integer tables -> (pmfs [T, Lmax] zero-padded, lengths [T], offsets [T])."""
    lengths = np.array([len(r) for r in rows], np.int32)
    pmfs = np.zeros((len(rows), int(lengths.max())), np.int32)
    for i, row in enumerate(rows):
        pmfs[i, :len(row)] = row
    return {"pmfs": pmfs, "lengths": lengths, "offsets": np.asarray(offsets, np.int32)}


def factorized_tables(density, channels):
    """Per-channel tables of a `FactorizedDensity`: the integers between its TAIL_MASS / 2 quantiles."""
    import tensorflow as tf

    from kerasae.codec.layers import _bin_mass

    grid = np.arange(-GRID, GRID + 1, dtype=np.float32)
    values = np.repeat(grid[:, None], channels, axis=1)
    cdf = tf.sigmoid(density.cdf_logits(values + 0.5)).numpy().astype(np.float64)  # P(Y <= v + 1/2)
    mass = _bin_mass(density.cdf_logits(values - 0.5), density.cdf_logits(values + 0.5)).numpy()
    rows, offsets = [], []
    for c in range(channels):
        lo = int(np.searchsorted(cdf[:, c], TAIL_MASS / 2))  # first v whose bin reaches past the lower tail
        hi = int(np.searchsorted(cdf[:, c], 1.0 - TAIL_MASS / 2))
        lo, hi = min(lo, len(grid) - 1), max(min(hi, len(grid) - 1), min(lo, len(grid) - 1))
        rows.append(quantize_pmf(mass[lo:hi + 1, c]))
        offsets.append(int(grid[lo]))
    return _pack(rows, offsets)


def gaussian_tables(scale_table=SCALE_TABLE):
    """One table per scale s of N(0, s^2)'s unit bins, over |v| <= ceil(s * z) with z the TAIL_MASS / 2 quantile."""
    from scipy.special import ndtr, ndtri  # noqa: PLC0415 (tables are built at export time)

    z = -ndtri(TAIL_MASS / 2)
    rows, offsets = [], []
    for s in np.asarray(scale_table, np.float64):
        half = int(np.ceil(s * z))
        v = np.arange(-half, half + 1, dtype=np.float64)
        upper, lower = ndtr((0.5 - np.abs(v)) / s), ndtr((-0.5 - np.abs(v)) / s)  # lower tail: precise
        rows.append(quantize_pmf(upper - lower))
        offsets.append(-half)
    tables = _pack(rows, offsets)
    tables["scales"] = np.asarray(scale_table, np.float64)
    return tables


def scale_indices(scales, table_scales):
    """Index of the first table scale >= each predicted scale (the last for larger ones)."""
    indices = np.searchsorted(np.asarray(table_scales, np.float64), np.asarray(scales, np.float64), side="left")
    return np.minimum(indices, len(table_scales) - 1).astype(np.int32)


# ---- range coding ------------------------------------------------------------------------------------------------

def _models(tables):
    import constriction

    return [constriction.stream.model.Categorical(tables["pmfs"][t, :n].astype(np.float64), perfect=False)
            for t, n in enumerate(tables["lengths"])]


def _zigzag_varints(values):
    out = bytearray()
    for v in values:
        u = (int(v) << 1) ^ (int(v) >> 63)
        while u >= 0x80:
            out.append((u & 0x7F) | 0x80)
            u >>= 7
        out.append(u)
    return bytes(out)


def _read_varints(data, count):
    values, pos = [], 0
    for _ in range(count):
        u = shift = 0
        while True:
            if pos >= len(data):
                raise ValueError("the overflow bytes end early")
            byte = data[pos]
            pos += 1
            u |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
            if shift > 63:
                raise ValueError("an overflow value is longer than 64 bits")
        values.append((u >> 1) ^ -(u & 1))
    if pos != len(data):
        raise ValueError("the overflow bytes hold more than the escapes ask for")
    return values


def encode(values, table_index, tables):
    """Range-code integers `values` (any shape), each with table `table_index` (same shape): -> (stream bytes,
    overflow bytes). Symbols are coded table by table in the array's order, so the decoder, knowing the indices,
    decodes each table's run of symbols in turn."""
    import constriction

    values = np.asarray(values, np.int64)
    table_index = np.broadcast_to(np.asarray(table_index, np.int32), values.shape).ravel()
    values = values.ravel()
    encoder = constriction.stream.queue.RangeEncoder()
    overflow = []
    for t, model in enumerate(_models(tables)):
        picked = values[table_index == t]
        if not len(picked):
            continue
        escape = int(tables["lengths"][t]) - 1
        symbols = picked - int(tables["offsets"][t])
        outside = (symbols < 0) | (symbols >= escape)
        overflow.extend(picked[outside].tolist())
        encoder.encode(np.where(outside, escape, symbols).astype(np.int32), model)
    return encoder.get_compressed().astype("<u4").tobytes(), _zigzag_varints(overflow)


def decode(stream, overflow, table_index, tables):
    """The integers `encode` coded, in `table_index`'s shape."""
    import constriction

    if len(stream) % 4:
        raise ValueError("a range-coded stream must be whole 32-bit words")
    table_index = np.asarray(table_index, np.int32)
    flat = table_index.ravel()
    decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(stream, "<u4").astype(np.uint32))
    values = np.zeros(flat.shape, np.int64)
    escapes = []
    for t, model in enumerate(_models(tables)):
        where = np.flatnonzero(flat == t)
        if not len(where):
            continue
        symbols = decoder.decode(model, len(where)).astype(np.int64)
        escape = int(tables["lengths"][t]) - 1
        values[where] = symbols + int(tables["offsets"][t])
        escapes.extend(where[symbols == escape].tolist())
    if escapes or overflow:
        values[np.array(escapes, np.int64)] = _read_varints(overflow, len(escapes))
    return values.reshape(table_index.shape)


def information_bits(values, table_index, tables):
    """-log2 of the tables' probabilities of `values` (escapes at the escape's probability): the ideal code
    length that `encode` comes within a few bytes of, before the overflow bytes."""
    values = np.asarray(values, np.int64)
    index = np.broadcast_to(np.asarray(table_index, np.int32), values.shape).ravel()
    values = values.ravel()
    escape = tables["lengths"][index].astype(np.int64) - 1
    symbols = values - tables["offsets"][index]
    symbols = np.where((symbols < 0) | (symbols >= escape), escape, symbols)
    counts = tables["pmfs"][index, symbols].astype(np.float64)
    return float(np.sum(PRECISION - np.log2(counts)))
