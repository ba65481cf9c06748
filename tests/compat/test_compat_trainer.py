"""transformers' Trainer on our model (the attributes and methods it reads: main_input_name,
num_parameters(exclude_embeddings=), activation_checkpointing_enable(...), ...), with
``gradient_checkpointing=True``, which transformers' own LXMERT refuses."""
import warnings

import pytest
import torch

import lxmert_fast
from compat_testutil import TINY, hf_config, one_thread  # noqa: F401

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytestmark = pytest.mark.usefixtures("one_thread")


class _Data(torch.utils.data.Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return dict(input_ids=torch.randint(1, TINY["vocab_size"], (6,), generator=g),
                    visual_feats=torch.randn(4, TINY["visual_feat_dim"], generator=g),
                    visual_pos=torch.rand(4, 4, generator=g),
                    labels=torch.tensor(i % TINY["num_qa_labels"]))


def _trainer(model, out_dir):
    args = transformers.TrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=4, max_steps=3, report_to=[],
        logging_steps=1, save_steps=3, use_cpu=True, gradient_checkpointing=True,
        learning_rate=1e-3)
    return transformers.Trainer(model=model, args=args, train_dataset=_Data())


def test_trainer_with_gradient_checkpointing(tmp_path):
    warnings.simplefilter("ignore", FutureWarning)  # transformers 5 renames the argument
    theirs = transformers.LxmertForQuestionAnswering(hf_config(**TINY))
    with pytest.raises(ValueError, match="does not support activation checkpointing"):
        _trainer(theirs, tmp_path / "theirs").train()
    config = lxmert_fast.LxmertConfig(**TINY, kernel_impl="torch")
    ours = lxmert_fast.LxmertForQuestionAnswering(config)
    result = _trainer(ours, tmp_path / "ours").train()
    assert result.global_step == 3 and torch.isfinite(torch.tensor(result.training_loss))
    assert ours.is_gradient_checkpointing
    # Trainer writes a model that is not transformers' PreTrainedModel as a bare state dict
    # (no config.json): it loads with config=.
    saved = tmp_path / "ours" / "checkpoint-3"
    again = lxmert_fast.LxmertForQuestionAnswering.from_pretrained(str(saved), config=config)
    assert torch.equal(again.answer_head.logit_fc[3].weight, ours.answer_head.logit_fc[3].weight)
