"""Labels name their owner and job; parsing refuses anything that is not ours."""

from __future__ import annotations

import pytest

from vastai_async.errors import InvalidRequestError, VastAIError
from vastai_async.labels import kept_label, parse_label, race_label, validate_id


def test_race_label_round_trip() -> None:
    label = race_label("host-1.a_b", "job-42", "r1")
    assert label == "vastai-async:host-1.a_b:job-42:r1"
    parsed = parse_label(label)
    assert parsed is not None
    assert (parsed.kept, parsed.owner, parsed.job_id, parsed.race_id) == (
        False,
        "host-1.a_b",
        "job-42",
        "r1",
    )


def test_kept_label_keeps_user_text_readable() -> None:
    label = kept_label("job-1", "my notebook: v2")
    parsed = parse_label(label)
    assert parsed is not None
    assert parsed.kept
    assert parsed.job_id == "job-1"
    assert parsed.text == "my notebook: v2"
    assert parse_label(kept_label("job-1")) == parsed.__class__(
        kept=True, owner=None, job_id="job-1"
    )


@pytest.mark.parametrize("value", ["", "a:b", "with space", "ü", "x" * 129, "semi;colon", "slash/"])
def test_bad_ids_refused_with_a_typed_error_naming_the_field(value: str) -> None:
    with pytest.raises(InvalidRequestError, match="job_id") as info:
        validate_id("job_id", value)
    assert isinstance(info.value, VastAIError)


def test_kept_is_not_an_owner() -> None:
    with pytest.raises(InvalidRequestError):
        race_label("kept", "job", "r")


@pytest.mark.parametrize(
    "label",
    [
        None,
        "",
        "job-42",
        "vastai-async",
        "vastai-async:",
        "vastai-async:a:b",
        "other:a:b:c",
        "vastai-async:a b:c:d",
        "vastai-async:a:b:c:d",
    ],
)
def test_foreign_labels_are_not_ours(label: str | None) -> None:
    assert parse_label(label) is None


def test_kept_label_length_limit() -> None:
    with pytest.raises(InvalidRequestError, match="1024"):
        kept_label("job", "x" * 1100)
