import pytest

from inference.errors import InvalidRequest
from inference.sampling import SamplingParams


def test_defaults_fill_missing_fields():
    params = SamplingParams.from_request({"max_tokens": 5}, defaults={"temperature": 0.2})
    assert params.max_tokens == 5
    assert params.temperature == 0.2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "ten"}, "max_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"stop": [1]}, "stop"),
        ({"ignore_eos": "yes"}, "ignore_eos"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
    ],
)
def test_bad_values_name_the_field(body, field):
    with pytest.raises(InvalidRequest) as raised:
        SamplingParams.from_request(body)
    assert raised.value.field == field
    assert field in str(raised.value)


def test_stop_string_becomes_tuple_and_top_k_minus_one_is_off():
    params = SamplingParams.from_request({"stop": "\n", "top_k": -1})
    assert params.stop == ("\n",)
    assert params.top_k == 0
