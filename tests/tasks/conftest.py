"""Fixtures of the fine-tuning tests: one synthetic world per session (the data helper's
generator, written under pytest's temporary directory) and its tokenizer/features. The default
size (1600 images: 300 VQA / 300 GQA / 100 NLVR2 held-out examples) so that held-out
accuracies of the fine-tuning comparison are not a handful of examples."""
import pytest

from lxmert_fast.data.tokenization import load_tokenizer
from lxmert_fast.data.world import ensure_world

WORLD_IMAGES = 1600


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
