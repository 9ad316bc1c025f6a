"""Property tests of :mod:`mainrag.backends.openai_parse`: a server's reply is
untrusted input, and a censored score must be a true bound."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mainrag.backends.openai_parse import LabelScore, label_score, reply_text, token_counts
from mainrag.errors import BadReplyError
from mainrag.scoring import logsumexp

URL = "http://h/v1/chat/completions"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
# Replies shaped like a chat completion at the top, anything below.
entry = st.fixed_dictionaries({"token": json_values | st.sampled_from(["Yes", " no", "token_id:3"]),
                               "logprob": json_values | st.floats(-30, 0)})
position = st.fixed_dictionaries({"token": json_values | st.just("Yes"), "logprob": json_values | st.floats(-5, 0),
                                  "top_logprobs": json_values | st.lists(entry, max_size=5)})
choice = st.fixed_dictionaries({"message": json_values,
                                "logprobs": json_values | st.fixed_dictionaries({"content": st.lists(position)})})
replies = json_values | st.fixed_dictionaries({"choices": json_values | st.lists(choice, max_size=2),
                                               "usage": json_values})


@given(replies)
def test_any_reply_parses_or_is_a_bad_reply(data: Any) -> None:
    if not isinstance(data, dict):
        data = {"choices": data}
    for parse in (lambda: label_score(data, URL, {3: "yes"}), lambda: reply_text(data, URL)):
        try:
            result = parse()
        except BadReplyError as exc:
            assert exc.endpoint == URL
        else:
            assert isinstance(result, LabelScore | str)
    prompt, completion = token_counts(data)
    assert prompt >= 0 and completion >= 0


@given(
    st.lists(st.floats(-12, 12), min_size=2, max_size=12),
    st.integers(0, 12),
    st.integers(1, 3),
)
# Top 8 of 9 hold all but 3e-7 of the mass: the leftover is mostly rounding (a CI failure).
@example([0.0, -7.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 8.0], 8, 1)
def test_a_censored_score_is_a_true_bound(logits: list[float], k: int, n_positions: int) -> None:
    """From a full next-token distribution, return its top k: the score must hold for the truth."""
    tokens = ["Yes", "No", *(f"t{i}" for i in range(len(logits) - 2))]
    logprobs = np.asarray(logits) - logsumexp(logits)
    true_yes, true_no = float(logprobs[0]), float(logprobs[1])
    order = sorted(range(len(tokens)), key=lambda i: -logprobs[i])
    tops = [{"token": tokens[i], "logprob": float(logprobs[i])} for i in order[:k]]
    emitted = {"token": tokens[order[0]], "logprob": float(logprobs[order[0]]), "top_logprobs": tops}
    # Earlier positions emit a non-label with no label in sight (a preamble): the score skips them.
    preamble = [{"token": "Hmm", "logprob": -0.1, "top_logprobs": [{"token": "Hmm", "logprob": -0.1}]}]
    content = preamble * (n_positions - 1) + [emitted]
    score = label_score({"choices": [{"logprobs": {"content": content}}]}, URL, None)
    if score.missing == ("yes", "no"):  # nothing to go on anywhere: the first position, unknown
        assert (score.position, score.censored) == (0, True) and math.isnan(score.log_odds)
        if n_positions == 1:  # then it is this distribution's: the upper bounds hold
            assert score.logprob_yes >= true_yes - 1e-9 and score.logprob_no >= true_no - 1e-9
        return
    assert score.position == n_positions - 1  # the preamble is skipped
    tol = 1e-9
    assert score.logprob_yes >= true_yes - tol and score.logprob_no >= true_no - tol  # bounds on missing labels
    if not score.censored:
        assert score.log_odds == pytest.approx(true_yes - true_no, abs=1e-9)
    elif score.missing == ("no",):
        assert true_yes - true_no >= score.log_odds - tol
    else:
        assert true_yes - true_no <= score.log_odds + tol


def test_a_score_is_read_where_the_model_says_its_label() -> None:
    content = [
        {"token": "The", "logprob": -0.5, "top_logprobs": [{"token": "The", "logprob": -0.5},
                                                           {"token": "Yes", "logprob": -3.0}]},
        {"token": " answer", "logprob": -0.1, "top_logprobs": []},
        {"token": " No", "logprob": -0.3, "top_logprobs": [{"token": " No", "logprob": -0.3},
                                                           {"token": " Yes", "logprob": -1.5}]},
    ]
    score = label_score({"choices": [{"logprobs": {"content": content}}]}, URL, None)
    assert (score.position, score.token, score.censored) == (2, " No", False)
    assert score.log_odds == pytest.approx(-1.2)
    # No label said anywhere: the first position that has one in its top log-probabilities.
    score = label_score({"choices": [{"logprobs": {"content": content[:2]}}]}, URL, None)
    assert (score.position, score.missing) == (0, ("no",))


def test_minus_infinity_and_token_id_placeholders() -> None:
    tops = [{"token": "token_id:4", "logprob": -0.01}, {"token": "token_id:5", "logprob": float("-inf")},
            {"token": "token_id:²", "logprob": -9.0}]
    content = [{"token": "token_id:4", "logprob": -0.01, "top_logprobs": tops}]
    score = label_score({"choices": [{"logprobs": {"content": content}}]}, URL, {4: "yes", 5: "no"})
    assert not score.censored and score.logprob_no == -9999.0  # vLLM's floor, a finite score
