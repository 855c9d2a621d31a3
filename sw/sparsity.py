"""M:N structured sparsity: pruning by magnitude, the compressed form (kept values and their indices),
its integer matmul, and the packed weight blocks the Expert-FFN engine reads.

In every group of M consecutive input elements of a weight row, N are kept. Dense is the 1:1 pattern.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import AccelConfig, SparsityPattern
from ..formats.expert_ffn import chunk_inputs, weight_word, weight_word_bytes

__all__ = ["prune", "compress", "decompress", "sparse_matmul", "WeightBlocks", "pack", "unpack"]


def _groups(weight: torch.Tensor, pattern: SparsityPattern) -> torch.Tensor:
    """``[F, D]`` -> ``[F, G, M]``, zero-padding D up to a multiple of M."""
    rows, inputs = weight.shape
    padded = torch.zeros(rows, -(-inputs // pattern.m) * pattern.m, dtype=weight.dtype)
    padded[:, :inputs] = weight
    return padded.view(rows, -1, pattern.m)


def prune(weight: torch.Tensor, pattern: SparsityPattern) -> torch.Tensor:
    """Zero all but the N largest-magnitude weights of each group of M consecutive inputs (ties keep
    the lower index). Works on float or integer weights; the shape is unchanged."""
    if pattern.is_dense:
        return weight.clone()
    groups = _groups(weight, pattern)
    keep = torch.sort(groups.abs().to(torch.float64), dim=-1, descending=True, stable=True) \
        .indices[..., :pattern.n]
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter(-1, keep, True)
    return (groups * mask).reshape(weight.shape[0], -1)[:, :weight.shape[1]]


def compress(weight_q: torch.Tensor, pattern: SparsityPattern) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept values ``[F, G, N]`` and their indices within the group ``[F, G, N]`` (ascending) of a
    weight matrix that `prune` has already pruned to the pattern (refused otherwise)."""
    groups = _groups(weight_q, pattern)
    if pattern.is_dense:
        return groups.clone(), torch.zeros_like(groups, dtype=torch.int64)
    nonzero = (groups != 0).sum(-1)
    if int(nonzero.max()) > pattern.n:
        row, group = (int(v) for v in torch.nonzero(nonzero > pattern.n)[0])
        raise ValueError(f"weights are not {pattern}-sparse: row {row}, inputs "
                         f"{group * pattern.m}..{group * pattern.m + pattern.m - 1} keep "
                         f"{int(nonzero[row, group])} non-zeros (prune them first)")
    # Kept positions: the non-zeros, then the lowest zero positions to make up N, in index order.
    rank = torch.where(groups != 0, 0, 1) * pattern.m + torch.arange(pattern.m)
    indices = torch.sort(torch.sort(rank, dim=-1).indices[..., :pattern.n], dim=-1).values
    return torch.gather(groups, -1, indices), indices


def decompress(values: torch.Tensor, indices: torch.Tensor, pattern: SparsityPattern,
               inputs: int) -> torch.Tensor:
    """The dense ``[F, inputs]`` matrix of a compressed one."""
    rows, groups, _ = values.shape
    dense = torch.zeros(rows, groups, pattern.m, dtype=values.dtype).scatter(-1, indices, values)
    return dense.reshape(rows, -1)[:, :inputs]


def sparse_matmul(x_q: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
                  pattern: SparsityPattern) -> torch.Tensor:
    """``[T, F]`` int32 accumulators from int8 tokens ``[T, D]`` and compressed weights, multiplying
    only the kept values by the activations their indices select (as the MAC array does)."""
    tokens = x_q.shape[0]
    rows, groups, _ = values.shape
    x = torch.zeros(tokens, groups * pattern.m, dtype=torch.int64)
    x[:, :x_q.shape[1]] = x_q
    x = x.view(tokens, groups, pattern.m)
    # selected[t, f, g, n] = x[t, g, indices[f, g, n]]
    selected = torch.gather(x.unsqueeze(1).expand(tokens, rows, groups, pattern.m), 3,
                            indices.unsqueeze(0).expand(tokens, rows, groups, pattern.n))
    return (selected * values.to(torch.int64).unsqueeze(0)).sum(dim=(2, 3))


@dataclass(frozen=True)
class WeightBlocks:
    """A weight matrix packed for the engine: one block per tile of ``mac_rows`` output channels, each
    block ``chunks`` words (one per ``chunk_inputs`` inputs), each word ``word_bytes`` long."""

    data: bytes
    pattern: SparsityPattern
    rows: int                 # output channels (before padding to whole tiles)
    inputs: int               # input elements (before padding to whole chunks)
    tiles: int
    chunks: int
    word_bytes: int

    @property
    def words(self) -> int:
        return self.tiles * self.chunks


def pack(weight_q: torch.Tensor, pattern: SparsityPattern, config: AccelConfig) -> WeightBlocks:
    """Pack pruned int8 weights ``[F, D]`` into the engine's blocks (layout
    `formats.expert_ffn.weight_word`).

    Rows beyond F and inputs beyond D are zero weights; each word is padded to whole bus beats
    (`formats.expert_ffn.weight_word_bytes`).
    """
    if not config.supports(pattern):
        raise ValueError(f"sparsity {pattern} is not built into the {config.name} configuration "
                         f"(it has {', '.join(str(p) for p in config.patterns)})")
    rows_per_tile, lanes = config.mac_rows, config.mac_cols
    per_chunk = chunk_inputs(config, pattern)
    rows, inputs = weight_q.shape
    tiles, chunks = -(-rows // rows_per_tile), -(-inputs // per_chunk)
    padded = torch.zeros(tiles * rows_per_tile, chunks * per_chunk, dtype=torch.int64)
    padded[:rows, :inputs] = weight_q
    values, indices = compress(padded, pattern)              # [F', G', N]
    groups_per_chunk = lanes // pattern.n
    # -> [tile, chunk, row, lane]
    values = values.view(tiles, rows_per_tile, chunks, lanes).permute(0, 2, 1, 3)
    layout = weight_word(rows_per_tile, lanes, pattern)
    word_bytes = weight_word_bytes(config, pattern)
    bits = np.zeros((tiles, chunks, word_bytes * 8), dtype=np.uint8)
    # Offsets come from the layout; within a field, ArrayLayout elements are contiguous.
    values_at = layout["values"].offset
    value_bits = np.unpackbits(values.numpy().astype(np.int8).view(np.uint8)[..., None], axis=-1,
                               bitorder="little")
    bits[..., values_at:values_at + rows_per_tile * lanes * 8] = \
        value_bits.reshape(tiles, chunks, -1)
    width = pattern.code_bits
    if width:
        code_of = {combo: code for code, combo in enumerate(pattern.combinations)}
        lookup = np.zeros([pattern.m] * pattern.n, dtype=np.int64)
        for combo, code in code_of.items():
            lookup[combo] = code
        idx = indices.view(tiles, rows_per_tile, chunks, groups_per_chunk, pattern.n) \
            .permute(0, 2, 1, 3, 4).numpy()
        codes = lookup[tuple(idx[..., n] for n in range(pattern.n))]
        code_bits_array = ((codes[..., None] >> np.arange(width)) & 1).astype(np.uint8)
        codes_at = layout["codes"].offset
        bits[..., codes_at:codes_at + rows_per_tile * groups_per_chunk * width] = \
            code_bits_array.reshape(tiles, chunks, -1)
    data = np.packbits(bits, axis=-1, bitorder="little").tobytes()
    return WeightBlocks(data, pattern, rows, inputs, tiles, chunks, word_bytes)


def unpack(blocks: WeightBlocks, config: AccelConfig) -> torch.Tensor:
    """The dense int8 ``[F, D]`` matrix that packed blocks hold: what the engine multiplies by (the
    emulator's view of the weight stream, and the check of `pack`)."""
    pattern = blocks.pattern
    layout = weight_word(config.mac_rows, config.mac_cols, pattern)
    rows, lanes = config.mac_rows, config.mac_cols
    per_chunk = chunk_inputs(config, pattern)
    if len(blocks.data) < blocks.words * blocks.word_bytes:
        raise ValueError(f"{len(blocks.data)} bytes hold fewer than the {blocks.words} words of "
                         f"{blocks.word_bytes} bytes the blocks need")
    raw = np.frombuffer(blocks.data, dtype=np.uint8, count=blocks.words * blocks.word_bytes)
    bits = np.unpackbits(raw.reshape(blocks.words, blocks.word_bytes), axis=-1, bitorder="little")
    at = layout["values"].offset
    value_bits = bits[:, at:at + rows * lanes * 8].reshape(blocks.words, rows, lanes, 8)
    values = np.packbits(value_bits, axis=-1, bitorder="little")[..., 0].view(np.int8)
    groups = lanes // pattern.n
    if pattern.code_bits:
        at, width = layout["codes"].offset, pattern.code_bits
        code_bits = bits[:, at:at + rows * groups * width].reshape(blocks.words, rows, groups, width)
        codes = (code_bits.astype(np.int64) << np.arange(width)).sum(-1)
        # A code naming no combination selects offset 0 for every slot, as the array's lookup
        # does: the group's values then all multiply its first input.
        combos = np.vstack([np.array(pattern.combinations, dtype=np.int64),
                            np.zeros((1, pattern.n), dtype=np.int64)])
        offsets = combos[np.minimum(codes, len(pattern.combinations))]     # [words, rows, G, N]
    else:
        offsets = np.zeros((blocks.words, rows, groups, pattern.n), dtype=np.int64)
    columns = (np.arange(groups)[:, None] * pattern.m + offsets).reshape(blocks.words, rows, lanes)
    dense = np.zeros((blocks.tiles, blocks.chunks, rows, per_chunk), dtype=np.int64)
    flat = (np.arange(blocks.words * rows)[:, None] * per_chunk
            + columns.reshape(blocks.words * rows, lanes))
    np.add.at(dense.reshape(-1), flat.reshape(-1), values.astype(np.int64).reshape(-1))
    dense = dense.transpose(0, 2, 1, 3).reshape(blocks.tiles * rows, blocks.chunks * per_chunk)
    return torch.from_numpy(dense)[:blocks.rows, :blocks.inputs]
