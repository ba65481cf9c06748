"""LoRA from the ``peft`` library on our LxmertForQuestionAnswering, on the synthetic world's VQA
split: get_peft_model, a few training steps that lower the loss (step for step as on transformers'
class with the same weights and adapters: the adapters really run inside our fused layers),
save_pretrained, and PeftModel.from_pretrained onto a fresh base with identical outputs."""
import pytest
import torch

import lxmert_fast
from lxmert_fast import LxmertConfig
from compat_testutil import hf_config, one_thread  # noqa: F401

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")
STEPS, BATCH = 8, 16
TARGETS = ["query", "key", "value", "dense"]


@pytest.fixture(scope="module")
def vqa(tmp_path_factory):
    from lxmert_fast.data.tokenization import load_tokenizer
    from lxmert_fast.data.world import ensure_world
    from lxmert_fast.tasks.registry import load_task_data, world_paths

    world = ensure_world(cache_dir=str(tmp_path_factory.mktemp("peft_world")), num_images=120)
    train, valid, a2l, l2a = world_paths(world, "vqa")
    data = load_task_data("vqa", train, valid, world.open_features(),
                          load_tokenizer(world.vocab), a2l, l2a, loss="ce", max_boxes=12)
    return data.train.make_batch(list(range(BATCH))), data.valid.make_batch([0, 1, 2, 3]), \
        data.train.tokenizer.get_vocab_size(), len(data.answers.label2ans)


def _config(vocab, answers):
    return dict(vocab_size=vocab, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                l_layers=1, x_layers=1, r_layers=1, num_qa_labels=answers,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, kernel_impl="torch",
                qa_loss="ce")


def _lora(model):
    torch.manual_seed(7)  # the adapters' initialisation: the same for both classes
    config = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS,
                             modules_to_save=["answer_head"])
    return peft.get_peft_model(model, config)


def _train(model, batch):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    model.train()
    for _ in range(STEPS):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def test_lora_trains_saves_and_reloads(vqa, tmp_path):
    train, valid, vocab, answers = vqa
    cfg = _config(vocab, answers)
    torch.manual_seed(0)
    base = lxmert_fast.LxmertForQuestionAnswering(LxmertConfig(**cfg))
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    theirs = transformers.LxmertForQuestionAnswering(hf_config(**cfg))
    theirs.load_state_dict(base_state)
    ours = _lora(base)
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    assert any(".visual_attention.att.query.lora_A" in n for n in trainable)
    losses = _train(ours, train)
    expected = _train(_lora(theirs), train)
    assert losses[-1] < 0.7 * losses[0], losses
    for step, (a, b) in enumerate(zip(losses, expected)):
        assert abs(a - b) <= 1e-4 * abs(b), f"step {step}: ours {a} vs transformers {b}"

    ours.eval()
    with torch.no_grad():
        tuned = ours(**valid).question_answering_score
    ours.save_pretrained(str(tmp_path))
    assert (tmp_path / "adapter_model.safetensors").is_file()
    fresh = lxmert_fast.LxmertForQuestionAnswering(LxmertConfig(**cfg))
    fresh.load_state_dict(base_state)
    with torch.no_grad():
        untuned = fresh.eval()(**valid).question_answering_score
    reloaded = peft.PeftModel.from_pretrained(fresh, str(tmp_path)).eval()
    with torch.no_grad():
        again = reloaded(**valid).question_answering_score
        merged = reloaded.merge_and_unload()(**valid).question_answering_score
    assert torch.equal(again, tuned)
    assert (untuned - tuned).abs().max() > 1e-2  # the adapters change the model
    assert (merged - tuned).abs().max() <= 1e-5  # and run inside our layers, as merged weights
