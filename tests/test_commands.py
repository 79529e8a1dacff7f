"""Pure parsing of answers: no terminal, no torch."""

from __future__ import annotations

import pytest

from lrctl.commands import Answer, Help, Invalid, Preview, Question, Quit, Status, completions, parse


@pytest.mark.parametrize("text,value", [("y", True), ("YES", True), (" n ", False), ("No", False)])
def test_yes_no(text, value):
    assert parse(Question.CONTINUE, text) == Answer(value)


@pytest.mark.parametrize("text", ["", "yep", "1", "nah"])
def test_yes_no_refuses_anything_else(text):
    assert isinstance(parse(Question.CONTINUE, text), Invalid)


def test_empty_yes_no_repeats_the_previous_answer():
    assert parse(Question.CONTINUE, "", previous=True) == Answer(True)
    assert parse(Question.CONTINUE, " ", previous=False) == Answer(False)
    assert isinstance(parse(Question.CONTINUE, "yep", previous=True), Invalid)


@pytest.mark.parametrize("text,message", [
    ("0", "at least 1"), ("-5", "at least 1"), ("abc", "whole number"), ("1.5", "whole number"),
    ("1e3", "whole number"), ("١٢", "whole number"), ("10000000", "at most"),
])
def test_epochs_refusals(text, message):
    result = parse(Question.EPOCHS, text)
    assert isinstance(result, Invalid) and message in result.message


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "1e400", "1_0", "０.１", "0x10", "0", "-1"])
def test_learning_rate_refusals(text):
    assert isinstance(parse(Question.LR, text), Invalid)


def test_learning_rate_answers_are_canonical_expressions():
    assert parse(Question.LR, "3e-2").value.text == "0.03"
    assert parse(Question.LR, "EXP 0.05 gamma=0.95").value.text == "exp 0.05 gamma=0.95"


def test_meta_commands_at_every_prompt():
    for q in Question:
        assert isinstance(parse(q, "help"), Help)
        assert parse(q, "quit") == Quit()
        assert parse(q, "status") == Status()
    assert "cyclic" in parse(Question.LR, "?").text


def test_empty_answer_repeats_previous():
    assert parse(Question.EPOCHS, "", previous=30) == Answer(30)
    assert isinstance(parse(Question.EPOCHS, ""), Invalid)


def test_preview():
    assert parse(Question.LR, "preview exp 0.1 gamma=0.5 10") == Preview("exp 0.1 gamma=0.5", 10)
    assert parse(Question.LR, "preview cos 0.03") == Preview("cos 0.03", 30)
    assert isinstance(parse(Question.LR, "preview"), Invalid)
    assert isinstance(parse(Question.LR, "preview exp 0.1 gama=2"), Invalid)


def test_preview_of_a_warm_up_as_long_as_the_preview_is_refused_not_raised():
    refused = parse(Question.LR, "preview warmup=5 cos 0.03 5")  # the REPL ended with a traceback
    assert isinstance(refused, Invalid) and "leaves none of the chunk's 5 epochs" in refused.message
    assert parse(Question.LR, "preview warmup=5 cos 0.03") == Preview("warmup=5 cos 0.03", 30)


def test_completions():
    assert "cyclic" in completions("cy") and "cos" not in completions("cy")
    assert completions("exp 0.05 ") == ["gamma="]
    assert completions("cyclic 0.001 0.03 period=4 ") == ["mode=", "gamma="]
    assert completions("warmup=3 ex") == ["exp"]


def test_find_takes_the_options_of_find_lr():
    from lrctl.commands import Find

    assert parse(Question.LR, "find") == Find()
    assert parse(Question.LR, "find start=1e-6 END=0.5 batches=200") == Find(1e-6, 0.5, 200)
    for text, message in [("find start=1 end=0.1", "0 < start < end"), ("find batches=2", "between 5 and"),
                          ("find 200", "find takes start=, end= and batches="), ("find end=inf", "finite")]:
        result = parse(Question.LR, text)
        assert isinstance(result, Invalid) and message in result.message, (text, result)
    assert isinstance(parse(Question.EPOCHS, "find"), Invalid)  # only at the lr prompt
    assert completions("find start=1e-5 ") == ["end=", "batches="]
