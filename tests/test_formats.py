from rationale_loop.data.formats import TINYCOT, get_format

import pytest


def test_prompt_and_response_render_the_tinycot_layout():
    prompt = TINYCOT.prompt("What is 2 + 3?")
    response = TINYCOT.response("2 + 3 = 5.", "5")
    assert prompt == "### User:\nWhat is 2 + 3?\n\n### Rationale:\n"
    assert prompt + response == "### User:\nWhat is 2 + 3?\n\n### Rationale:\n2 + 3 = 5.\n\n### Answer:\n5"


def test_parse_round_trips_a_rendered_response():
    parsed = TINYCOT.parse(TINYCOT.response("4 * 2 = 8. 8 - 1 = 7.", "7"))
    assert parsed.valid and parsed.rationale == "4 * 2 = 8. 8 - 1 = 7." and parsed.answer == "7"


@pytest.mark.parametrize(
    "completion, reason",
    [
        ("4 + 4 = 8.", "no_answer"),  # never reaches the answer header
        ("\n\n### Answer:\n8", "no_rationale"),  # an answer with no reasoning before it
        ("4 + 4 = 8.\n\n### Answer:\n", "no_answer"),  # header, then nothing
        ("4 + 4 = 8.\n\n### User:\nmore\n\n### Answer:\n8", "malformed"),  # starts a new turn
    ],
)
def test_parse_marks_incomplete_completions_invalid(completion, reason):
    parsed = TINYCOT.parse(completion)
    assert not parsed.valid and parsed.reason == reason


def test_parse_keeps_only_the_first_answer_line():
    parsed = TINYCOT.parse("1 + 1 = 2.\n\n### Answer:\n2\nand then some rambling 7")
    assert parsed.answer == "2"


def test_unknown_format_names_the_known_ones():
    with pytest.raises(ValueError, match="tinycot"):
        get_format("nope")
