"""Batches of the fine-tuning tasks: records + tokenizer + feature API -> model keyword args.

As the original's ``*TorchDataset`` / ``convert_sents_to_features`` (``src/lxrt/entry.py``):
WordPiece tokens truncated to ``max_seq_len - 2``, then ``[CLS] ... [SEP]``, token types 0,
attention mask 1 on real tokens (padding to the longest sentence of the batch instead of always
to 20: the masked positions do not change any output); up to ``max_boxes`` objects per image with
boxes normalised by image width/height (the feature API's ``gather``). NLVR2 stacks the two
images of a pair: ``visual_feats`` (B, 2, N, D), ``visual_pos`` (B, 2, N, 4).

Targets: VQA/GQA ``"bce"`` (B, num_answers) soft scores (the original's BCE target), ``"ce"``
(B,) the best known answer or -100; NLVR2 (B,) 0/1. ``make_batch`` is a pure function of the
indices, so any rank or resume point rebuilds the same batch.

``records`` is a list of records.py records, or a prepared split (prepared_records.py: the
records as memory-mapped arrays, tokenised once; batches take their tokens with numpy). Both give
the same batches.
"""
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .answers import AnswerLabels
from .prepared_records import PreparedRecords
from .records import Nlvr2Record, QARecord, Record, check_task, image_ids

LOSSES = ("bce", "ce")


class TaskDataError(ValueError):
    """Records and features/answers do not fit; the message names the ids."""


class TaskDataset:
    """Indexable fine-tuning examples of one split (``len``, ``records``, ``make_batch``)."""

    def __init__(self, task: str, records: Sequence[Record], features, tokenizer,
                 answers: Optional[AnswerLabels] = None, max_seq_len: int = 20,
                 max_boxes: int = 36, loss: str = "bce"):
        self.task = check_task(task)
        if task != "nlvr2" and answers is None:
            raise TaskDataError(f"task {task!r} needs an answer table (ans2label.json)")
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r}; expected one of {LOSSES}")
        if max_seq_len < 3:
            raise ValueError(f"max_seq_len={max_seq_len} leaves no room for a token "
                             "between [CLS] and [SEP]")
        kind = Nlvr2Record if task == "nlvr2" else QARecord
        if isinstance(records, PreparedRecords):
            if records.task != task:
                raise TaskDataError(f"task {task!r} got the prepared {records.task} split "
                                    f"{records.corpus.path}")
            if records.corpus.key["max_seq_len"] != max_seq_len:
                raise TaskDataError(f"{records.corpus.path} was prepared for max_seq_len "
                                    f"{records.corpus.key['max_seq_len']}, not {max_seq_len}")
            self.records = records
        else:
            bad = next((r for r in records if not isinstance(r, kind)), None)
            if bad is not None:
                raise TaskDataError(f"task {task!r} got a {type(bad).__name__} (id "
                                    f"{bad.qid!r})")
            self.records = list(records)
        self.features, self.tokenizer, self.answers = features, tokenizer, answers
        self.max_seq_len, self.max_boxes, self.loss = max_seq_len, max_boxes, loss
        self._check_images()
        self._cls, self._sep, self._pad = (self._token_id(t) for t in ("[CLS]", "[SEP]", "[PAD]"))

    def __len__(self):
        return len(self.records)

    def image_ids(self) -> List[str]:
        """Every image of the split, in first-use order."""
        if isinstance(self.records, PreparedRecords):
            return self.records.image_ids()
        return image_ids(self.records)

    def _check_images(self):
        missing = [img for img in self.image_ids() if img not in self.features]
        if missing:
            raise TaskDataError(f"{len(missing)} image(s) of the {self.task} records are not in "
                                f"the feature store ({len(self.features)} images), e.g. "
                                f"{missing[:5]}")

    def _token_id(self, token: str) -> int:
        tid = self.tokenizer.token_to_id(token)
        if tid is None:
            raise TaskDataError(f"the tokenizer's vocabulary has no {token} token")
        return tid

    def encode(self, sents: Sequence[str]) -> Dict[str, torch.Tensor]:
        """input_ids / token_type_ids / attention_mask (B, L), L = the longest in the batch."""
        encs = self.tokenizer.encode_batch([s.strip() for s in sents], add_special_tokens=False)
        rows = [[self._cls] + e.ids[:self.max_seq_len - 2] + [self._sep] for e in encs]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self._pad, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        return {"input_ids": ids, "token_type_ids": torch.zeros_like(ids),
                "attention_mask": mask}

    def encode_prepared(self, indices: Sequence[int]) -> Dict[str, torch.Tensor]:
        """``encode`` of the examples' texts, from a prepared split's tokens (no tokenizer)."""
        tokens, n = self.records.token_rows(np.asarray(indices, dtype=np.int64))
        B, L = len(n), int(n.max()) + 2
        ids = np.full((B, L), self._pad, dtype=np.int64)
        ids[:, 0] = self._cls
        valid = np.arange(tokens.shape[1])[None, :] < n[:, None]
        ids[:, 1:tokens.shape[1] + 1] = np.where(valid, tokens, self._pad)
        ids[np.arange(B), n + 1] = self._sep
        mask = (np.arange(L)[None, :] < (n + 2)[:, None]).astype(np.int64)
        ids = torch.from_numpy(ids)
        return {"input_ids": ids, "token_type_ids": torch.zeros_like(ids),
                "attention_mask": torch.from_numpy(mask)}

    def image_derangement(self, seed: int = 0) -> Dict[str, str]:
        """A fixed map of this split's images onto each other with no image left in place (the
        shuffled-image control of the evaluation; one cycle through a seeded permutation)."""
        imgs = self.image_ids()
        if len(imgs) < 2:
            raise TaskDataError(f"the shuffled-image control needs >= 2 images, the {self.task} "
                                f"split has {len(imgs)}")
        order = np.random.default_rng([seed, 11]).permutation(len(imgs))
        return {imgs[a]: imgs[b] for a, b in zip(order, np.roll(order, -1))}

    def _visual(self, recs: Sequence[Record],
                image_map: Optional[Dict[str, str]] = None) -> Dict[str, torch.Tensor]:
        pair = self.task == "nlvr2"
        imgs = [i for r in recs for i in ((r.img0, r.img1) if pair else (r.img_id,))]
        if image_map is not None:
            imgs = [image_map[i] for i in imgs]
        g = self.features.gather(imgs, max_boxes=self.max_boxes)
        feats, pos = g["features"].float(), g["boxes"].float()
        mask = g["box_mask"].long()
        if pair:  # (2B, N, .) -> (B, 2, N, .)
            feats = feats.view(len(recs), 2, *feats.shape[1:])
            pos = pos.view(len(recs), 2, *pos.shape[1:])
            mask = mask.view(len(recs), 2, -1)
        return {"visual_feats": feats, "visual_pos": pos, "visual_attention_mask": mask}

    def targets(self, recs: Sequence[Record]) -> torch.Tensor:
        unlabelled = next((r for r in recs if r.label is None), None)
        if unlabelled is not None:
            raise TaskDataError(f"{self.task} record {unlabelled.qid!r} has no label "
                                "(a test split cannot be trained on)")
        if self.task == "nlvr2":
            return torch.tensor([r.label for r in recs], dtype=torch.long)
        if self.loss == "bce":
            return self.answers.soft_targets(recs)
        return self.answers.hard_targets(recs)

    def make_batch(self, indices: Sequence[int], with_labels: bool = True,
                   image_map: Optional[Dict[str, str]] = None) -> Dict:
        """Model keyword arguments for the examples at ``indices`` (``labels`` if asked);
        ``image_map`` (``image_derangement``) shows other images with the same sentences."""
        if len(indices) == 0:
            raise ValueError("make_batch got no indices")
        bad = next((i for i in indices if not 0 <= int(i) < len(self.records)), None)
        if bad is not None:
            raise IndexError(f"example index {bad} out of range [0, {len(self.records)})")
        recs = [self.records[int(i)] for i in indices]
        batch = (self.encode_prepared(indices) if isinstance(self.records, PreparedRecords)
                 else self.encode([r.sent for r in recs]))
        batch.update(self._visual(recs, image_map))
        if with_labels:
            batch["labels"] = self.targets(recs)
        return batch

    def prediction_items(self, indices: Sequence[int], predicted: Sequence[int]) -> List:
        """(record id, file id, prediction) triples: VQA/GQA answer strings under the question
        id; NLVR2 0/1, scored by uid and written under the pair's ``identifier``."""
        out = []
        for i, p in zip(indices, predicted):
            rec = self.records[int(i)]
            if self.task == "nlvr2":
                out.append((rec.qid, rec.identifier, int(p)))
            else:
                ans = self.answers.answer(int(p))
                out.append((rec.qid, rec.qid, ans))
        return out
