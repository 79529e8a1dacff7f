"""The typed command (lrctl.plan): the --plan grammar, the Python edge, the one check, absolute chunks."""

from __future__ import annotations

import pytest

from lrctl.plan import ChunkRequest, absolute_chunks, check_plan, check_request, parse_plan, requests
from lrctl.schedules import ScheduleError, parse


def test_a_plan_parses_each_schedule_once_into_its_canonical_spec():
    plan = parse_plan(" 30@3e-2 ;30@EXP 0.05 gamma=0.95;")
    assert [(r.epochs, r.spec.text) for r in plan] == [(30, "0.03"), (30, "exp 0.05 gamma=0.95")]
    assert all(isinstance(r, ChunkRequest) for r in plan)


@pytest.mark.parametrize("text, message", [
    ("", "the plan is empty"),
    ("30", "plan chunk 1 '30': expected EPOCHS@LR"),
    ("30@0.03;0@0.01", "plan chunk 2 '0@0.01': epochs must be at least 1"),
    ("30@0.03;x@0.01", "plan chunk 2 'x@0.01'"),
    ("30@exp 0.05 gama=0.9", "unknown option 'gama'"),
])
def test_a_bad_plan_names_the_chunk_and_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        parse_plan(text)


def test_the_python_edge_takes_text_numbers_and_specs():
    spec = parse("cos 0.03")
    made = requests([(2, "0.03"), (3, spec), (1, 0.01)])
    assert [(r.epochs, r.spec.text) for r in made] == [(2, "0.03"), (3, "cos 0.03"), (1, "0.01")]
    assert made[1].spec is spec


def test_one_check_for_keep_and_warm_ups_everywhere():
    with pytest.raises(ScheduleError, match="nothing to keep yet"):
        check_request(ChunkRequest(3, parse("keep")), has_schedule=False)
    check_request(ChunkRequest(3, parse("keep")), has_schedule=True)
    with pytest.raises(ScheduleError, match="warmup=3 leaves none of the chunk's 3 epochs for cos"):
        check_request(ChunkRequest(3, parse("warmup=3 cos 0.03")), has_schedule=True)
    check_request(ChunkRequest(4, parse("warmup=3 cos 0.03")), has_schedule=True)
    check_plan(parse_plan("2@0.03;2@keep"), has_schedule=False)  # a later chunk keeps an earlier one's schedule
    with pytest.raises(ScheduleError):
        check_plan(parse_plan("2@keep;2@0.03"), has_schedule=False)


def test_absolute_chunks_start_where_the_run_stands():
    chunks = absolute_chunks(parse_plan("2@0.03;3@cos 0.01"), start=7)
    assert chunks == [{"start": 7, "epochs": 2, "expr": "0.03"}, {"start": 9, "epochs": 3, "expr": "cos 0.01"}]
