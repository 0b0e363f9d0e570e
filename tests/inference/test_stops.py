"""Stop strings and incremental detokenisation, without a model.

The fake tokenizer below maps each token id to a byte string, so tests can
split a stop string or a multi-byte character across tokens at will.
"""

from __future__ import annotations

from inference.engines.stops import StopMatcher, TextStream


def _byte_decoder(pieces: dict[int, bytes]):
    def decode(ids: list[int]) -> str:
        return b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")

    return decode


def _run(pieces: list[bytes], stops: tuple[str, ...]) -> tuple[list[str], TextStream]:
    table = dict(enumerate(pieces))
    stream = TextStream(_byte_decoder(table), stops)
    out = []
    for token in table:
        out.append(stream.push(token))
        if stream.stopped:
            break
    out.append(stream.flush())
    return out, stream


def test_text_that_may_start_a_stop_string_is_held_back():
    matcher = StopMatcher(["</end>"])
    assert matcher.safe_length("hello </e") == len("hello ")
    assert matcher.safe_length("hello <") == len("hello ")
    assert matcher.safe_length("hello") == len("hello")


def test_stop_string_split_across_tokens_is_never_emitted():
    deltas, stream = _run([b"The answer", b" is 4", b"2 ", b"<", b"/e", b"nd>", b" more"], ("</end>",))
    assert "".join(deltas) == "The answer is 42 "
    assert stream.stopped
    assert not any("<" in d for d in deltas)


def test_held_back_text_is_released_when_it_turns_out_not_to_be_a_stop():
    deltas, stream = _run([b"a <", b"b"], ("<x>",))
    assert deltas[0] == "a "  # "<" could start "<x>"
    assert "".join(deltas) == "a <b"
    assert not stream.stopped


def test_earliest_of_several_stop_strings_wins():
    deltas, _ = _run([b"one two three"], ("three", "two"))
    assert "".join(deltas) == "one "


def test_multibyte_character_split_across_tokens_never_yields_replacement_char():
    euro = "€".encode()  # three bytes
    deltas, _ = _run([b"cost: ", euro[:1], euro[1:2], euro[2:], b"5"], ())
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == "cost: €5"


def test_flush_releases_text_held_for_a_possible_stop_at_the_end():
    deltas, stream = _run([b"x", b" </en"], ("</end>",))
    assert deltas[:2] == ["x", " "]
    assert deltas[-1] == "</en"
    assert not stream.stopped
