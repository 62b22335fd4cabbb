"""The vectorized Criteo parser and chunk reader, checked against a plain per-line reference parser."""

from __future__ import annotations

import gzip
import math
import random
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recstack.data.criteo import (
    REJECT_REASONS,
    ParsedChunk,
    detect_has_label,
    encode_chunk,
    encode_hash,
    encode_vocab,
    iter_criteo_chunks,
    parse_chunk,
)
from recstack.data.store import FIRST_VOCAB_ID, MISSING_ID, OOV_ID
from recstack.data.vocab import VocabIndex, build_vocab, count_values, mix64
from recstack.errors import DataError
from tests.conftest import shared_data

# --------------------------------------------------------------------------------------------
# A per-line reference parser: slow and obvious


def reference_line(line: bytes, has_label: bool, unterminated: bool, max_line: int):
    """("keep", label, dense, cat, missing) or ("reject", reason) for one line without its LF."""
    if line.endswith(b"\r"):
        line = line[:-1]
    if len(line) > max_line:
        return ("reject", "line_too_long")
    if any((b < 32 and b != 9) or b >= 127 for b in line):
        return ("reject", "binary_garbage")
    fields = line.split(b"\t")
    if len(fields) != (40 if has_label else 39):
        return ("reject", "truncated_line" if unterminated else "wrong_field_count")
    label = None
    if has_label:
        if fields[0] not in (b"0", b"1"):
            return ("reject", "bad_label")
        label = float(fields[0])
        fields = fields[1:]
    dense = []
    for f in fields[:13]:
        if f and not re.fullmatch(rb"-?[0-9]{1,18}", f):
            return ("reject", "non_integer_dense")
        dense.append(np.float32(math.log1p(max(int(f), 0))) if f else np.float32(0))
    cat, missing = [], []
    for f in fields[13:]:
        if f and not re.fullmatch(rb"[0-9a-fA-F]{1,16}", f):
            return ("reject", "non_hex_categorical")
        cat.append(int(f, 16) if f else 0)
        missing.append(not f)
    return ("keep", label, dense, cat, missing)


def reference_parse(data: bytes, has_label: bool = True, max_line: int = 64 << 10, first_line: int = 1):
    lines = data.split(b"\n")
    terminated = data.endswith(b"\n")
    if terminated or not data:
        lines = lines[:-1]
    out = []
    for i, line in enumerate(lines):
        last_open = (not terminated) and i == len(lines) - 1
        out.append((first_line + i, reference_line(line, has_label, last_open, max_line)))
    return out


def assert_matches_reference(chunk: ParsedChunk, expected) -> None:
    kept = [(ln, r) for ln, r in expected if r[0] == "keep"]
    rejected = [(ln, r[1]) for ln, r in expected if r[0] == "reject"]
    assert chunk.lines.tolist() == [ln for ln, _ in kept]
    assert list(zip(chunk.reject_lines.tolist(), chunk.reject_names(), strict=True)) == rejected
    assert chunk.num_lines == len(expected)
    if kept:
        if chunk.labels is not None:
            assert chunk.labels.tolist() == [r[1] for _, r in kept]
        np.testing.assert_array_equal(chunk.dense, np.array([r[2] for _, r in kept], dtype=np.float32))
        np.testing.assert_array_equal(chunk.cat, np.array([r[3] for _, r in kept], dtype=np.uint64))
        np.testing.assert_array_equal(chunk.missing, np.array([r[4] for _, r in kept], dtype=bool))


# --------------------------------------------------------------------------------------------
# Line builders


def line(label="1", dense=None, cat=None, *, sep="\t", end="\n") -> str:
    dense = [str(i) for i in range(13)] if dense is None else dense
    cat = [f"{i:08x}" for i in range(26)] if cat is None else cat
    fields = ([label] if label is not None else []) + list(dense) + list(cat)
    return sep.join(fields) + end


def parse(text: str | bytes, **kw) -> ParsedChunk:
    return parse_chunk(text.encode() if isinstance(text, str) else text, **kw)


def random_line(rng: random.Random, has_label: bool = True) -> bytes:
    """A Criteo-like line, sometimes damaged in one of many ways."""
    label = [rng.choice(["0", "1"])] if has_label else []
    dense = [rng.choice(["", str(rng.randint(-3, 10 ** rng.randint(1, 9))), "0", "-1"]) for _ in range(13)]
    cat = [
        rng.choice(["", f"{rng.getrandbits(32):08x}", f"{rng.getrandbits(64):x}", f"{rng.getrandbits(8):X}"])
        for _ in range(26)
    ]
    fields = label + dense + cat
    damage = rng.randrange(24)
    if damage == 0:
        fields.pop(rng.randrange(len(fields)))
    elif damage == 1:
        fields.insert(rng.randrange(len(fields)), "7")
    elif damage == 2 and has_label:
        fields[0] = rng.choice(["2", "", "01", "x", "-1", "1.0"])
    elif damage == 3:
        fields[rng.randrange(len(label), len(label) + 13)] = rng.choice(
            ["1.5", "x", "-", "+3", "1e5", "--2", "9" * 19, "0x1f"]
        )
    elif damage == 4:
        fields[rng.randrange(len(label) + 13, len(fields))] = rng.choice(["xyz", "-1", "g0", "1" * 17, " a", "0x"])
    elif damage == 5:
        i = rng.randrange(len(fields))
        fields[i] += rng.choice(["\x00", "\x01", "\x7f", "\xff", "\r", "\x1b"])
    elif damage == 6:
        return ("\t".join(fields) + "\r").encode("latin-1")  # CRLF once the LF is added
    elif damage == 7:
        return b""  # an empty line
    return "\t".join(fields).encode("latin-1")


def random_text(seed: int, n: int, has_label: bool = True, terminated: bool = True) -> bytes:
    rng = random.Random(seed)
    body = b"\n".join(random_line(rng, has_label) for _ in range(n))
    return body + (b"\n" if terminated else b"")


# --------------------------------------------------------------------------------------------
# Edge cases


def test_good_line_values():
    chunk = parse(line("1", ["5", "-1", "", "0"] + ["3"] * 9, ["68fd1e64", "", "ABCDEF", "0"] + ["1"] * 22))
    assert chunk.num_kept == 1 and chunk.num_rejected == 0
    assert chunk.labels.tolist() == [1.0]
    assert chunk.dense.dtype == np.float32 and chunk.dense.shape == (1, 13)
    np.testing.assert_allclose(chunk.dense[0, :4], np.log1p([5, 0, 0, 0]).astype(np.float32))
    assert chunk.cat.dtype == np.uint64 and chunk.cat[0, :4].tolist() == [0x68FD1E64, 0, 0xABCDEF, 0]
    assert chunk.missing[0, :4].tolist() == [False, True, False, False]


def test_all_fields_empty_is_kept():
    chunk = parse(line("0", [""] * 13, [""] * 26))
    assert chunk.num_kept == 1
    assert not chunk.dense.any() and chunk.missing.all() and chunk.labels.tolist() == [0.0]


def test_negative_and_large_dense():
    chunk = parse(line(dense=["-5", "-0", "123456789012345678", "00042"] + ["1"] * 9))
    np.testing.assert_array_equal(
        chunk.dense[0, :4], np.log1p(np.array([0, 0, 123456789012345678, 42], dtype=np.float64)).astype(np.float32)
    )


@pytest.mark.parametrize("value", ["1.5", "x", "-", "+1", "1e3", "9" * 19, " 1", "0x10"])
def test_non_integer_dense(value):
    chunk = parse(line(dense=[value] + ["1"] * 12))
    assert chunk.reject_names() == ["non_integer_dense"] and chunk.num_kept == 0


@pytest.mark.parametrize("value", ["xyz", "-1", "1" * 17, "0x1", "g", "12 "])
def test_non_hex_categorical(value):
    chunk = parse(line(cat=[value] + ["a"] * 25))
    assert chunk.reject_names() == ["non_hex_categorical"]


def test_sixteen_hex_digits():
    chunk = parse(line(cat=["ffffffffffffffff", "123456789abcdef0", "1"] + [""] * 23))
    assert chunk.cat[0, :3].tolist() == [2**64 - 1, 0x123456789ABCDEF0, 1]


@pytest.mark.parametrize("label", ["2", "", "01", "x", "-1", "1.0"])
def test_bad_label(label):
    assert parse(line(label)).reject_names() == ["bad_label"]


def test_wrong_field_counts():
    text = line() + line(dense=["1"] * 12) + line(cat=["a"] * 27) + "\n" + "just text\n" + line()
    chunk = parse(text)
    assert chunk.lines.tolist() == [1, 6]
    assert chunk.reject_lines.tolist() == [2, 3, 4, 5]
    assert set(chunk.reject_names()) == {"wrong_field_count"}


def test_last_line_without_newline_is_kept():
    chunk = parse(line() + line("0", end=""))
    assert chunk.lines.tolist() == [1, 2] and chunk.labels.tolist() == [1.0, 0.0]
    assert chunk.cat[1, 25] == 25  # the last field is complete


def test_truncated_last_line_is_rejected():
    text = line() + line()[:100]
    chunk = parse(text)
    assert chunk.lines.tolist() == [1]
    assert chunk.reject_names() == ["truncated_line"] and chunk.reject_lines.tolist() == [2]


def test_crlf_line_endings_are_accepted():
    crlf = line("1", end="\r\n") + line("0", end="\r\n") + line("1", end="\r")
    lf = line("1") + line("0") + line("1", end="")
    a, b = parse(crlf), parse(lf)
    assert a.num_kept == 3 and a.num_rejected == 0
    np.testing.assert_array_equal(a.cat, b.cat)
    np.testing.assert_array_equal(a.dense, b.dense)


def test_cr_inside_a_line_is_garbage():
    chunk = parse(line(cat=["a\rb"] + ["1"] * 25) + line(end="\r\r\n"))
    assert chunk.reject_names() == ["binary_garbage", "binary_garbage"]


@pytest.mark.parametrize("junk", [b"\x00", b"\x01", b"\x7f", b"\xff", b"\x1b[0m"])
def test_binary_garbage(junk):
    good = line().encode()
    bad = line().encode().replace(b"\t", b"\t" + junk, 1)
    chunk = parse(good + bad + good)
    assert chunk.lines.tolist() == [1, 3]
    assert chunk.reject_names() == ["binary_garbage"] and chunk.reject_lines.tolist() == [2]


def test_overlong_line_in_a_chunk():
    long_line = line(cat=["a" * 16] * 26)
    chunk = parse(line() + long_line + line(), max_line_bytes=len(long_line) - 5)
    assert chunk.lines.tolist() == [1, 3] and chunk.reject_names() == ["line_too_long"]


def test_unlabeled_lines():
    text = line(None) * 3
    chunk = parse(text, has_label=False)
    assert chunk.labels is None and chunk.num_kept == 3
    assert detect_has_label(text.encode()) is False
    assert detect_has_label((line() * 3).encode()) is True
    assert detect_has_label(b"a\tb\nc\n") is None
    assert parse(text, has_label=True).reject_names() == ["wrong_field_count"] * 3


def test_empty_input():
    chunk = parse(b"")
    assert chunk.num_lines == 0 and chunk.dense.shape == (0, 13) and chunk.cat.shape == (0, 26)


def test_first_line_numbering():
    chunk = parse(line() + "bad\n" + line(), first_line=101, file="f.tsv")
    assert chunk.lines.tolist() == [101, 103] and chunk.reject_lines.tolist() == [102]


def test_matches_reference_on_random_lines():
    data = random_text(seed=1, n=3000)
    chunk = parse_chunk(data, max_line_bytes=280)
    expected = reference_parse(data, max_line=280)
    assert len({r[1] for _, r in expected if r[0] == "reject"}) >= 6  # the generator does damage lines
    assert_matches_reference(chunk, expected)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 60),
    terminated=st.booleans(),
    has_label=st.booleans(),
    max_line=st.sampled_from([64 << 10, 230, 300]),
)
def test_property_matches_reference(seed, n, terminated, has_label, max_line):
    data = random_text(seed, n, has_label, terminated)
    chunk = parse_chunk(data, has_label=has_label, max_line_bytes=max_line)
    assert_matches_reference(chunk, reference_parse(data, has_label, max_line))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 2**32 - 1), chunk_bytes=st.integers(64, 3000), terminated=st.booleans())
def test_chunked_reading_matches_reference(tmp_path, seed, chunk_bytes, terminated):
    """Cutting the input into chunks anywhere changes nothing, the reader's long-line skip included."""
    data = random_text(seed, 40, terminated=terminated)
    path = tmp_path / f"in-{seed}-{chunk_bytes}.tsv"
    path.write_bytes(data)
    chunks = list(iter_criteo_chunks([path], chunk_bytes=chunk_bytes, has_label=True, max_line_bytes=260))
    merged = _merge(chunks)
    assert_matches_reference(merged, reference_parse(data, True, 260))
    assert sum(c.text_bytes for c in chunks) == len(data)
    assert sum(c.input_bytes for c in chunks) == len(data)


def _merge(chunks: list[ParsedChunk]) -> ParsedChunk:
    cat = lambda name: np.concatenate([getattr(c, name) for c in chunks])  # noqa: E731
    return ParsedChunk(
        labels=cat("labels"),
        dense=cat("dense"),
        cat=cat("cat"),
        missing=cat("missing"),
        lines=cat("lines"),
        reject_lines=cat("reject_lines"),
        reject_reasons=cat("reject_reasons"),
    )


# --------------------------------------------------------------------------------------------
# Reader: files, gzip, truncation, long lines


def test_reader_resyncs_after_overlong_line(tmp_path):
    text = line() + "1\t" + "9" * 200_000 + "\n" + line("0") + line() + ("x" * 100_000)
    path = tmp_path / "long.tsv"
    path.write_text(text)
    chunks = list(iter_criteo_chunks([path], chunk_bytes=4096))
    merged = _merge(chunks)
    assert merged.lines.tolist() == [1, 3, 4]
    assert list(zip(merged.reject_lines.tolist(), merged.reject_names(), strict=True)) == [
        (2, "line_too_long"),
        (5, "line_too_long"),
    ]
    assert sum(c.text_bytes for c in chunks) == len(text)


def test_gzip_matches_plain(tmp_path):
    data = random_text(seed=7, n=500)
    plain, gz = tmp_path / "a.tsv", tmp_path / "a.tsv.gz"
    plain.write_bytes(data)
    gz.write_bytes(gzip.compress(data[:20000]) + gzip.compress(data[20000:]))  # two gzip members
    a = _merge(list(iter_criteo_chunks([plain], chunk_bytes=5000)))
    b = _merge(list(iter_criteo_chunks([gz], chunk_bytes=5000)))
    np.testing.assert_array_equal(a.cat, b.cat)
    np.testing.assert_array_equal(a.reject_lines, b.reject_lines)
    np.testing.assert_array_equal(a.dense, b.dense)


def test_gzip_detected_by_magic_bytes(tmp_path):
    data = (line() * 5).encode()
    disguised = tmp_path / "data.tsv"  # gzip inside, no .gz
    disguised.write_bytes(gzip.compress(data))
    plain_named_gz = tmp_path / "data.gz"  # plain text named .gz
    plain_named_gz.write_bytes(data)
    for path in (disguised, plain_named_gz):
        chunks = list(iter_criteo_chunks([path]))
        assert sum(c.num_kept for c in chunks) == 5


def test_truncated_gzip(tmp_path):
    data = random_text(seed=3, n=2000, terminated=True)
    compressed = gzip.compress(data)
    path = tmp_path / "cut.tsv.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    chunks = list(iter_criteo_chunks([path], chunk_bytes=8192))
    merged = _merge(chunks)
    notes = [n for c in chunks for n in c.notes]
    assert len(notes) == 1 and "gzip stream ends early" in notes[0] and str(path) in notes[0]
    # every line before the cut matches the plain parse; the partial line is a truncated_gzip reject
    last = int(merged.reject_lines[-1])
    assert merged.reject_names()[-1] == "truncated_gzip"
    before = merged.reject_lines < last
    merged.reject_lines, merged.reject_reasons = merged.reject_lines[before], merged.reject_reasons[before]
    assert_matches_reference(merged, reference_parse(data)[: last - 1])


def test_corrupt_gzip_is_a_note_not_a_traceback(tmp_path):
    data = (line() * 200).encode()
    compressed = bytearray(gzip.compress(data))
    compressed[len(compressed) // 2] ^= 0xFF
    path = tmp_path / "bad.gz"
    path.write_bytes(bytes(compressed))
    chunks = list(iter_criteo_chunks([path], chunk_bytes=1024))
    assert any("gzip" in n for c in chunks for n in c.notes)


def test_corrupt_gzip_keeps_the_lines_before_the_damage(tmp_path):
    # the Criteo sample, damaged at 3/4 of its compressed bytes: the lines decoded before the damage are
    # delivered (they were all lost when the reader decompressed megabytes per call)
    data = shared_data("criteo", "train_sample.tsv").read_bytes()
    compressed = bytearray(gzip.compress(data))
    for i in range(60):
        compressed[3 * len(compressed) // 4 + i] ^= 0xFF
    path = tmp_path / "bad.gz"
    path.write_bytes(bytes(compressed))
    chunks = list(iter_criteo_chunks([path]))
    read = sum(c.num_lines for c in chunks)
    assert read >= 0.6 * data.count(b"\n") and any("gzip" in n for c in chunks for n in c.notes)


def test_line_numbers_restart_per_file(tmp_path):
    a, b = tmp_path / "a.tsv", tmp_path / "b.tsv"
    a.write_text(line() * 3)
    b.write_text("bad\n" + line() * 2)
    chunks = list(iter_criteo_chunks([a, b]))
    by_file = {c.file: c for c in chunks if c.num_lines}
    assert by_file[str(a)].lines.tolist() == [1, 2, 3]
    assert by_file[str(b)].lines.tolist() == [2, 3] and by_file[str(b)].reject_lines.tolist() == [1]


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        list(iter_criteo_chunks([tmp_path / "nope.tsv"]))


def test_auto_detects_unlabeled(tmp_path):
    path = tmp_path / "test.txt"
    path.write_text(line(None) * 4)
    chunks = list(iter_criteo_chunks([path]))
    assert chunks[0].labels is None and chunks[0].num_kept == 4


# --------------------------------------------------------------------------------------------
# Encoders


def test_encode_vocab():
    vocab = np.array([5, 10, 99], dtype=np.uint64)
    raw = np.array([10, 7, 5, 99, 0, 1000], dtype=np.uint64)
    missing = np.array([False, False, False, False, True, False])
    ids = encode_vocab(raw, missing, vocab)
    assert ids.dtype == np.int32
    assert ids.tolist() == [FIRST_VOCAB_ID + 1, OOV_ID, FIRST_VOCAB_ID, FIRST_VOCAB_ID + 2, MISSING_ID, OOV_ID]
    assert encode_vocab(raw, missing, np.zeros(0, np.uint64)).tolist() == [0, 0, 0, 0, 1, 0]


def test_encode_hash():
    raw = np.arange(10_000, dtype=np.uint64)
    missing = raw % 7 == 0
    ids = encode_hash(raw, missing, 50)
    assert ids[missing].tolist() == [MISSING_ID] * int(missing.sum())
    assert ids[~missing].min() >= FIRST_VOCAB_ID and ids.max() < 50
    assert len(np.unique(ids[~missing])) == 48  # consecutive keys spread over every bucket
    np.testing.assert_array_equal(ids, encode_hash(raw, missing, 50))
    with pytest.raises(ValueError):
        encode_hash(raw, missing, 2)


@settings(max_examples=60, deadline=None)
@given(
    vocab=st.lists(st.integers(0, 2**64 - 1), max_size=300, unique=True),
    extra=st.lists(st.integers(0, 2**64 - 1), max_size=50),
    dense_range=st.booleans(),
)
def test_vocab_index_matches_searchsorted(vocab, extra, dense_range):
    if dense_range:  # clustered keys: skewed buckets
        vocab = [v % 1000 for v in vocab]
    vocab_arr = np.unique(np.array(vocab, dtype=np.uint64))
    keys = np.concatenate([vocab_arr, np.array(extra + [0, 2**64 - 1], dtype=np.uint64)])
    got = VocabIndex(vocab_arr).positions(keys)
    pos = np.searchsorted(vocab_arr, keys)
    found = (
        (pos < len(vocab_arr)) & (vocab_arr[np.minimum(pos, max(len(vocab_arr) - 1, 0))] == keys)
        if len(vocab_arr)
        else pos < 0
    )
    np.testing.assert_array_equal(got, np.where(found, pos, -1))


def test_mix64_is_splitmix64():
    assert int(mix64(np.array([0], np.uint64))[0]) == 0xE220A8397B1DCDAF  # splitmix64's first output, seed 0


def test_count_values_in_blocks():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 50, 10_000).astype(np.uint64)
    missing = rng.random(10_000) < 0.1
    blocks = [(raw[i : i + 300], missing[i : i + 300]) for i in range(0, raw.size, 300)]
    values, counts = count_values(blocks, block_rows=777)
    ref_values, ref_counts = np.unique(raw[~missing], return_counts=True)
    np.testing.assert_array_equal(values, ref_values)
    np.testing.assert_array_equal(counts, ref_counts)
    np.testing.assert_array_equal(build_vocab(raw, missing, 200), ref_values[ref_counts >= 200])


def test_encode_chunk_through_vocab():
    chunk = parse(line(cat=["a"] * 26) + line(cat=["b"] + [""] * 25))
    vocabs = {f"C{i}": np.array([0xA], np.uint64) for i in range(1, 27)}
    ids = encode_chunk(chunk, vocabs=vocabs)
    assert ids["C1"].tolist() == [FIRST_VOCAB_ID, OOV_ID] and ids["C2"].tolist() == [FIRST_VOCAB_ID, MISSING_ID]
    assert set(encode_chunk(chunk, hash_buckets=100)) == set(vocabs)


# --------------------------------------------------------------------------------------------
# Real data


def test_real_train_sample_parses_cleanly():
    data = shared_data("criteo", "train_sample.tsv").read_bytes()
    chunk = parse_chunk(data)
    assert chunk.num_kept == 12_108 and chunk.num_rejected == 0
    assert 0.2 < chunk.labels.mean() < 0.26  # 23% positives
    head = b"".join(data.splitlines(keepends=True)[:500])
    assert_matches_reference(parse_chunk(head), reference_parse(head))


def test_real_unlabeled_sample():
    path = shared_data("criteo", "test_unlabeled_sample.tsv")
    chunks = list(iter_criteo_chunks([path], chunk_bytes=1 << 20))
    assert sum(c.num_kept for c in chunks) == 10_000 and all(c.labels is None for c in chunks)
    assert sum(c.num_rejected for c in chunks) == 0


def test_reject_reason_names_are_stable():
    assert REJECT_REASONS == (
        "wrong_field_count",
        "bad_label",
        "non_integer_dense",
        "non_hex_categorical",
        "truncated_line",
        "line_too_long",
        "binary_garbage",
        "truncated_gzip",
    )


@pytest.mark.parametrize("damage, says", [
    (lambda z: z[: len(z) // 2], "after line \\d+: the file is cut short .* an incomplete download or copy"),
    (lambda z: z[:-8] + bytes(b ^ 0xFF for b in z[-8:-4]) + z[-4:], "fails gzip's checksum .* may be damaged too"),
    (lambda z: z[:3] + b"\x07" + z[4:12] + b"garbage" * 50, "before its first line: .*; nothing could be read"),
    (lambda z: b"\x1f\x8bnot gzip at all" * 10, "starts like gzip .bytes 1f 8b. but has no valid gzip header"),
], ids=["truncated", "checksum", "corrupt-at-start", "not-gzip"])
def test_a_damaged_gzip_note_says_what_is_wrong_with_the_file(tmp_path, damage, says):
    data = random_text(seed=4, n=3000, terminated=True)
    path = tmp_path / "in.tsv.gz"
    path.write_bytes(damage(gzip.compress(data)))
    notes = [n for c in iter_criteo_chunks([path], chunk_bytes=8192) for n in c.notes]
    assert len(notes) == 1 and notes[0].startswith(f"{path}: gzip stream ends early")
    assert re.search(says, notes[0]), notes[0]
