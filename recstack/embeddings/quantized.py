"""Row-wise quantized tables for inference (`--embeddings.kind int8` or `int4`), as FBGEMM and TorchRec
serve them: every row stored as unsigned codes with its own scale and bias (float16 by default, as
FBGEMM's inference tables keep them), read back as `code * scale + bias`.

    int8: one uint8 code per element                         D + 4 bytes a row (fp32: 4 D)
    int4: two 4-bit codes per byte (element 2i in the low    D / 2 + 4 bytes a row; the dimension
          nibble, 2i + 1 in the high one)                    must be even

Quantizing a row x: bias = the largest float16 <= min(x) (rounded down, so the row's minimum is on
the grid's side), scale = (max(x) - bias) / (2^bits - 1) rounded to float16 and raised one float16
step at a time until the top code reaches max(x) in the float32 arithmetic the lookups use; each
element gets the nearest code. Every element then reads back within half a quantization step
(scale / 2) of its value, plus float32 rounding. A row whose values are all equal and on the float16
grid gets scale 0 and reads back exactly (zero-initialized tables).

The logical state is the dequantized rows: `table_state` gives float32 rows, `load_table_state` and
`write_rows` quantize any float rows, so a training checkpoint of any kind loads here and this
collection's state dict loads into any kind. Quantizing those dequantized rows again gives the same
codes, scale and bias whenever the row's smallest element has code 0, which holds unless a row's
range is narrower than about a float16 step of its magnitude times 2^bits (rows of one sign within a
few float16 steps of each other): such a row may read back one quantization step apart after a reload.
The optimizer state is kept as loaded (float32, [rows, k]), as fp16's is: nothing here updates it.

Lookups (only the rows a batch reads, dequantized to float32, pooled in float32 in pure PyTorch) and
the refusal to train are recstack.embeddings.inference's; ids are folded and range-checked by the
fused layout dense.py uses. The codes, scales and biases keep their dtypes whatever the model's.
"""

from __future__ import annotations

import torch

from recstack.embeddings.base import (
    SparseOptimizerConfig,
    TableConfig,
    TableState,
)
from recstack.embeddings.inference import InferenceCollection
from recstack.embeddings.layout import FusedLayout
from recstack.embeddings.optim import new_state
from recstack.embeddings.plan import Placement, register

BITS = {"int8": 8, "int4": 4}
"""Kind name -> bits per code."""
CHUNK_ROWS = 1 << 16
"""Rows quantized at a time (a float64 working copy of this many rows, not of a whole table)."""
PROBE = 2
"""Elements of a row checked before the whole row, when looking for a grid that reproduces it exactly."""


# --- the row-wise scheme ---------------------------------------------------------------------------


def check_dimension(bits: int, dim: int, what: str = "the tables") -> None:
    if bits not in (4, 8):
        raise ValueError(f"row-wise quantization has 8 or 4 bits per code, not {bits}")
    if bits == 4 and dim % 2:
        raise ValueError(f"int4 packs two codes per byte, so it needs an even embedding dimension; {what} "
                         f"have dimension {dim} (use int8 or fp16)")


def quantize_rows(weight: torch.Tensor, bits: int, scale_dtype: torch.dtype = torch.float16, fresh: bool = False,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes uint8 [n, D * bits / 8], scale [n], bias [n]) of float rows [n, D]; a row that is not
    finite, or whose scale or bias `scale_dtype` cannot hold, is a ValueError (one line). `fresh`: the
    rows were not read back from such tables (random init), so no exact grid is looked for."""
    n, dim = weight.shape
    check_dimension(bits, dim)
    levels = (1 << bits) - 1
    x = weight.detach().to(torch.float64)
    if n == 0 or dim == 0:
        empty = torch.zeros(n, 0 if dim == 0 else dim * bits // 8, dtype=torch.uint8, device=x.device)
        return empty, torch.zeros(n, dtype=scale_dtype, device=x.device), torch.zeros(n, dtype=scale_dtype, device=x.device)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("cannot quantize rows holding NaN or inf")
    lo, hi = x.min(1).values, x.max(1).values
    down, up = torch.tensor(float("-inf"), dtype=scale_dtype), torch.tensor(float("inf"), dtype=scale_dtype)
    bias = lo.to(scale_dtype)
    bias = torch.where(bias.double() > lo, torch.nextafter(bias, down.to(bias.device)), bias)  # rounded down
    scale = ((hi - bias.double()) / levels).to(scale_dtype)
    for _ in range(8):  # the top code must reach max(x) as the lookups compute it
        top = dequantize_codes(torch.full((n, 1), levels, dtype=torch.uint8, device=x.device), scale, bias)[:, 0]
        short = top.double() < hi
        if not bool(short.any()):
            break
        scale = torch.where(short, torch.nextafter(scale, up.to(scale.device)), scale)
    if not (bool(torch.isfinite(scale).all()) and bool(torch.isfinite(bias).all())):
        raise ValueError(f"rows with values beyond {scale_dtype} range (largest magnitude {float(x.abs().max()):.4g}) "
                         "cannot be quantized with that scale and bias dtype")
    codes = _codes(x, scale, bias, levels)
    # rows this scheme reads back (a state dict or an export of these tables) must quantize to the same
    # values; the grid above can miss theirs when the scale is subnormal in float16 or the codes do not
    # span 0..levels: for those rows, the grid nearby that reproduces them exactly
    if fresh:
        return pack(codes, bits), scale, bias
    # where the plain grid reproduces every row read back: a normal scale, a bias more than a quarter
    # step below the next float16, codes spanning 0..levels (see _exact_grid); elsewhere, check
    tiny = torch.finfo(scale_dtype).tiny
    narrow = 4 * (torch.nextafter(bias, torch.tensor(float("inf"), dtype=scale_dtype)) - bias).double() >= scale.double()
    odd = (scale.double() < tiny) | narrow | (codes.amin(1) > 0) | (codes.amax(1) < levels)
    candidates = odd.nonzero()[:, 0]
    inexact = candidates[(dequantize_codes(codes[candidates], scale[candidates], bias[candidates]).double()
                          != x[candidates]).any(1)]
    if inexact.numel():
        found, grid = _exact_grid(x[inexact], lo[inexact], hi[inexact], bias[inexact], levels)
        if bool(found.any()):
            rows = inexact[found]
            codes[rows], scale[rows], bias[rows] = (part[found] for part in grid)
    return pack(codes, bits), scale, bias


def _codes(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, levels: int) -> torch.Tensor:
    """The nearest code of every element on each row's grid (uint8 [n, D], unpacked)."""
    step = scale.double().unsqueeze(1)
    codes = torch.where(step > 0, (x - bias.double().unsqueeze(1)) / torch.where(step > 0, step, 1.0), 0.0)
    return codes.round_().clamp_(0, levels).to(torch.uint8)


def _exact_grid(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bias: torch.Tensor, levels: int,
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(found [n], (codes, scale, bias)) for rows that some grid of this scheme reproduces exactly: its
    bias is min(x) rounded down or one float16 step below that (when the row's codes did not start at
    0), its scale a few steps from (max - bias) / levels."""
    n = x.shape[0]
    found = torch.zeros(n, dtype=torch.bool, device=x.device)
    codes, scales, biases = torch.zeros_like(x, dtype=torch.uint8), bias.clone(), bias.clone()
    down, up = (torch.tensor(v, dtype=bias.dtype, device=x.device) for v in (float("-inf"), float("inf")))
    few = x[:, :PROBE].contiguous()
    for b in (bias, torch.nextafter(bias, down)):
        scale = ((hi - b.double()) / levels).to(bias.dtype)
        scale = torch.nextafter(torch.nextafter(scale, down), down).clamp(min=0)
        for _ in range(8):
            # a few elements first: rows not read back from these tables (fresh float rows) fail there
            maybe = (~found & (dequantize_codes(_codes(few, scale, b, levels), scale, b).double() == few).all(1))
            maybe = maybe.nonzero()[:, 0]
            if maybe.numel():
                c = _codes(x[maybe], scale[maybe], b[maybe], levels)
                exact = (dequantize_codes(c, scale[maybe], b[maybe]).double() == x[maybe]).all(1)
                rows = maybe[exact]
                codes[rows], scales[rows], biases[rows] = c[exact], scale[rows], b[rows]
                found[rows] = True
                if bool(found.all()):
                    return found, (codes, scales, biases)
            scale = torch.nextafter(scale, up)
    return found, (codes, scales, biases)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes [n, D] as stored: as they are (int8), or two per byte (int4, element 2i low)."""
    if bits == 8:
        return codes
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def unpack(stored: torch.Tensor, bits: int) -> torch.Tensor:
    """The codes [n, D] of stored rows."""
    if bits == 8:
        return stored
    return torch.stack([stored & 0xF, stored >> 4], dim=2).view(stored.shape[0], -1)


def dequantize_codes(codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """float32 rows: code * scale + bias (the one formula, for lookups and state alike)."""
    return codes.float() * scale.float().unsqueeze(1) + bias.float().unsqueeze(1)


def dequantize_rows(stored: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, bits: int) -> torch.Tensor:
    return dequantize_codes(unpack(stored, bits), scale, bias)


# --- the collection --------------------------------------------------------------------------------


class QuantizedEmbeddingCollection(InferenceCollection):
    """uint8 codes (int8, or int4 two per byte) with a scale and bias per row; float32 pooling;
    inference only."""

    def __init__(self, tables: list[TableConfig], bits: int = 8, optimizer: SparseOptimizerConfig | None = None,
                 device: torch.device | str = "cpu", scale_dtype: torch.dtype = torch.float16):
        super().__init__()
        if not tables:
            raise ValueError("an embedding collection needs at least one table")
        empty = [t.name for t in tables if t.num_embeddings < 1]
        if empty:
            raise ValueError(f"tables {empty} have no rows: every table needs num_embeddings >= 1")
        dims = {t.embedding_dim for t in tables}
        if len(dims) != 1:
            raise ValueError(f"all tables of a quantized collection share one dimension, got {sorted(dims)}")
        check_dimension(bits, tables[0].embedding_dim, f"tables {', '.join(t.name for t in tables)}")
        if scale_dtype not in (torch.float16, torch.float32):
            raise ValueError(f"scale and bias are float16 or float32, not {scale_dtype}")
        self.tables = list(tables)
        self.optimizer = optimizer or SparseOptimizerConfig()
        self.bits = bits
        self.kind = f"int{bits}"
        self.quantized_layout = FusedLayout(self.tables, device)
        total = self.quantized_layout.total_rows
        width = self.dim * bits // 8
        self.register_buffer("codes", torch.zeros(total, width, dtype=torch.uint8, device=device), persistent=False)
        self.register_buffer("scale", torch.zeros(total, dtype=scale_dtype, device=device), persistent=False)
        self.register_buffer("bias", torch.zeros(total, dtype=scale_dtype, device=device), persistent=False)
        self.register_buffer("optimizer_state", new_state(self.optimizer, total, self.dim, device), persistent=False)
        self.reset_parameters()

    @property
    def layout(self) -> FusedLayout:
        return self.quantized_layout

    def lookup(self, rows: torch.Tensor) -> torch.Tensor:
        """float32 rows of the fused buffers: only these are read and dequantized."""
        return dequantize_rows(self.codes.index_select(0, rows), self.scale.index_select(0, rows),
                               self.bias.index_select(0, rows), self.bits)

    # --- logical state: dequantized rows, the optimizer state as loaded ------------------------

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the logical rows (`table_state`): float32. The stored rows are uint8 codes."""
        return torch.float32

    def _span(self, name: str) -> slice:
        return self.layout.span(name, type(self).__name__)

    def table_state(self, name: str) -> TableState:
        span = self._span(name)
        return TableState(dequantize_rows(self.codes[span], self.scale[span], self.bias[span], self.bits),
                          self.optimizer_state[span])

    @torch.no_grad()
    def _store(self, index: torch.Tensor, weight: torch.Tensor, fresh: bool = False) -> None:
        """Quantize float rows [len(index), D] into the fused rows `index`, a chunk at a time."""
        device = self.codes.device
        for start in range(0, index.numel(), CHUNK_ROWS):
            part = index[start:start + CHUNK_ROWS].to(device)
            codes, scale, bias = quantize_rows(weight[start:start + CHUNK_ROWS].to(device), self.bits, self.scale.dtype,
                                               fresh)
            self.codes.index_copy_(0, part, codes)
            self.scale.index_copy_(0, part, scale)
            self.bias.index_copy_(0, part, bias)

    @torch.no_grad()
    def load_table_state(self, name: str, state: TableState) -> None:
        span = self._span(name)
        self._store(torch.arange(span.start, span.stop), state.weight)
        self.optimizer_state[span].copy_(state.optimizer_state)

    def read_rows(self, name: str, rows: torch.Tensor) -> TableState:
        index = rows.to(self.codes.device) + self._span(name).start
        return TableState(self.lookup(index), self.optimizer_state.index_select(0, index))

    @torch.no_grad()
    def write_rows(self, name: str, rows: torch.Tensor, state: TableState) -> None:
        index = rows.to(self.codes.device) + self._span(name).start
        self._store(index, state.weight)
        self.optimizer_state.index_copy_(0, index, state.optimizer_state.to(self.optimizer_state))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.optimizer_state.zero_()
        if self.codes.device.type == "meta":  # sized, not filled
            return
        for t in self.tables:
            span = self._span(t.name)
            for start in range(span.start, span.stop, CHUNK_ROWS):
                stop = min(start + CHUNK_ROWS, span.stop)
                weight = torch.empty(stop - start, t.embedding_dim, device=self.codes.device)
                t.initialize(weight)  # a chunk of the table's rows, as its init says
                self._store(torch.arange(start, stop), weight, fresh=True)

    # --- sizes -------------------------------------------------------------------------------

    def row_bytes(self) -> int:
        """Bytes of one stored row: its codes, its scale and its bias."""
        return self.dim * self.bits // 8 + 2 * torch.empty(0, dtype=self.scale.dtype).element_size()

    def embedding_bytes(self) -> int:
        return sum(t.num_embeddings for t in self.tables) * self.row_bytes()

    # --- placement ---------------------------------------------------------------------------

    def place(self, device: torch.device | str) -> None:
        self.move_tensors(device)


@register("int8")
def build_int8(tables: list[TableConfig], placement: Placement) -> QuantizedEmbeddingCollection:
    """Row-wise int8 tables (uint8 codes, float16 scale and bias per row) where the model computes, for inference."""
    return QuantizedEmbeddingCollection(tables, 8, placement.optimizer, device=placement.device)


@register("int4")
def build_int4(tables: list[TableConfig], placement: Placement) -> QuantizedEmbeddingCollection:
    """Row-wise int4 tables (two codes per byte, float16 scale and bias per row), for inference."""
    return QuantizedEmbeddingCollection(tables, 4, placement.optimizer, device=placement.device)
