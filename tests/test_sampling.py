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
        ({"stop_token_ids": list(range(257))}, "stop_token_ids"),
        ({"stop": ["x"] * 17}, "stop"),
        ({"stop": ["x" * 257]}, "stop"),
        ({"seed": 2**64}, "seed"),
        ({"seed": 2**63}, "seed"),
        ({"seed": -1}, "seed"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": float("inf")}, "top_p"),
        ({"presence_penalty": 10**400}, "presence_penalty"),
        ({"max_tokens": 2**64}, "max_tokens"),
        ({"top_k": 2**70}, "top_k"),
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


@pytest.mark.parametrize("temperature", [1e-40, 9e-6, 0])
def test_temperature_below_1e_5_is_greedy(temperature):
    params = SamplingParams.from_request({"temperature": temperature})
    assert params.temperature == 0.0
    assert params.greedy


def test_largest_seed_and_longest_stop_are_accepted():
    params = SamplingParams.from_request({"seed": 2**63 - 1, "stop": ["x" * 256] * 16})
    assert params.seed == 2**63 - 1
    assert len(params.stop) == 16
    assert SamplingParams.from_request({"temperature": 1e-5}).temperature == 1e-5
