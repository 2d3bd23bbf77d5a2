"""TextTable / BytesTable: read back exactly what was appended (one text at a time or as a
worker's encoded block), pickled too, while the process holds no object or offset per text;
RunsById finds the run that holds a position."""

from __future__ import annotations

import pickle
import random
import tracemalloc

from pretrain_tasks._text_table import BytesTable, RunsById, TextTable, encode_texts


def test_appended_and_extended_texts_read_back_in_order_and_survive_pickling():
    rng = random.Random(0)
    table, expected = TextTable(), []
    for i in range(20_000):
        if rng.random() < 0.02:  # a worker's block, empty texts and multi-byte characters included
            block = ["é€" * rng.randrange(3) + str(j) * rng.randrange(2) for j in range(rng.randrange(60))]
            table.extend(*encode_texts(block))
            expected += block
        else:
            text = "naïve " * rng.randrange(4) + str(i)
            table.append(text)
            expected.append(text)
    assert len(table) == len(expected) and list(table) == expected
    assert table[7:300:11] == expected[7:300:11] and table[-1] == expected[-1]
    for start, stop in [(0, 0), (0, 1), (0, 5000), (1, 2), (123, 9876), (len(expected) - 3, len(expected))]:
        assert table.run(start, stop) == expected[start:stop]
    assert table.nbytes == sum(len(t.encode("utf-8")) for t in expected)
    copy = pickle.loads(pickle.dumps(table))
    assert type(copy) is TextTable and copy == expected


def test_a_table_costs_the_process_no_memory_per_text():
    table = TextTable()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for start in range(0, 400_000, 4_000):  # 400k texts, as blocks and one by one
            table.extend(*encode_texts([f"sentence number {i}" for i in range(start, start + 2_000)]))
            for i in range(start + 2_000, start + 4_000):
                table.append(f"sentence number {i}")
        table.flush()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(table) == 400_000 and table[123_456] == "sentence number 123456"
    assert grown < 1_000_000  # a list of the offsets alone would be 3.2 MB, of the strings some 30 MB


def test_bytes_rows_keep_their_bytes():
    table = BytesTable()
    for row in (b"\x00\xff", b"", b"abc"):
        table.append(row)
    assert list(table) == [b"\x00\xff", b"", b"abc"]


def test_the_run_holding_a_position_is_found_past_empty_runs():
    runs = RunsById()
    for doc_id, start, end in [("a", 0, 3), ("empty", 3, 3), ("b", 3, 5), ("c", 5, 9), ("empty2", 9, 9)]:
        runs.add(doc_id, start, end)
    assert [runs.position_of(i) for i in range(9)] == [0, 0, 0, 2, 2, 3, 3, 3, 3]
    assert runs.get("b") == range(3, 5) and runs.get("missing") == range(0, 0)
