"""Fixtures for the data tests: one small synthetic world per session (TSV only, no store)."""
import os

import pytest

from lxmert_fast.data.tokenization import load_tokenizer
from lxmert_fast.data.world import generate_world, open_world

SMALL_WORLD_IMAGES = 64


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("data_world") / "world"
    return open_world(generate_world(str(root), seed=3, num_images=SMALL_WORLD_IMAGES),
                      feature_store=False)


@pytest.fixture(scope="session")
def small_features(small_world):
    return small_world.open_features()


@pytest.fixture(scope="session")
def small_tokenizer(small_world):
    return load_tokenizer(small_world.vocab)


@pytest.fixture(scope="session", autouse=True)
def prepared_cache(tmp_path_factory):
    """Prepared corpora of the data tests go to the session's temporary directory."""
    saved = os.environ.get("LXMERT_FAST_CACHE")
    os.environ["LXMERT_FAST_CACHE"] = str(tmp_path_factory.mktemp("data_cache"))
    yield
    if saved is None:
        os.environ.pop("LXMERT_FAST_CACHE")
    else:
        os.environ["LXMERT_FAST_CACHE"] = saved
