"""The embedding engine on the real all-MiniLM-L6-v2."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from inference.engines import create_engine
from inference.engines.base import Engine, EngineConfig, GenerationRequest
from inference.errors import InvalidRequest, WrongTask
from inference.sampling import SamplingParams

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def embed_engine(model_cache_dir) -> AsyncIterator[Engine]:
    engine = create_engine(EngineConfig("all-minilm-l6-v2", device="cpu", cache_dir=str(model_cache_dir)))
    await engine.start()
    yield engine
    await engine.shutdown()


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


async def test_auto_backend_picks_the_embedding_engine(embed_engine):
    assert embed_engine.info.task == "embed"


async def test_similar_sentences_are_closer_than_unrelated_ones(embed_engine):
    result = await embed_engine.embed(
        ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply today."]
    )
    cat, kitten, stocks = result.vectors
    assert len(cat) == 384
    assert math.isclose(_dot(cat, cat), 1.0, rel_tol=1e-4)  # normalised
    assert _dot(cat, kitten) > _dot(cat, stocks) + 0.2


async def test_usage_counts_the_input_tokens(embed_engine):
    one = await embed_engine.embed(["hello world"])
    two = await embed_engine.embed(["hello world", "hello world"])
    assert one.prompt_tokens > 0
    assert two.prompt_tokens == 2 * one.prompt_tokens


async def test_input_longer_than_the_model_allows_is_refused(embed_engine):
    with pytest.raises(InvalidRequest, match="at most"):
        await embed_engine.embed(["word " * 2000])


async def test_embedding_model_refuses_to_generate(embed_engine):
    request = GenerationRequest("g", [1, 2, 3], SamplingParams())
    with pytest.raises(WrongTask):
        async for _ in embed_engine.generate(request):
            pass
