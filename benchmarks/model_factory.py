"""Factories for the model benchmarks: one setting per machine, random but valid LXMERT pretraining
batches, models with shared weights, and the matmul FLOPs of a step counted from the config.

Settings (``setting_for``): on a GPU the DESIGN.md section 3 step (batch 256, 20 tokens, 36 objects,
all five losses, bf16 autocast, fused AdamW); on CPU batch 8 in fp32 with the default config and
``kernel_impl="torch"``; under ``--benchmark-disable`` without a GPU, a tiny config at batch 2 so
the suite runs as a quick plain test.
"""
from dataclasses import dataclass, field
from typing import Optional

import torch

CLS_ID, SEP_ID, MASK_ID = 101, 102, 103
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense bf16 tensor-core peak (SXM)
TINY = dict(hidden_size=64, num_attention_heads=4, intermediate_size=128, l_layers=2, x_layers=1,
            r_layers=1, vocab_size=512, num_qa_labels=11, num_object_labels=13,
            num_attr_labels=7, visual_feat_dim=48, max_position_embeddings=64)


@dataclass
class Setting:
    name: str
    device: str
    batch: int
    amp_dtype: Optional[torch.dtype]
    impl: str
    seq_len: int = 20
    num_boxes: int = 36
    config: dict = field(default_factory=dict)

    @property
    def shapes(self) -> dict:
        return {"batch": self.batch, "tokens": self.seq_len, "objects": self.num_boxes,
                "dtype": str(self.amp_dtype or torch.float32).replace("torch.", ""),
                "kernel_impl": self.impl, "config": self.config or "default"}


def setting_for(quick: bool) -> Setting:
    if torch.cuda.is_available():
        return Setting("gpu", "cuda", 256, torch.bfloat16, "auto")
    if quick:
        return Setting("smoke", "cpu", 2, None, "torch", seq_len=9, num_boxes=6, config=TINY)
    return Setting("cpu", "cpu", 8, None, "torch")


def config_kwargs(setting: Setting) -> dict:
    return dict(setting.config)


def make_batch(setting: Setting, cfg, seed: int = 0) -> dict:
    """Model keyword args for ``LxmertForPreTraining``: tokens with [CLS]/[SEP] and padding, 15%
    masked tokens, boxes and RoI features, 15% masked objects, matched labels, answers (-100 on
    mismatched pairs, as the original uses QA only on matched ones)."""
    g = torch.Generator().manual_seed(seed)
    b, length, n, feat = setting.batch, setting.seq_len, setting.num_boxes, cfg.visual_feat_dim
    lengths = torch.randint(max(3, length // 2), length + 1, (b,), generator=g)
    lengths[0] = length
    pos = torch.arange(length)[None, :]
    attention_mask = (pos < lengths[:, None]).long()  # (B, L)
    input_ids = torch.randint(1000, cfg.vocab_size, (b, length), generator=g) \
        if cfg.vocab_size > 1000 else torch.randint(104, cfg.vocab_size, (b, length), generator=g)
    input_ids[:, 0] = CLS_ID
    input_ids[pos == (lengths[:, None] - 1)] = SEP_ID
    input_ids = input_ids * attention_mask
    inner = (pos > 0) & (pos < lengths[:, None] - 1)
    masked = inner & (torch.rand(b, length, generator=g) < 0.15)
    masked[0, 1] = True
    labels = torch.where(masked, input_ids, torch.full_like(input_ids, -100))
    input_ids = torch.where(masked, torch.full_like(input_ids, MASK_ID), input_ids)

    visual_feats = torch.rand(b, n, feat, generator=g)  # post-ReLU RoI features are >= 0
    xy = torch.rand(b, n, 2, generator=g) * 0.8
    wh = 0.05 + torch.rand(b, n, 2, generator=g) * 0.15
    visual_pos = torch.cat([xy, xy + wh], dim=-1)  # (B, N, 4): x1, y1, x2, y2
    boxes = torch.randint(max(1, n // 3), n + 1, (b,), generator=g)
    boxes[0] = n
    visual_attention_mask = (torch.arange(n)[None, :] < boxes[:, None]).float()  # (B, N)
    obj_mask = (torch.rand(b, n, generator=g) < 0.15).float() * visual_attention_mask
    conf = torch.rand(b, n, generator=g)
    obj_labels = {
        "obj": (torch.randint(0, cfg.num_object_labels, (b, n), generator=g), obj_mask * conf),
        "attr": (torch.randint(0, cfg.num_attr_labels, (b, n), generator=g), obj_mask * conf),
        "feat": (visual_feats.clone(), obj_mask),
    }
    visual_feats = visual_feats * (1 - obj_mask)[..., None]  # masked objects are zeroed
    matched_label = torch.randint(0, 2, (b,), generator=g)
    matched_label[0] = 1
    ans = torch.randint(0, cfg.num_qa_labels, (b,), generator=g)
    ans = torch.where(matched_label == 1, ans, torch.full_like(ans, -100))
    batch = dict(input_ids=input_ids, attention_mask=attention_mask,
                 token_type_ids=torch.zeros_like(input_ids), visual_feats=visual_feats,
                 visual_pos=visual_pos, visual_attention_mask=visual_attention_mask,
                 labels=labels, obj_labels=obj_labels, matched_label=matched_label, ans=ans)
    return to_device(batch, setting.device)


def to_device(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(to_device(v, device) for v in obj)
    return obj


def model_inputs(batch: dict) -> dict:
    """The subset ``LxmertModel`` takes (no labels)."""
    keys = ("input_ids", "attention_mask", "token_type_ids", "visual_feats", "visual_pos",
            "visual_attention_mask")
    return {k: batch[k] for k in keys}


def _layer_macs(hidden, inter, tokens):
    """Multiply-accumulates of one BERT layer's projections (Q, K, V, O) and FFN over ``tokens``
    (the score and context matmuls are counted separately)."""
    return (4 * hidden * hidden + 2 * hidden * inter) * tokens


def forward_flops(cfg, seq_len: int, num_boxes: int, heads: bool = True) -> float:
    """Matmul FLOPs of one sample's forward pass (2 x multiply-accumulates), counted from the
    config; backward is twice that. Default config, 20 tokens, 36 objects, all heads: ~11.8 GFLOP,
    so ~35.5 GFLOP per sample forward+backward as in DESIGN.md section 3."""
    h, i, length, n = cfg.hidden_size, cfg.intermediate_size, seq_len, num_boxes
    macs = cfg.l_layers * _layer_macs(h, i, length) + cfg.r_layers * _layer_macs(h, i, n)
    macs += cfg.x_layers * (2 * _layer_macs(h, i, length + n)  # self + FFN both streams,
                            - 2 * h * i * (length + n))        # cross-att has no FFN
    attn = 2 * h * (cfg.l_layers * length * length + cfg.r_layers * n * n
                    + cfg.x_layers * (length * length + n * n + 2 * length * n))
    macs += attn + cfg.visual_feat_dim * h * n + cfg.visual_pos_dim * h * n + h * h  # + pooler
    if heads:
        macs += (h * h + h * cfg.vocab_size) * length  # MLM transform + tied decoder
        macs += (h * h + h * (cfg.num_object_labels + cfg.num_attr_labels
                              + cfg.visual_feat_dim)) * n  # object heads
        macs += h * 2 * h + 2 * h * cfg.num_qa_labels + 2 * h  # QA head, matching head
    return 2.0 * macs


def peak_tflops() -> Optional[float]:
    """Dense bf16 peak of the current GPU when known (for MFU), else None."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
