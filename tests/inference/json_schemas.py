"""A corpus of JSON schemas, each with a prompt, for structured-output tests and the benchmark.

They cover nested objects, arrays, enums, required and optional fields,
string patterns and formats, numbers with bounds, anyOf and $ref. Strings and
arrays carry upper bounds and objects are closed, as a client that wants an
answer within max_tokens writes them (OpenAI's strict mode asks the same).
"""

from __future__ import annotations

from typing import Any

NAME = {"type": "string", "minLength": 1, "maxLength": 24}
WORD = {"type": "string", "minLength": 1, "maxLength": 16}


def closed(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    """An object with exactly these properties (all required unless `required` says otherwise)."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }


SCHEMAS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "person",
        "Describe a person.",
        closed({"name": NAME, "age": {"type": "integer", "minimum": 0, "maximum": 120}}),
    ),
    (
        "book",
        "Describe a famous book.",
        closed(
            {"title": NAME, "author": NAME, "year": {"type": "integer", "minimum": 1400, "maximum": 2025}}
        ),
    ),
    ("colour", "Pick a colour.", closed({"colour": {"enum": ["red", "green", "blue", "yellow"]}})),
    ("flag", "Is the sky blue?", closed({"answer": {"type": "boolean"}})),
    (
        "point",
        "Give a point on a map.",
        closed(
            {
                "lat": {"type": "number", "minimum": -90, "maximum": 90},
                "lon": {"type": "number", "minimum": -180, "maximum": 180},
            }
        ),
    ),
    (
        "shopping",
        "Write a short shopping list.",
        closed({"items": {"type": "array", "items": WORD, "minItems": 1, "maxItems": 4}}),
    ),
    (
        "address",
        "Give an address.",
        closed(
            {
                "street": NAME,
                "city": NAME,
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            }
        ),
    ),
    (
        "company",
        "Describe a company and its founder.",
        closed(
            {
                "name": NAME,
                "founder": closed(
                    {"name": NAME, "born": {"type": "integer", "minimum": 1800, "maximum": 2000}}
                ),
            }
        ),
    ),
    (
        "date",
        "When is the next holiday?",
        closed({"holiday": NAME, "date": {"type": "string", "pattern": "^20[0-9]{2}-[01][0-9]-[0-3][0-9]$"}}),
    ),
    (
        "weather",
        "What is the weather like?",
        closed(
            {
                "condition": {"enum": ["sunny", "cloudy", "rainy", "snowy"]},
                "temperature": {"type": "integer", "minimum": -50, "maximum": 50},
            }
        ),
    ),
    (
        "scores",
        "List three test scores.",
        closed(
            {
                "scores": {
                    "type": "array",
                    "items": {"type": "integer", "minimum": 0, "maximum": 100},
                    "minItems": 3,
                    "maxItems": 3,
                }
            }
        ),
    ),
    (
        "team",
        "Name a small team.",
        closed(
            {
                "team": WORD,
                "members": {"type": "array", "items": closed({"name": NAME, "role": WORD}), "maxItems": 2},
            }
        ),
    ),
    (
        "product",
        "Describe a product for sale.",
        closed(
            {
                "name": NAME,
                "price": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000},
                "in_stock": {"type": "boolean"},
            }
        ),
    ),
    (
        "optional",
        "Describe a pet.",
        closed(
            {"name": NAME, "species": {"enum": ["cat", "dog", "bird"]}, "nickname": WORD},
            required=["name", "species"],
        ),
    ),
    (
        "code",
        "Give a product code.",
        closed({"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"}}),
    ),
    (
        "nullable",
        "Who is the CEO of a small shop, if anyone?",
        closed({"ceo": {"anyOf": [NAME, {"type": "null"}]}}),
    ),
    (
        "ref",
        "Give two cities.",
        {
            "$defs": {"city": closed({"name": NAME, "country": NAME})},
            **closed({"first": {"$ref": "#/$defs/city"}, "second": {"$ref": "#/$defs/city"}}),
        },
    ),
    (
        "rating",
        "Rate a film from 1 to 5.",
        closed({"film": NAME, "stars": {"type": "integer", "minimum": 1, "maximum": 5}}),
    ),
    (
        "tags",
        "Tag a blog post about cooking.",
        closed(
            {
                "tags": {
                    "type": "array",
                    "items": {"type": "string", "pattern": "^[a-z]{2,10}$"},
                    "minItems": 1,
                    "maxItems": 3,
                }
            }
        ),
    ),
    (
        "email",
        "Give a contact.",
        closed(
            {"name": NAME, "email": {"type": "string", "pattern": "^[a-z]{1,10}@[a-z]{1,10}\\.(com|org)$"}}
        ),
    ),
    (
        "nested",
        "Describe a school with one class.",
        closed(
            {
                "school": NAME,
                "class": closed(
                    {
                        "grade": {"type": "integer", "minimum": 1, "maximum": 12},
                        "teacher": closed({"name": NAME}),
                    }
                ),
            }
        ),
    ),
    (
        "choice_of_shapes",
        "Describe a shape.",
        closed(
            {
                "shape": {
                    "oneOf": [
                        closed(
                            {
                                "kind": {"const": "circle"},
                                "radius": {"type": "integer", "minimum": 1, "maximum": 99},
                            }
                        ),
                        closed(
                            {
                                "kind": {"const": "square"},
                                "side": {"type": "integer", "minimum": 1, "maximum": 99},
                            }
                        ),
                    ]
                }
            }
        ),
    ),
    (
        "matrix",
        "Give a 2x2 matrix of small numbers.",
        closed(
            {
                "rows": {
                    "type": "array",
                    "items": {
                        "type": "array",
                        "items": {"type": "integer", "minimum": -9, "maximum": 9},
                        "minItems": 2,
                        "maxItems": 2,
                    },
                    "minItems": 2,
                    "maxItems": 2,
                }
            }
        ),
    ),
    (
        "status",
        "Report a job status.",
        closed(
            {
                "job": WORD,
                "state": {"enum": ["queued", "running", "done", "failed"]},
                "progress": {"type": "number", "minimum": 0, "maximum": 1},
            }
        ),
    ),
]
