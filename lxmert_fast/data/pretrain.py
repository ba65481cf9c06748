"""LXMERT pretraining examples and batches (the original's five tasks), over a prepared corpus,
built per batch with numpy and reproducible per example index (issue 23).

``PretrainDataset`` has one example per (image, sentence) of the records, read from a prepared
corpus (prepared.py: flat arrays through np.memmap, made once and cached by ``ensure_prepared``;
a process holds O(images) Python state). ``make_packed(indices)`` builds a batch: [CLS]/[SEP]
text padded to ``max_seq_len``; the corruptions of draws.py (words 80/10/10 at 15%, or at the
grounded-word rate; objects 80/10/10 at 15%); matching negatives (p = 0.5: a sentence of another
image, ``matched_label`` 0); the QA answer (sampled by score) only for matched examples with a
pruned soft label, else -100. As in the original, words are masked and objects corrupted whether
or not the pair is matched; a task switched off draws nothing and gets ``None`` labels.

Randomness: every draw of example ``i`` in epoch ``e`` is counter_rng's hash of (seed, e, i, its
slot) (eval mode: epoch 0), so an example is the same whichever batch, rank, worker, world size
or resumed run builds it.

Features leave the host once, as the store's float16: a packed batch carries the features of
the images shown (or, with a device feature table, their indices), the masks of the object
corruption and the few lent rows that replace features (padded to a fixed capacity), and
batch.unpack_visual makes the model's float inputs, the corruption and the regression target on
the device. ``make_batch`` is the same batch unpacked on the CPU in float32: the model keyword
arguments (input_ids, token_type_ids, attention_mask (B, L); visual_feats (B, N, D); visual_pos
(B, N, 4); visual_attention_mask (B, N); labels; obj_labels {"obj": (ids, weight), "attr": (ids,
weight), "feat": (target, mask)}; matched_label, ans (B,)).
``obj_loss_weighting``: "conf" = the original code (obj/attr weighted by the detector confidence
over every real box), "mask_conf" = mask x confidence, "mask" = the mask alone.
"""
import os
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from . import counter_rng as crng
from .answers import AnswerTable
from .batch import PackedVisual, lent_capacity, unpack_visual
from .draws import choose_answers, mask_objects, mask_words
from .masking import IGNORE_INDEX
from .prepared import PreparedCorpus, open_prepared, vocab_digest

OBJ_LOSS_WEIGHTINGS = ("conf", "mask_conf", "mask")


def open_corpus(source, tokenizer, max_seq_len: int, answer_table: Optional[AnswerTable],
                cache_dir: Optional[str]) -> PreparedCorpus:
    """A PreparedCorpus, a prepared directory, or JSON record file(s) (prepared and cached)."""
    if isinstance(source, PreparedCorpus):
        return source
    paths = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    if len(paths) == 1 and os.path.isdir(paths[0]):
        return open_prepared(os.fspath(paths[0]), {"version": 1, "max_seq_len": max_seq_len,
                                                   "vocab_sha256": vocab_digest(tokenizer)})
    from .prepare import ensure_prepared

    missing = [str(p) for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"pretraining record file(s) not found: {missing}")
    return ensure_prepared([os.fspath(p) for p in paths], tokenizer, max_seq_len, answer_table,
                           cache_dir, show=False)


class PretrainDataset:
    """One example per (image, sentence); see the module docstring."""

    def __init__(self, records: Union[str, Sequence[str], PreparedCorpus], features, tokenizer,
                 answer_table: Optional[AnswerTable] = None, max_seq_len: int = 20,
                 max_boxes: int = 36, seed: int = 0, task_mask_lm: bool = True,
                 task_obj_predict: bool = True, task_matched: bool = True, task_qa: bool = True,
                 obj_loss_weighting: str = "conf", train: bool = True,
                 word_mask_rate: float = 0.15, obj_mask_rate: float = 0.15,
                 grounded_words: Optional[Sequence[str]] = None,
                 grounded_mask_rate: Optional[float] = None, cache_dir: Optional[str] = None):
        if obj_loss_weighting not in OBJ_LOSS_WEIGHTINGS:
            raise ValueError(f"obj_loss_weighting={obj_loss_weighting!r}: expected one of "
                             f"{OBJ_LOSS_WEIGHTINGS}")
        if max_seq_len < 3:
            raise ValueError(f"max_seq_len={max_seq_len}: needs room for [CLS], a token, [SEP]")
        self.corpus = open_corpus(records, tokenizer, max_seq_len, answer_table, cache_dir)
        self.answer_table = AnswerTable(self.corpus.answers)
        if answer_table is not None and answer_table.all_answers() != self.corpus.answers:
            raise ValueError(f"{self.corpus.path} was prepared with another answer table "
                             f"({len(self.corpus.answers)} answers, {len(answer_table)} given)")
        self.features = features
        self.max_seq_len, self.max_boxes, self.seed = max_seq_len, max_boxes, seed
        self.task_mask_lm, self.task_obj_predict = task_mask_lm, task_obj_predict
        self.task_matched, self.task_qa, self.qa_enabled = task_matched, task_qa, task_qa
        self.obj_loss_weighting, self.train = obj_loss_weighting, train
        self.word_mask_rate, self.obj_mask_rate = word_mask_rate, obj_mask_rate
        self.epoch = 0
        self._index_images()
        self._special_tokens(tokenizer)
        self.grounded_ids = self._grounded_ids(tokenizer, grounded_words or ())
        if grounded_mask_rate is not None and not len(self.grounded_ids):
            raise ValueError(f"grounded_mask_rate={grounded_mask_rate} needs grounded words "
                             f"(none of {len(grounded_words or ())} given is one vocab token)")
        self.grounded_mask_rate = grounded_mask_rate

    def _index_images(self) -> None:
        """Image positions -> feature-store indices and box counts (O(images))."""
        self.images: List[str] = self.corpus.images
        missing = [img for img in self.images if img not in self.features]
        if missing:
            raise KeyError(f"{len(missing)} image(s) of the pretraining records are not in the "
                           f"features ({len(self.features)} images), e.g. {missing[:5]}")
        self._feat_index = np.array([self.features.index(img) for img in self.images],
                                    dtype=np.int64)
        self._store_boxes = np.minimum(_boxes_per_image(self.features), self.max_boxes)
        self._num_boxes = self._store_boxes[self._feat_index]
        if self.task_matched and len(self.images) < 2:
            raise ValueError("task_matched needs sentences of at least 2 images")

    def _special_tokens(self, tokenizer) -> None:
        vocab = tokenizer.get_vocab()
        for tok in ("[CLS]", "[SEP]", "[MASK]", "[PAD]"):
            if tok not in vocab:
                raise KeyError(f"tokenizer vocab has no {tok} token")
        self.cls_id, self.sep_id = vocab["[CLS]"], vocab["[SEP]"]
        self.mask_id, self.vocab_size = vocab["[MASK]"], tokenizer.get_vocab_size()

    @staticmethod
    def _grounded_ids(tokenizer, words: Sequence[str]) -> np.ndarray:
        """Sorted token ids of the grounded words that are one WordPiece token (a multi-piece
        word's pieces also occur in other words, so they are left out)."""
        if not words:
            return np.zeros(0, dtype=np.int64)
        encoded = tokenizer.encode_batch(list(words), add_special_tokens=False)
        return np.unique(np.array([e.ids[0] for e in encoded if len(e.ids) == 1],
                                  dtype=np.int64))

    def __len__(self) -> int:
        return len(self.corpus)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def enable_qa(self, flag: bool) -> None:
        """Switch QA labels on/off (the original adds the QA loss from a chosen epoch)."""
        self.qa_enabled = bool(flag) and self.task_qa

    def image_of(self, indices) -> np.ndarray:
        """Image positions (into ``images``) of examples ``indices``."""
        return self.corpus.image[np.asarray(indices, dtype=np.int64)].astype(np.int64)

    def batch_meta(self, indices: Sequence[int]) -> List[Dict]:
        """uid, img_id, source, sentence and pruned label of each example (for QA evaluation)."""
        c = self.corpus
        return [{"uid": c.uid(i), "img_id": self.images[int(c.image[i])],
                 "source": c.sources[int(c.source[i])], "sent": c.sentence(i),
                 "label": c.label(i)} for i in (int(i) for i in indices)]

    def _uniform(self, stream: str, idx: np.ndarray, slots: int = 1) -> np.ndarray:
        return crng.uniform(self.seed, self.epoch if self.train else 0, stream, idx, slots)

    def _sentences(self, idx: np.ndarray):
        """(sentence shown, matched 0/1) per example: a negative is a sentence of another image,
        uniform over them (the original's rejection sampling, without the loop)."""
        if not self.task_matched:
            return idx, np.ones(len(idx), dtype=np.int64)
        c, img = self.corpus, self.image_of(idx)
        negative = self._uniform("matched", idx)[:, 0] < 0.5
        start, stop = c.image_start[img], c.image_start[img + 1]
        j = crng.below(self._uniform("negative", idx)[:, 0], len(c) - (stop - start))
        j = j + (stop - start) * (j >= start)
        other = c.by_image[j].astype(np.int64)
        return np.where(negative, other, idx), (~negative).astype(np.int64)

    def _text(self, idx: np.ndarray, sent: np.ndarray) -> Dict[str, torch.Tensor]:
        c, B, L = self.corpus, len(idx), self.max_seq_len
        T = L - 2
        tid = c.text_id[sent].astype(np.int64)
        lo = c.tok_offsets[tid]
        n = np.minimum(c.tok_offsets[tid + 1] - lo, T)
        col = np.arange(T)[None, :]
        valid = col < n[:, None]
        tokens = np.where(valid, c.tokens[np.where(valid, lo[:, None] + col, 0)], 0)
        labels = np.full((B, L), IGNORE_INDEX, dtype=np.int64)
        if self.task_mask_lm:
            prob = self._uniform("word_prob", idx, T)
            rand = crng.below(self._uniform("word_token", idx, T), self.vocab_size)
            tokens, lm = mask_words(tokens, n, prob, rand, self.mask_id, self.word_mask_rate,
                                    self.grounded_ids, self.grounded_mask_rate)
            labels[:, 1:T + 1] = np.where(valid, lm, IGNORE_INDEX)
        input_ids = np.zeros((B, L), dtype=np.int64)
        input_ids[:, 0] = self.cls_id
        input_ids[:, 1:T + 1] = np.where(valid, tokens, 0)
        input_ids[np.arange(B), n + 1] = self.sep_id
        attention = (np.arange(L)[None, :] < (n + 2)[:, None]).astype(np.int64)
        return {"input_ids": torch.from_numpy(input_ids),
                "token_type_ids": torch.zeros((B, L), dtype=torch.long),
                "attention_mask": torch.from_numpy(attention),
                "labels": torch.from_numpy(labels) if self.task_mask_lm else None}

    def item_counts(self, indices) -> Dict[str, int]:
        """How many items the variable-count losses have over examples ``indices``: masked
        tokens ("mlm") and QA answers ("qa"), as make_packed draws them (for normalising each
        loss by its count over the whole global batch: training/step.py)."""
        idx = np.asarray(indices, dtype=np.int64)
        sent, matched = self._sentences(idx)
        out = {}
        if self.task_mask_lm:
            out["mlm"] = int((self._text(idx, sent)["labels"] >= 0).sum())
        if self.qa_enabled:
            c = self.corpus
            labelled = c.label_offsets[idx + 1] > c.label_offsets[idx]
            out["qa"] = int((labelled & (matched == 1)).sum())
        return out

    def _answers(self, idx: np.ndarray, matched: np.ndarray) -> Optional[torch.Tensor]:
        if not self.qa_enabled:
            return None
        c = self.corpus
        ans = choose_answers(c.label_offsets, c.label_ids, c.label_scores, idx,
                             self._uniform("answer", idx)[:, 0])
        return torch.from_numpy(np.where(matched == 1, ans, IGNORE_INDEX))

    def _objects(self, idx: np.ndarray, box_mask: np.ndarray, B: int) -> Dict:
        """The corruption masks and the lent rows (padded to ``lent_capacity``)."""
        N = self.max_boxes
        m = mask_objects(self._uniform("obj_prob", idx, N), self._uniform("obj_image", idx, N),
                         self._uniform("obj_box", idx, N), self.image_of(idx), len(self.images),
                         box_mask, self.obj_mask_rate)
        b, s = np.nonzero(m["replace"])
        lender = m["other_image"][b, s]
        box = (m["other_frac"][b, s] * self._num_boxes[lender]).astype(np.int64)
        cap = lent_capacity(len(b), B, N)
        slot = np.full(cap, B * N, dtype=np.int64)          # padding writes a spare row
        slot[:len(b)] = b * N + s
        image = np.zeros(cap, dtype=np.int64)
        image[:len(b)] = self._feat_index[lender]
        boxes = np.full(cap, -1, dtype=np.int64)
        boxes[:len(b)] = box
        return {"obj_chosen": torch.from_numpy(m["chosen"]),
                "obj_zero": torch.from_numpy(m["zero"]), "lent_slot": torch.from_numpy(slot),
                "lent_image": torch.from_numpy(image), "lent_box": torch.from_numpy(boxes)}

    def image_derangement(self, seed: int = 0) -> np.ndarray:
        """A fixed permutation of the image positions with no fixed point (the shuffled-image
        control of the evaluation): image ``p`` is replaced by image ``perm[p]``."""
        order = np.random.default_rng([seed, 11]).permutation(len(self.images))
        perm = np.empty(len(self.images), dtype=np.int64)
        perm[order] = np.roll(order, -1)     # one cycle through every image: never itself
        return perm

    def make_packed(self, indices: Sequence[int], image_perm: Optional[np.ndarray] = None,
                    features_on_device: bool = False) -> Dict:
        """The batch of examples ``indices`` as it leaves the host (module docstring):
        ``features_on_device`` carries store indices instead of features and lent rows.

        ``image_perm`` (from ``image_derangement``): every example gets the image
        ``image_perm[its image]`` instead of its own, with the same text, masking draws and
        labels (the object labels follow the image shown).
        """
        idx = np.asarray([int(i) for i in indices], dtype=np.int64)
        if not len(idx):
            raise ValueError("make_batch needs at least one example index")
        if idx.min() < 0 or idx.max() >= len(self):
            bad = int(idx[(idx < 0) | (idx >= len(self))][0])
            raise IndexError(f"example index {bad} out of range [0, {len(self)})")
        shown = self.image_of(idx)
        if image_perm is not None:
            if len(image_perm) != len(self.images):
                raise ValueError(f"image_perm has {len(image_perm)} entries for "
                                 f"{len(self.images)} images")
            shown = np.asarray(image_perm, dtype=np.int64)[shown]
        sent, matched = self._sentences(idx)
        batch = self._text(idx, sent)
        store_idx = self._feat_index[shown]
        visual = self._visual(store_idx, features_on_device)
        if self.task_obj_predict:
            visual.update(self._objects(idx, visual["box_mask"].numpy(), len(idx)))
            if not features_on_device:
                visual["lent_feats"] = torch.from_numpy(self._lent_rows(
                    visual["lent_image"].numpy(), visual["lent_box"].numpy()))
        batch["visual"] = visual
        batch["matched_label"] = torch.from_numpy(matched) if self.task_matched else None
        batch["ans"] = self._answers(idx, matched)
        return batch

    def _visual(self, store_idx: np.ndarray, on_device: bool) -> Dict:
        if on_device:
            count = self._store_boxes[store_idx]
            return PackedVisual(image_index=torch.from_numpy(store_idx),
                                box_mask=torch.from_numpy(np.arange(self.max_boxes)[None, :]
                                                          < count[:, None]),
                                obj_loss_weighting=self.obj_loss_weighting)
        g = self.features.gather(store_idx, max_boxes=self.max_boxes)
        return PackedVisual(feats=g["features"], boxes=g["boxes"], box_mask=g["box_mask"],
                            objects_id=g["objects_id"], objects_conf=g["objects_conf"],
                            attrs_id=g["attrs_id"], attrs_conf=g["attrs_conf"],
                            obj_loss_weighting=self.obj_loss_weighting)

    def _lent_rows(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """Features of the lent boxes (padding rows, box -1, are zeros)."""
        if hasattr(self.features, "box_rows"):
            return self.features.box_rows(image, box)
        g = self.features.gather(image, max_boxes=self.max_boxes)
        rows = g["features"].numpy()[np.arange(len(image)), np.clip(box, 0, None)].copy()
        rows[box < 0] = 0
        return rows

    def make_batch(self, indices: Sequence[int], image_perm: Optional[np.ndarray] = None) -> Dict:
        """Model keyword arguments of examples ``indices`` on the CPU in float32: the packed
        batch unpacked as the step does it on the device."""
        batch = self.make_packed(indices, image_perm)
        visual = batch.pop("visual")
        batch.update(unpack_visual(visual, torch.float32, self.task_obj_predict))
        return batch


def _boxes_per_image(features) -> np.ndarray:
    """Box count of every image of a feature source (store order)."""
    counts = getattr(features, "boxes_per_image", None)
    if counts is not None:
        return np.asarray(counts, dtype=np.int64)
    return np.array([len(features[img_id]["features"]) for img_id in features.ids],
                    dtype=np.int64)
