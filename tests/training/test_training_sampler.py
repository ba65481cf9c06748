"""The resumable distributed sampler and the evaluation shards."""
import pytest

from lxmert_fast.training.sampler import ResumableBatchSampler, eval_shards


def _step_union(n, micro, gas, world, step, seed=3):
    out = []
    for rank in range(world):
        s = ResumableBatchSampler(n, micro, gas, world, rank, seed)
        out += [i for mb in s.micro_batches(step) for i in mb.indices]
    return out


def test_global_batches_do_not_depend_on_the_split_over_ranks_and_accumulation():
    for step in (0, 1, 4, 5, 9):
        ref = sorted(_step_union(50, 8, 1, 1, step))
        assert len(ref) == 8 and len(set(ref)) == 8
        assert sorted(_step_union(50, 4, 1, 2, step)) == ref
        assert sorted(_step_union(50, 2, 2, 2, step)) == ref
        assert sorted(_step_union(50, 1, 4, 2, step)) == ref


def test_one_process_with_accumulation_reads_what_two_ranks_read():
    one = ResumableBatchSampler(40, 4, 2, 1, 0, seed=1)
    r0, r1 = (ResumableBatchSampler(40, 4, 1, 2, r, seed=1) for r in (0, 1))
    for step in range(7):
        micro = one.micro_batches(step)
        assert micro[0].indices == r0.micro_batches(step)[0].indices
        assert micro[1].indices == r1.micro_batches(step)[0].indices


def test_epochs_cover_the_data_once_and_reshuffle():
    s = ResumableBatchSampler(23, 5, 1, 1, 0, seed=0)
    assert s.steps_per_epoch == 4
    epoch0 = [i for step in range(4) for i in s.micro_batches(step)[0].indices]
    epoch1 = [i for step in range(4, 8) for i in s.micro_batches(step)[0].indices]
    assert len(set(epoch0)) == 20 and len(set(epoch1)) == 20
    assert epoch0 != epoch1
    assert [mb.epoch for mb in s.iter_from(3, 5)] == [0, 1]


def test_position_is_a_function_of_the_step_and_survives_a_restart():
    a = ResumableBatchSampler(100, 3, 2, 2, 1, seed=7)
    full = [mb.indices for mb in a.iter_from(0, 12)]
    b = ResumableBatchSampler(100, 3, 2, 2, 1, seed=7)
    start = b.load_state_dict(a.state_dict(5))
    assert start == 5
    assert [mb.indices for mb in b.iter_from(start, 12)] == full[10:]
    assert a.state_dict(17) == {"next_step": 17, "epoch": 2, "step_in_epoch": 1, "seed": 7,
                                "num_examples": 100, "global_batch": 12}


def test_mismatched_resume_and_bad_sizes_are_errors():
    s = ResumableBatchSampler(100, 4, 1, 2, 0, seed=0)
    state = s.state_dict(3)
    with pytest.raises(ValueError, match="global_batch=8 differs from this run's global_batch=16"):
        ResumableBatchSampler(100, 8, 1, 2, 0, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match="seed=0 differs"):
        ResumableBatchSampler(100, 4, 1, 2, 0, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="has 5 examples, fewer than one global batch of 8"):
        ResumableBatchSampler(5, 4, 1, 2, 0)
    with pytest.raises(ValueError, match="rank=2"):
        ResumableBatchSampler(100, 4, 1, 2, 2)


def test_eval_shards_give_equal_batch_counts_and_cover_every_example_once():
    n, world = 23, 3
    seen, counts = [], []
    for rank in range(world):
        batches = list(eval_shards(n, 4, world, rank))
        counts.append(len(batches))
        for indices, valid in batches:
            assert len(indices) == len(valid)
            seen += [i for i, ok in zip(indices, valid) if ok]
    assert len(set(counts)) == 1
    assert sorted(seen) == list(range(n))
