"""The fused operations the LXMERT model calls: one function per op.

The model calls only these functions. Each forwards to ``lxmert_fast.kernels``, whose files own
the pure-PyTorch reference, the Triton kernels and the autograd; ``impl`` ("auto" | "triton" |
"torch", from ``LxmertConfig.kernel_impl``) picks which runs. The model never imports triton.
"""
import torch

from lxmert_fast.kernels import attention, bias_gelu, cross_attention_pair, dropout_add_layer_norm

__all__ = ["attention", "cross_attention_pair", "dropout_add_layer_norm", "bias_gelu",
           "visual_feat_encoder"]


def visual_feat_encoder(feats, boxes, feat_w, feat_b, feat_ln_w, feat_ln_b, box_w, box_b,
                        box_ln_w, box_ln_b, eps=1e-12, dropout_p=0.0, training=True, impl="auto"):
    """LXMERT's visual embedding: (LN(feats W_f + b_f) + LN(boxes W_b + b_b)) / 2, then dropout.

    feats (B, N, F), boxes (B, N, 4) -> (B, N, hidden). The GEMMs (without bias) stay in torch;
    each bias add + LayerNorm is one ``dropout_add_layer_norm`` call with no residual (x_bias folds
    the linear bias in, so the biased GEMM output is never written), then one average and dropout.
    """
    if feats.shape[:-1] != boxes.shape[:-1]:
        raise ValueError(f"visual_feat_encoder: feats {tuple(feats.shape)} and boxes "
                         f"{tuple(boxes.shape)} must share (B, N)")
    x = torch.nn.functional.linear(feats, feat_w)  # (B, N, hidden)
    y = torch.nn.functional.linear(boxes, box_w)  # (B, N, hidden)
    fx = dropout_add_layer_norm(x, None, feat_ln_w, feat_ln_b, eps, 0.0, x_bias=feat_b, impl=impl)
    fy = dropout_add_layer_norm(y, None, box_ln_w, box_ln_b, eps, 0.0, x_bias=box_b, impl=impl)
    out = (fx + fy) * 0.5
    if dropout_p > 0:
        out = torch.nn.functional.dropout(out, p=dropout_p, training=training)
    return out
