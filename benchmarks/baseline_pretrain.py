"""The baseline of benchmarks/test_data_bench.py: lxmert_fast.data.pretrain.PretrainDataset as it
was before issue 23 (0e3fa60): a Python Example, a token array and a label dict per sentence,
draws from one numpy Generator per example, float32 features copied twice per batch. Kept only
to be measured beside the prepared-corpus path in the same run.

LXMERT pretraining examples and batches (the original's five tasks), reproducible per index.

``PretrainDataset`` holds one example per (image, sentence) of the pretraining records
(records.py) and builds model keyword-argument batches with ``make_batch(indices)``:
tokenisation to ``max_seq_len`` (20) with [CLS]/[SEP] and zero padding; the corruptions of
masking.py; matching negatives (p = 0.5: the sentence of an example of another image,
``matched_label`` 0); the QA label (answer id of the example's pruned soft label, sampled by
score) only for matched examples of QA sources with a known answer, else -100. As in the
original, words are masked and objects corrupted whether or not the pair is matched; a task
that is switched off draws nothing for it and returns ``None`` for its labels (no corruption).

Randomness: example ``i`` in epoch ``e`` uses ``np.random.default_rng([seed, e, i])`` and nothing
else (eval mode: ``[seed, 0, i]`` whatever the epoch), so any rank, worker or resumed run
reproduces a batch from its indices. Features come from one ``gather`` per batch on the feature
API (lxmert_fast.features: FeatureStore or TsvFeatures) for the batch's images and the other
images that lend replacement features.

Batch (B examples, L = max_seq_len, N = max_boxes): input_ids, token_type_ids (B, L) int64,
attention_mask (B, L) int64 1/0, visual_feats (B, N, 2048) float32, visual_pos (B, N, 4) float32
boxes normalised by image size, visual_attention_mask (B, N) float32 1/0, labels (B, L) int64
(-100 ignored), obj_labels {"obj": (ids int64, weight float32), "attr": (ids, weight),
"feat": (original feats float32, mask float32)}, matched_label (B,) int64, ans (B,) int64.
``obj_loss_weighting``: "conf" = the original code (obj/attr weighted by the detector
confidence over every real box), "mask_conf" = mask x confidence, "mask" = the mask alone.
"""
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from lxmert_fast.data.answers import AnswerTable
from lxmert_fast.data.masking import (IGNORE_INDEX, choose_answer, draw_object_mask, mask_words,
                                      restrict)
from lxmert_fast.data.records import Example, flatten, load_records

OBJ_LOSS_WEIGHTINGS = ("conf", "mask_conf", "mask")


class PretrainDataset:
    """One example per (image, sentence); see the module docstring."""

    def __init__(self, record_paths: Union[str, Sequence[str]], features, tokenizer,
                 answer_table: Optional[AnswerTable] = None, max_seq_len: int = 20,
                 max_boxes: int = 36, seed: int = 0, task_mask_lm: bool = True,
                 task_obj_predict: bool = True, task_matched: bool = True, task_qa: bool = True,
                 obj_loss_weighting: str = "conf", train: bool = True,
                 word_mask_rate: float = 0.15, obj_mask_rate: float = 0.15,
                 grounded_words: Optional[Sequence[str]] = None,
                 grounded_mask_rate: Optional[float] = None):
        if obj_loss_weighting not in OBJ_LOSS_WEIGHTINGS:
            raise ValueError(f"obj_loss_weighting={obj_loss_weighting!r}: expected one of "
                             f"{OBJ_LOSS_WEIGHTINGS}")
        if max_seq_len < 3:
            raise ValueError(f"max_seq_len={max_seq_len}: needs room for [CLS], a token, [SEP]")
        records = load_records(record_paths)
        self.answer_table = answer_table if answer_table is not None else AnswerTable.build(records)
        self.features, self.tokenizer = features, tokenizer
        self.max_seq_len, self.max_boxes, self.seed = max_seq_len, max_boxes, seed
        self.task_mask_lm, self.task_obj_predict = task_mask_lm, task_obj_predict
        self.task_matched, self.task_qa, self.qa_enabled = task_matched, task_qa, task_qa
        self.obj_loss_weighting, self.train = obj_loss_weighting, train
        self.word_mask_rate, self.obj_mask_rate = word_mask_rate, obj_mask_rate
        self.epoch = 0
        self.examples: List[Example] = flatten(records)
        if not self.examples:
            raise ValueError(f"no sentences in the pretraining records {record_paths}")
        self._index_images()
        self._tokenize()
        self.grounded_ids = self._grounded_ids(grounded_words or ())
        if grounded_mask_rate is not None and not len(self.grounded_ids):
            raise ValueError(f"grounded_mask_rate={grounded_mask_rate} needs grounded words "
                             f"(none of {len(grounded_words or ())} given is one vocab token)")
        self.grounded_mask_rate = grounded_mask_rate
        self._labels = [None if ex.label is None else
                        {self.answer_table.ans2id(a): s
                         for a, s in self.answer_table.prune_label(ex.label).items()}
                        for ex in self.examples]

    def _index_images(self) -> None:
        missing = sorted({ex.img_id for ex in self.examples if ex.img_id not in self.features})
        if missing:
            raise KeyError(f"{len(missing)} image(s) of the pretraining records are not in the "
                           f"features ({len(self.features)} images), e.g. {missing[:5]}")
        self.images: List[str] = sorted({ex.img_id for ex in self.examples})
        pos = {img: i for i, img in enumerate(self.images)}
        self._img_pos = np.array([pos[ex.img_id] for ex in self.examples], dtype=np.int64)
        self._feat_index = np.array([self.features.index(img) for img in self.images],
                                    dtype=np.int64)
        if self.task_matched and len(self.images) < 2:
            raise ValueError("task_matched needs sentences of at least 2 images")

    def _tokenize(self) -> None:
        vocab = self.tokenizer.get_vocab()
        for tok in ("[CLS]", "[SEP]", "[MASK]", "[PAD]"):
            if tok not in vocab:
                raise KeyError(f"tokenizer vocab has no {tok} token")
        self.cls_id, self.sep_id = vocab["[CLS]"], vocab["[SEP]"]
        self.mask_id, self.vocab_size = vocab["[MASK]"], self.tokenizer.get_vocab_size()
        sents = sorted({ex.sent.strip() for ex in self.examples})
        encoded = self.tokenizer.encode_batch(sents, add_special_tokens=False)
        keep = self.max_seq_len - 2
        ids = {s: np.asarray(e.ids[:keep], dtype=np.int64) for s, e in zip(sents, encoded)}
        self._tokens = [ids[ex.sent.strip()] for ex in self.examples]

    def _grounded_ids(self, words: Sequence[str]) -> np.ndarray:
        """Sorted token ids of the grounded words that are one WordPiece token (a multi-piece
        word's pieces also occur in other words, so they are left out)."""
        if not words:
            return np.zeros(0, dtype=np.int64)
        encoded = self.tokenizer.encode_batch(list(words), add_special_tokens=False)
        return np.unique(np.array([e.ids[0] for e in encoded if len(e.ids) == 1],
                                  dtype=np.int64))

    def __len__(self) -> int:
        return len(self.examples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def enable_qa(self, flag: bool) -> None:
        """Switch QA labels on/off (the original adds the QA loss from a chosen epoch)."""
        self.qa_enabled = bool(flag) and self.task_qa

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch if self.train else 0, int(index)])

    def batch_meta(self, indices: Sequence[int]) -> List[Dict]:
        """uid, img_id, source, sentence and pruned label of each example (for QA evaluation)."""
        return [{"uid": self.examples[i].uid, "img_id": self.examples[i].img_id,
                 "source": self.examples[i].source, "sent": self.examples[i].sent,
                 "label": None if self.examples[i].label is None
                 else self.answer_table.prune_label(self.examples[i].label)} for i in indices]

    def _draw(self, index: int) -> Dict:
        """All random choices of one example, in a fixed order from its own generator."""
        if not 0 <= index < len(self.examples):
            raise IndexError(f"example index {index} out of range [0, {len(self.examples)})")
        rng = self.rng(index)
        out = {"sent": index, "matched": 1}
        if self.task_matched and rng.random() < 0.5:
            out["matched"] = 0
            other = int(rng.integers(len(self.examples)))
            while self._img_pos[other] == self._img_pos[index]:
                other = int(rng.integers(len(self.examples)))
            out["sent"] = other
        tokens = self._tokens[out["sent"]]
        if self.task_mask_lm:
            out["ids"], out["lm"] = mask_words(tokens, rng, self.vocab_size, self.mask_id,
                                               self.word_mask_rate, self.grounded_ids,
                                               self.grounded_mask_rate)
        else:
            out["ids"], out["lm"] = tokens, np.full(len(tokens), IGNORE_INDEX)
        label = self._labels[index]
        out["ans"] = IGNORE_INDEX
        if self.qa_enabled and out["matched"] == 1 and label:
            out["ans"] = choose_answer(label, rng)
        if self.task_obj_predict:
            out["obj"] = draw_object_mask(rng, self.max_boxes, int(self._img_pos[index]),
                                          len(self.images), self.obj_mask_rate)
        return out

    def _text(self, draws: List[Dict]) -> Dict[str, torch.Tensor]:
        B, L = len(draws), self.max_seq_len
        input_ids = np.zeros((B, L), dtype=np.int64)
        labels = np.full((B, L), IGNORE_INDEX, dtype=np.int64)
        attention = np.zeros((B, L), dtype=np.int64)
        for b, d in enumerate(draws):
            n = len(d["ids"])
            input_ids[b, :n + 2] = np.concatenate([[self.cls_id], d["ids"], [self.sep_id]])
            labels[b, 1:n + 1] = d["lm"]
            attention[b, :n + 2] = 1
        return {"input_ids": torch.from_numpy(input_ids),
                "token_type_ids": torch.zeros((B, L), dtype=torch.long),
                "attention_mask": torch.from_numpy(attention),
                "labels": torch.from_numpy(labels) if self.task_mask_lm else None}

    def _gather(self, indices: Sequence[int], draws: List[Dict], images=None):
        """One gather for the batch's images and the images lending replacement features."""
        own = [int(self._img_pos[i]) for i in indices] if images is None else list(images)
        lenders = sorted({int(p) for d in draws if "obj" in d
                          for p in d["obj"].other_image[d["obj"].replace]})
        positions = sorted(set(own) | set(lenders))
        row = {p: r for r, p in enumerate(positions)}
        g = self.features.gather([int(self._feat_index[p]) for p in positions],
                                 max_boxes=self.max_boxes)
        return g, np.array([row[p] for p in own], dtype=np.int64), row

    def _visual(self, draws, g, rows, row) -> Dict:
        feats_all = g["features"].numpy()                      # (G, N, F) store dtype
        feats = feats_all[rows].astype(np.float32)             # (B, N, F)
        box_mask = g["box_mask"].numpy()[rows]                 # (B, N) bool
        out = {"visual_feats": torch.from_numpy(feats),
               "visual_pos": torch.from_numpy(g["boxes"].numpy()[rows].astype(np.float32)),
               "visual_attention_mask": torch.from_numpy(box_mask.astype(np.float32)),
               "obj_labels": None}
        if not self.task_obj_predict:
            return out
        masks = [restrict(d["obj"], box_mask[b]) for b, d in enumerate(draws)]
        chosen = np.stack([m.chosen for m in masks])
        masked = feats.copy()
        masked[np.stack([m.zero for m in masks])] = 0.0
        b_idx, slot = np.nonzero(np.stack([m.replace for m in masks]))
        if len(b_idx):
            lender = np.array([row[int(masks[b].other_image[s])] for b, s in zip(b_idx, slot)])
            frac = np.array([masks[b].other_frac[s] for b, s in zip(b_idx, slot)])
            k = (frac * g["num_boxes"].numpy()[lender]).astype(np.int64)
            masked[b_idx, slot] = feats_all[lender, k]
        mask = torch.from_numpy(chosen.astype(np.float32))
        out["visual_feats"] = torch.from_numpy(masked)
        rows_t = torch.from_numpy(rows)
        take = lambda key: g[key][rows_t]  # noqa: E731
        out["obj_labels"] = {
            "obj": (take("objects_id").long(), self._weight(take("objects_conf"), mask)),
            "attr": (take("attrs_id").long(), self._weight(take("attrs_conf"), mask)),
            "feat": (torch.from_numpy(feats), mask),
        }
        return out

    def _weight(self, conf: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.obj_loss_weighting == "conf":
            return conf.float()
        if self.obj_loss_weighting == "mask_conf":
            return conf.float() * mask
        return mask

    def image_derangement(self, seed: int = 0) -> np.ndarray:
        """A fixed permutation of the image positions with no fixed point (the shuffled-image
        control of the evaluation): image ``p`` is replaced by image ``perm[p]``."""
        order = np.random.default_rng([seed, 11]).permutation(len(self.images))
        perm = np.empty(len(self.images), dtype=np.int64)
        perm[order] = np.roll(order, -1)     # one cycle through every image: never itself
        return perm

    def make_batch(self, indices: Sequence[int], image_perm: Optional[np.ndarray] = None) -> Dict:
        """Model keyword arguments for examples ``indices`` (see the module docstring).

        ``image_perm`` (from ``image_derangement``): every example gets the image
        ``image_perm[its image]`` instead of its own, with the same text, masking draws and
        labels (the object labels follow the image shown).
        """
        indices = [int(i) for i in indices]
        if not indices:
            raise ValueError("make_batch needs at least one example index")
        draws = [self._draw(i) for i in indices]
        batch = self._text(draws)
        images = None
        if image_perm is not None:
            if len(image_perm) != len(self.images):
                raise ValueError(f"image_perm has {len(image_perm)} entries for "
                                 f"{len(self.images)} images")
            images = [int(image_perm[self._img_pos[i]]) for i in indices]
        g, rows, row = self._gather(indices, draws, images)
        batch.update(self._visual(draws, g, rows, row))
        batch["matched_label"] = (torch.tensor([d["matched"] for d in draws], dtype=torch.long)
                                  if self.task_matched else None)
        batch["ans"] = (torch.tensor([d["ans"] for d in draws], dtype=torch.long)
                        if self.qa_enabled else None)
        return batch
