"""Batch-wide draws (counter_rng.py, draws.py): the rules are masking.py's exactly (each function
fed the numbers masking.py draws from its generator gives masking.py's result), the numbers are a
pure function of (seed, epoch, stream, index, slot), and their statistics are uniform."""
import numpy as np
import pytest

from lxmert_fast.data import counter_rng as crng
from lxmert_fast.data.draws import choose_answers, mask_objects, mask_words
from lxmert_fast.data.masking import IGNORE_INDEX, choose_answer, draw_object_mask
from lxmert_fast.data.masking import mask_words as mask_words_ref
from lxmert_fast.data.masking import restrict


class _Replay:
    """A stand-in numpy Generator that hands masking.py given numbers, in its draw order."""

    def __init__(self, *arrays):
        self.arrays = list(arrays)

    def random(self, n=None):
        return self.arrays.pop(0)

    def integers(self, low, high=None, size=None):
        return self.arrays.pop(0)


def test_uniforms_are_a_function_of_their_coordinates():
    a = crng.uniform(3, 1, "word_prob", [5, 9, 2], 7)
    assert a.shape == (3, 7) and a.dtype == np.float64 and ((a >= 0) & (a < 1)).all()
    assert np.array_equal(crng.uniform(3, 1, "word_prob", [9], 7)[0], a[1])     # any batch
    assert np.array_equal(crng.uniform(3, 1, "word_prob", [2, 5], 3), a[[2, 0], :3])
    for other in [(4, 1, "word_prob"), (3, 2, "word_prob"), (3, 1, "word_token")]:
        assert not np.isclose(crng.uniform(*other, [5, 9, 2], 7), a).any()
    with pytest.raises(KeyError, match="unknown random stream 'nope'"):
        crng.uniform(0, 0, "nope", [0])


def test_uniforms_are_uniform_and_independent():
    u = crng.uniform(0, 0, "obj_prob", np.arange(20000), 36)
    n = u.size
    assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / n)
    assert abs(u.var() - 1 / 12) < 0.002
    hist = np.bincount((u * 20).astype(int).ravel(), minlength=20) / n
    assert np.abs(hist - 0.05).max() < 0.002
    corr = np.corrcoef(u[:, 0], u[:, 1])[0, 1]                 # neighbouring slots
    corr_idx = np.corrcoef(u[:-1, 0], u[1:, 0])[0, 1]          # neighbouring examples
    assert abs(corr) < 0.03 and abs(corr_idx) < 0.03
    k = crng.below(u[:, 0], 7)
    assert k.min() == 0 and k.max() == 6 and abs(np.bincount(k).min() / len(k) - 1 / 7) < 0.02


@pytest.mark.parametrize("grounded_rate", [None, 0.5])
def test_mask_words_is_the_reference_rule(grounded_rate):
    rng = np.random.default_rng(0)
    B, T, V, MASK = 64, 18, 1000, 103
    tokens = rng.integers(1000, 2000, size=(B, T))
    lengths = rng.integers(1, T + 1, size=B)
    prob, rand = rng.random((B, T)), rng.integers(0, V, size=(B, T))
    grounded = np.unique(tokens[:, :3]) if grounded_rate else None
    ids, labels = mask_words(tokens, lengths, prob, rand, MASK, 0.3, grounded, grounded_rate)
    for b in range(B):
        n = lengths[b]
        want_ids, want_labels = mask_words_ref(tokens[b, :n], _Replay(prob[b, :n], rand[b, :n]),
                                               V, MASK, 0.3, grounded, grounded_rate)
        assert np.array_equal(ids[b, :n], want_ids) and np.array_equal(labels[b, :n], want_labels)
        assert (labels[b, n:] == IGNORE_INDEX).all()


def test_mask_objects_is_the_reference_rule():
    rng = np.random.default_rng(1)
    B, N, I = 50, 36, 9
    prob, image_u, box_u = rng.random((B, N)), rng.random((B, N)), rng.random((B, N))
    image_pos = rng.integers(0, I, size=B)
    box_mask = np.arange(N)[None, :] < rng.integers(0, N + 1, size=B)[:, None]
    got = mask_objects(prob, image_u, box_u, image_pos, I, box_mask, 0.4)
    for b in range(B):
        # masking.py draws integers(0, I - 1) where these functions take a uniform: same map
        other = np.minimum((image_u[b] * (I - 1)).astype(np.int64), I - 2)
        ref = restrict(draw_object_mask(_Replay(prob[b], other, box_u[b]), N, int(image_pos[b]),
                                        I, 0.4), box_mask[b])
        for key in ("chosen", "zero", "replace", "other_image", "other_frac"):
            assert np.array_equal(got[key][b], getattr(ref, key)), (b, key)
    assert (got["other_image"] != image_pos[:, None]).all()


def test_choose_answers_is_numpy_choice():
    rng = np.random.default_rng(2)
    labels = [{}, {7: 1.0}, {1: 0.3, 2: 1.0, 5: 0.6}, {3: 0.9, 4: 0.9}, {8: 0.0, 9: 0.0}]
    offsets = np.cumsum([0] + [len(l) for l in labels])
    ids = np.array([a for l in labels for a in l], dtype=np.int32)
    scores = np.array([s for l in labels for s in l.values()])
    for trial in range(200):
        seed = int(rng.integers(1 << 30))
        u = np.random.default_rng(seed).random(len(labels))
        got = choose_answers(offsets, ids, scores, np.arange(len(labels)), u)
        assert got[0] == IGNORE_INDEX and got[1] == 7
        for i in (2, 3):    # Generator.choice(p=...) consumes one double: the same pick
            gen = np.random.default_rng(seed)
            for _ in range(i):
                gen.random()
            assert got[i] == choose_answer(labels[i], gen), (trial, i)
        assert got[4] in (8, 9)
