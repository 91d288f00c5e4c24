"""neutrino.retry: the exception a task raises to ask for another attempt."""

from __future__ import annotations

import math
import pickle

import neutrino
import pytest
from neutrino import NeutrinoError, Retry


def test_retry_is_public_and_outside_the_error_tree() -> None:
    assert "Retry" in neutrino.__all__ and neutrino.Retry is Retry
    assert issubclass(Retry, Exception) and not issubclass(Retry, NeutrinoError)


def test_defaults() -> None:
    retry = Retry()
    assert (retry.delay, retry.message, str(retry)) == (None, "", "retry requested")


def test_delay_and_message() -> None:
    retry = Retry(delay=2, message="rate limited")
    assert (retry.delay, retry.message, str(retry)) == (2.0, "rate limited", "rate limited")
    assert isinstance(retry.delay, float)
    assert Retry(0).delay == 0.0
    assert repr(retry) == "Retry(delay=2.0, message='rate limited')"


@pytest.mark.parametrize(
    ("delay", "error", "words"),
    [
        (-1, ValueError, "finite number of seconds >= 0, got -1"),
        (math.inf, ValueError, ">= 0"),
        (math.nan, ValueError, ">= 0"),
        ("5", TypeError, "number of seconds or None, got str"),
        (True, TypeError, "got bool"),
    ],
)
def test_bad_delay(delay: object, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        Retry(delay=delay)  # type: ignore[arg-type]


def test_bad_message() -> None:
    with pytest.raises(TypeError, match="message must be a str"):
        Retry(message=3)  # type: ignore[arg-type]


def test_pickles_with_its_fields() -> None:
    copy = pickle.loads(pickle.dumps(Retry(1.5, "later")))
    assert type(copy) is Retry and (copy.delay, copy.message, str(copy)) == (1.5, "later", "later")
