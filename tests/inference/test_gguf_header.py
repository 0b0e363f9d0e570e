"""The lean GGUF header reader agrees with gguf-py's `GGUFReader` on every field and tensor."""

from __future__ import annotations

from pathlib import Path

import gguf as gguflib
import numpy as np
import pytest

from inference.gguf_header import ArrayField, read_gguf_header
from inference.loading import gguf_limits, gguf_pools, packaged_model_path


def assert_agrees_with_gguf_py(path: Path) -> None:
    header = read_gguf_header(path)
    reader = gguflib.GGUFReader(path)
    expected = {key: field for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    assert list(header.fields) == list(expected)
    for key, field in expected.items():
        value = header.fields[key]
        if field.types[:2] == [gguflib.GGUFValueType.ARRAY] * 2:  # gguf-py miscounts nested arrays
            assert value.item_type == gguflib.GGUFValueType.ARRAY, key
        elif field.types[0] == gguflib.GGUFValueType.ARRAY:
            assert value == ArrayField(field.types[1], len(field.data)), key
        else:
            assert value == field.contents(), key
    assert [(t.name, t.tensor_type, t.n_elements) for t in header.tensors] == [
        (t.name, t.tensor_type, int(t.n_elements)) for t in reader.tensors
    ]


def test_the_packaged_smollm2_reads_as_gguf_py_reads_it() -> None:
    packaged = packaged_model_path("smollm2-135m-instruct")
    assert_agrees_with_gguf_py(packaged)
    assert gguf_limits(packaged) == {"max_position_embeddings": 8192, "vocab_size": 49152}
    assert not gguf_pools(packaged)


@pytest.mark.parametrize("endian", [gguflib.GGUFEndian.LITTLE, gguflib.GGUFEndian.BIG])
def test_every_value_type_in_either_byte_order(tmp_path: Path, endian: gguflib.GGUFEndian) -> None:
    path = tmp_path / "model.gguf"
    writer = gguflib.GGUFWriter(path, "bert", endianess=endian)
    writer.add_array("t.nested", [[1, 2], ["x"]])  # first: every field after it is read past it
    writer.add_uint8("t.u8", 7)
    writer.add_int16("t.i16", -3)
    writer.add_uint32("bert.context_length", 512)
    writer.add_int64("t.i64", -(2**40))
    writer.add_float32("t.f32", 0.5)
    writer.add_float64("t.f64", 1.25)
    writer.add_bool("t.bool", True)
    writer.add_string("t.text", "héllo")
    writer.add_uint32("bert.pooling_type", 1)
    writer.add_token_list(["[CLS]", "a", "ü", ""])
    writer.add_array("t.ints", [1, 2, 3])
    writer.add_tensor("weight", np.ones((3, 4), dtype=np.float16))
    writer.add_tensor("bias", np.zeros(5, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    assert_agrees_with_gguf_py(path)
    header = read_gguf_header(path)
    assert header.architecture == "bert"
    assert (header.fields["t.text"], header.fields["t.i64"]) == ("héllo", -(2**40))
    assert header.fields["t.nested"] == ArrayField(gguflib.GGUFValueType.ARRAY, 2)
    assert [(t.name, t.n_elements) for t in header.tensors] == [("weight", 12), ("bias", 5)]
    assert gguf_limits(path) == {"max_position_embeddings": 512, "vocab_size": 4}
    assert gguf_pools(path)


def test_what_is_not_a_whole_gguf_is_a_value_error(tmp_path: Path) -> None:
    packaged = packaged_model_path("smollm2-135m-instruct").read_bytes()
    cases = {
        "empty": (b"", "is empty"),
        "text": (b"not really a model", "magic invalid"),
        "cut in its vocabulary": (packaged[:200_000], "not a complete GGUF"),
        "cut in its tensor list": (packaged[: packaged.index(b"blk.20")], "not a complete GGUF"),
    }
    for name, (content, error) in cases.items():
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(content)
        with pytest.raises(ValueError, match=error):
            read_gguf_header(path)
        assert not gguf_pools(path), name  # unreadable: not a sentence encoder; loading says why
