"""Fixtures of the fine-tuning tests: one small synthetic world per session (the data helper's
generator, written under pytest's temporary directory) and its tokenizer/features."""
import pytest

from lxmert_fast.data.tokenization import load_tokenizer
from lxmert_fast.data.world import ensure_world

WORLD_IMAGES = 96


@pytest.fixture(scope="session")
def task_world(tmp_path_factory):
    return ensure_world(cache_dir=str(tmp_path_factory.mktemp("task_world")),
                        num_images=WORLD_IMAGES)


@pytest.fixture(scope="session")
def task_features(task_world):
    return task_world.open_features()


@pytest.fixture(scope="session")
def task_tokenizer(task_world):
    return load_tokenizer(task_world.vocab)
