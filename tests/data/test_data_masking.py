"""Statistics of LXMERT's word/object corruption and QA answer sampling (masking.py)."""
import numpy as np
import pytest

from lxmert_fast.data.masking import (IGNORE_INDEX, choose_answer, draw_object_mask, mask_words,
                                      restrict)


def _within(count, n, p, sigmas=5.0):
    """count ~ Binomial(n, p) within ``sigmas`` standard deviations."""
    return abs(count - n * p) <= sigmas * np.sqrt(n * p * (1 - p))


def test_word_masking_rates():
    vocab, mask_id = 1000, 3
    tokens = np.arange(500, 520)                    # 20 distinct ids, none equal to mask_id
    chosen = masked = randomised = kept = 0
    for i in range(3000):
        ids, labels = mask_words(tokens, np.random.default_rng([0, i]), vocab, mask_id)
        sel = labels != IGNORE_INDEX
        assert (labels[sel] == tokens[sel]).all() and (ids[~sel] == tokens[~sel]).all()
        chosen += sel.sum()
        masked += (ids[sel] == mask_id).sum()
        same = ids[sel] == tokens[sel]
        kept += same.sum()
        randomised += (~same & (ids[sel] != mask_id)).sum()
    n = 3000 * len(tokens)
    assert _within(chosen, n, 0.15)
    assert _within(masked, chosen, 0.8)
    # a random token equals the original with p = 1/vocab: negligible against the bounds
    assert _within(randomised, chosen, 0.1) and _within(kept, chosen, 0.1)


def test_random_tokens_cover_vocab():
    drawn = set()
    for i in range(2000):
        ids, labels = mask_words(np.full(20, 7), np.random.default_rng([1, i]), 50, 3)
        drawn |= set(ids[(labels != IGNORE_INDEX) & (ids != 3) & (ids != 7)].tolist())
    assert len(drawn) > 40 and max(drawn) < 50


def test_object_masking_rates():
    n_img, n_slots, trials = 10, 36, 3000
    chosen = zero = replace = 0
    box_mask = np.arange(n_slots) < 20
    for i in range(trials):
        m = restrict(draw_object_mask(np.random.default_rng([2, i]), n_slots, 4, n_img), box_mask)
        assert not m.chosen[~box_mask].any()
        assert not (m.zero & m.replace).any() and (m.chosen >= (m.zero | m.replace)).all()
        assert (m.other_image != 4).all() and ((0 <= m.other_image) & (m.other_image < n_img)).all()
        chosen += m.chosen.sum()
        zero += m.zero.sum()
        replace += m.replace.sum()
    assert _within(chosen, trials * 20, 0.15)
    assert _within(zero, chosen, 0.8) and _within(replace, chosen, 0.1)
    assert _within(chosen - zero - replace, chosen, 0.1)


def test_fixed_draw_count_makes_later_draws_independent_of_content():
    a = np.random.default_rng(5)
    b = np.random.default_rng(5)
    mask_words(np.arange(10), a, 100, 3)
    mask_words(np.arange(100, 110), b, 100, 3)
    assert a.random() == b.random()


def test_choose_answer_follows_scores():
    label = {4: 1.0, 9: 0.3}
    picks = [choose_answer(label, np.random.default_rng([3, i])) for i in range(4000)]
    assert set(picks) == {4, 9}
    assert _within(picks.count(9), 4000, 0.3 / 1.3)
    assert choose_answer({7: 0.6}, np.random.default_rng(0)) == 7


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_extreme_rates(rate):
    ids, labels = mask_words(np.arange(10, 30), np.random.default_rng(0), 100, 3, rate=rate)
    assert ((labels != IGNORE_INDEX).sum() == (20 if rate else 0))


def test_grounded_words_masked_at_their_own_rate():
    vocab, mask_id = 1000, 3
    tokens = np.arange(500, 520)
    grounded = np.array([503, 507, 511, 515])           # 4 of the 20 tokens
    is_g = np.isin(tokens, grounded)
    chosen_g = chosen_o = masked_g = 0
    for i in range(3000):
        ids, labels = mask_words(tokens, np.random.default_rng([0, i]), vocab, mask_id,
                                 grounded=grounded, grounded_rate=0.5)
        sel = labels != IGNORE_INDEX
        chosen_g += sel[is_g].sum()
        chosen_o += sel[~is_g].sum()
        masked_g += (ids[sel & is_g] == mask_id).sum()
    assert _within(chosen_g, 3000 * 4, 0.5)
    assert _within(chosen_o, 3000 * 16, 0.15)
    assert _within(masked_g, chosen_g, 0.8)                # 80/10/10 kept for grounded words


def test_grounded_rate_off_draws_exactly_as_before():
    tokens = np.arange(500, 530)
    for i in range(50):
        a = mask_words(tokens, np.random.default_rng([1, i]), 1000, 3)
        b = mask_words(tokens, np.random.default_rng([1, i]), 1000, 3, grounded=np.array([505]),
                       grounded_rate=None)
        c = mask_words(tokens, np.random.default_rng([1, i]), 1000, 3, grounded=np.array([505]),
                       grounded_rate=0.15)
        for x, y in ((a, b), (a, c)):
            assert np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1])


def test_grounded_rate_checked():
    with pytest.raises(ValueError, match="grounded_mask_rate=1.5"):
        mask_words(np.arange(5), np.random.default_rng(0), 100, 3, grounded=np.array([1]),
                   grounded_rate=1.5)
