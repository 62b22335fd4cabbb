"""Hot and cold embedding rows and inputs (FAE, specs/TECHNIQUES.md section 1): the access-count
profiler (counting), hot-set selection under a memory budget (budget, selection), and the hot/cold
partition of a split's inputs (storage), stored once in the dataset directory so training reads it
instead of re-classifying; `recstack data hotcold` is in command. Every public name is importable from
this package.

Definitions (the same everywhere in recstack):

- A *lookup* is one id of one sparse feature of one input (every member of a bag is a lookup).
  The access count of row i of table t is the number of lookups of (t, i) over the split.
- *Sampled* counts count the lookups of a random subset of the split's inputs: each input is in the
  sample independently with probability `sample` (Bernoulli sampling; FAE's profiler draws
  floor(x N) indices with replacement instead, which ranks rows the same way in expectation). Input
  r's coin comes from the generator of its block (r // SAMPLE_BLOCK, seeded by (seed, block)), so the
  sample does not depend on the chunk size and `sample=1.0` takes every input.
- The *hot set* for a capacity of K rows is the first K rows of all tables jointly in the order
  (count descending, table index ascending, row id ascending), never-seen rows (count 0) excluded,
  so it has min(K, rows seen) rows. K = floor(budget bytes / (dim * 4 + state bytes per row)): an
  fp32 row plus its optimizer state (FAE's code uses budget // (4 * dim), i.e. no state).
  Hot sets for larger K contain those for smaller K.
- An input is *hot* when every one of its lookups (all tables, all bag members) is in the hot set;
  an empty bag adds no lookup, so an input whose bags are all empty is hot. Every other input is cold.
"""

from recstack.data.hotcold.budget import FP32_BYTES, capacity_rows, parse_bytes, parse_fraction, row_bytes
from recstack.data.hotcold.command import hotcold_command
from recstack.data.hotcold.counting import (
    DEFAULT_CHUNK_ROWS,
    SAMPLE_BLOCK,
    AccessCounts,
    count_accesses,
    count_runs,
    merge_runs,
    sample_mask,
)
from recstack.data.hotcold.selection import (
    HotSet,
    hot_input_fractions,
    hot_levels,
    input_levels,
    recall,
    seen_share,
    select_hot,
)
from recstack.data.hotcold.storage import (
    HOTCOLD_DIR,
    HOTCOLD_FORMAT,
    HOTCOLD_VERSION,
    SUMMARY_FILE,
    HotCold,
    build_hot_cold,
    load_hot_cold,
)

__all__ = [
    "AccessCounts", "DEFAULT_CHUNK_ROWS", "FP32_BYTES", "HOTCOLD_DIR", "HOTCOLD_FORMAT", "HOTCOLD_VERSION", "HotCold",
    "HotSet", "SAMPLE_BLOCK", "SUMMARY_FILE", "build_hot_cold", "capacity_rows", "count_accesses", "count_runs",
    "hot_input_fractions", "hot_levels", "hotcold_command", "input_levels", "load_hot_cold", "merge_runs",
    "parse_bytes", "parse_fraction", "recall", "row_bytes", "sample_mask", "seen_share", "select_hot",
]  # fmt: skip
