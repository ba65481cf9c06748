"""The embedded default dataset: a learnable synthetic "world" in the exact LXMERT file formats.

``ensure_world()`` generates it once into a cache directory (``$LXMERT_FAST_CACHE`` or
``~/.cache/lxmert_fast``, sub-directory ``world-<version>-<seed>-<num_images>``): one feature TSV
(lxmert_fast.features.tsv format) holding the train and held-out images, LXMERT pretraining
records, VQA/GQA/NLVR2 fine-tuning splits with their answer tables (see world_splits.py), and
``world.json`` (classes, attributes and their label ids). Generation writes a temporary
directory, writes the ``COMPLETE`` marker last and renames it into place, under a file lock, so
concurrent ranks never see a partial world. It then converts the TSV to a feature store when the
C++ ``convert_tsv`` is available and picks the vocab (tokenization.resolve_vocab).
Everything is deterministic in the seed.

CLI: ``python -m lxmert_fast.data.world --out DIR [--num_images N] [--seed S]``.
"""
import argparse
import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Dict, Iterator, Optional

import numpy as np

from lxmert_fast.data import lexicon as lx
from lxmert_fast.data.synthetic_scenes import Prototypes, SceneSpec, make_scene, scene_record
from lxmert_fast.data.tokenization import resolve_vocab
from lxmert_fast.data.world_splits import DEFAULT_SENTENCES, build_splits
from lxmert_fast.features.tsv import write_obj_tsv

WORLD_VERSION = 4  # 4: four NLVR2-style statements per image (3: one)
DEFAULT_NUM_IMAGES = 1600
# Classes and objects per image of the embedded world: simpler than COCO (README) so that a few
# CPU minutes of pretraining ground words in the image. 46 classes with 2-7 (3-36 objects) per
# image, version 2's world, stays available as --world_scenes classes=46,per_image=2-7,objects=3-36.
DEFAULT_SCENES = SceneSpec(num_classes=12, classes_per_image=(1, 3), objects_per_image=(3, 12))
COMPLETE = "COMPLETE"
FEATURES_TSV = "features.tsv"
FEATURE_STORE = "features.store"
GROUNDED_WORDS = "grounded_words.txt"
SPLIT_NAMES = ("pretrain_train", "pretrain_valid", "vqa_train", "vqa_valid", "gqa_train",
               "gqa_valid", "nlvr2_train", "nlvr2_valid")
TABLE_NAMES = ("vqa_ans2label", "vqa_label2ans", "gqa_ans2label", "gqa_label2ans")


@dataclass
class World:
    """Paths of a generated world (see the module docstring)."""
    root: str
    features_tsv: str
    feature_store: Optional[str]
    vocab: Optional[str]
    splits: Dict[str, str]
    vqa_ans2label: str
    vqa_label2ans: str
    grounded_words: str
    gqa_ans2label: str
    gqa_label2ans: str
    meta: Dict = field(default_factory=dict)

    @classmethod
    def load(cls, root: str, feature_store: Optional[str] = None,
             vocab: Optional[str] = None) -> "World":
        if not os.path.isfile(os.path.join(root, COMPLETE)):
            raise FileNotFoundError(f"no complete synthetic world in {root} (missing {COMPLETE})")
        with open(os.path.join(root, "world.json")) as f:
            meta = json.load(f)
        path = lambda name: os.path.join(root, name + ".json")  # noqa: E731
        return cls(root=root, features_tsv=os.path.join(root, FEATURES_TSV),
                   feature_store=feature_store, vocab=vocab,
                   splits={name: path(name) for name in SPLIT_NAMES},
                   grounded_words=os.path.join(root, GROUNDED_WORDS),
                   **{name: path(name) for name in TABLE_NAMES}, meta=meta)

    def open_features(self):
        """The feature API over this world: a FeatureStore if one was built, else TsvFeatures."""
        if self.feature_store is not None:
            from lxmert_fast.features import FeatureStore
            return FeatureStore(self.feature_store)
        from lxmert_fast.features.reference import TsvFeatures   # pure Python, no extension
        return TsvFeatures([self.features_tsv])

    def sentences(self) -> Iterator[str]:
        """Every sentence of the training images' pretraining records (the corpus for a trained
        vocab: held-out sentences stay unseen)."""
        with open(self.splits["pretrain_train"]) as f:
            for rec in json.load(f):
                for sents in rec["sentf"].values():
                    yield from sents


def num_valid_images(num_images: int) -> int:
    """Held-out images: 1/16 of the world (100 of the default 1600), at least 2."""
    return max(2, num_images // 16)


def _dump_json(obj, path: str) -> None:
    with open(path, "w") as f:
        f.write(json.dumps(obj))


def sentence_counts(spec: Optional[str]) -> Dict[str, int]:
    """Sentences per image and source: the defaults, updated from ``"vqa=5,mscoco=1"``."""
    counts = dict(DEFAULT_SENTENCES)
    for item in filter(None, (spec or "").split(",")):
        key, _, value = item.partition("=")
        if key.strip() not in counts or not value.strip().isdigit():
            raise ValueError(f"sentences spec item {item!r}: expected SOURCE=N with SOURCE in "
                             f"{sorted(counts)} and N a non-negative integer")
        counts[key.strip()] = int(value)
    return counts


def scene_spec(text: Optional[str]) -> SceneSpec:
    """The default world's SceneSpec, updated from ``"classes=12,per_image=1-3,objects=3-12"``."""
    values = {"classes": DEFAULT_SCENES.num_classes, "per_image": DEFAULT_SCENES.classes_per_image,
              "objects": DEFAULT_SCENES.objects_per_image}
    for item in filter(None, (text or "").split(",")):
        key, _, value = (part.strip() for part in item.partition("="))
        lo, _, hi = value.partition("-")
        if key not in values or not lo.isdigit() or not (hi or lo).isdigit() or \
                (key == "classes" and hi):
            raise ValueError(f"world spec item {item!r}: expected classes=N, per_image=MIN-MAX "
                             f"or objects=MIN-MAX")
        values[key] = int(lo) if key == "classes" else (int(lo), int(hi or lo))
    return SceneSpec(values["classes"], values["per_image"], values["objects"])


def spec_text(spec: SceneSpec) -> str:
    (a, b), (c, d) = spec.classes_per_image, spec.objects_per_image
    return f"classes={spec.num_classes},per_image={a}-{b},objects={c}-{d}"


def _write_world(tmp: str, seed: int, num_images: int, sentences: Dict[str, int],
                 spec: SceneSpec) -> None:
    num_valid = num_valid_images(num_images)
    num_train = num_images - num_valid
    if num_train < 2:
        raise ValueError(f"num_images={num_images} is too small (needs >= {num_valid + 2})")
    names = [f"syn_train_{i:06d}" for i in range(num_train)]
    names += [f"syn_valid_{i:06d}" for i in range(num_valid)]
    scenes = [make_scene(name, np.random.default_rng([seed, 1, i]), spec)
              for i, name in enumerate(names)]
    protos = Prototypes(seed)
    records = (scene_record(s, protos, np.random.default_rng([seed, 3, i]))
               for i, s in enumerate(scenes))
    write_obj_tsv(os.path.join(tmp, FEATURES_TSV), records)
    files = build_splits(scenes[:num_train], scenes[num_train:], seed, sentences)
    for name, obj in files.items():
        _dump_json(obj, os.path.join(tmp, name + ".json"))
    meta = {"version": WORLD_VERSION, "seed": seed, "num_images": num_images,
            "num_train_images": num_train, "num_valid_images": num_valid,
            "classes": {c: lx.OBJECT_IDS[c] for c in spec.classes}, "scenes": spec_text(spec),
            "attributes": {a: lx.ATTR_IDS[a] for a in lx.ATTRIBUTES},
            "attrs_id_holds": "colour", "sentences_per_image": sentences,
            "sizes": {name: len(obj) for name, obj in files.items()}}
    _dump_json(meta, os.path.join(tmp, "world.json"))
    with open(os.path.join(tmp, GROUNDED_WORDS), "w") as f:
        f.write("\n".join(lx.grounded_words(spec.classes)) + "\n")
    with open(os.path.join(tmp, COMPLETE), "w") as f:
        f.write("ok\n")


@contextlib.contextmanager
def _locked(root: str):
    """An exclusive lock (fcntl) on ``<root>.lock`` while the body runs."""
    os.makedirs(os.path.dirname(os.path.abspath(root)), exist_ok=True)
    with open(os.path.abspath(root) + ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def generate_world(root: str, seed: int = 0, num_images: int = DEFAULT_NUM_IMAGES,
                   sentences: Optional[Dict[str, int]] = None,
                   spec: Optional[SceneSpec] = None) -> str:
    """Write the world into ``root`` unless a complete one is there; returns ``root``.

    ``sentences``: sentences per image for "mscoco", "vg", "vqa", "gqa" (default 2, 2, 3, 3);
    ``spec``: classes and objects per image (default ``DEFAULT_SCENES``).
    """
    root = os.path.abspath(root)
    if os.path.isfile(os.path.join(root, COMPLETE)):
        return root
    with _locked(root):
        if os.path.isfile(os.path.join(root, COMPLETE)):
            return root
        if os.path.isdir(root) and not os.listdir(root):
            os.rmdir(root)              # an empty directory made by the caller
        elif os.path.exists(root):
            raise FileExistsError(f"{root} exists but holds no complete synthetic world "
                                  f"(no {COMPLETE} marker); remove it or choose another --out")
        tmp = tempfile.mkdtemp(prefix=os.path.basename(root) + ".tmp-", dir=os.path.dirname(root))
        try:
            _write_world(tmp, seed, num_images, sentences or dict(DEFAULT_SENTENCES),
                         spec or DEFAULT_SCENES)
            os.rename(tmp, root)
        finally:
            if os.path.exists(tmp):
                shutil.rmtree(tmp)
    return root


def _ensure_store(root: str) -> Optional[str]:
    """Convert the TSV to a feature store once, if the C++ converter is available."""
    try:
        from lxmert_fast.features.store import convert_tsv
    except ImportError:          # the C++ extension is not built: callers use the TSV
        return None
    out = os.path.join(root, FEATURE_STORE)
    with _locked(out):
        if not os.path.exists(out):
            tmp = f"{out}.tmp-{os.getpid()}"
            convert_tsv([os.path.join(root, FEATURES_TSV)], tmp)
            os.replace(tmp, out)
    return out


def default_cache_dir() -> str:
    return os.environ.get("LXMERT_FAST_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "lxmert_fast")


def ensure_world(cache_dir: Optional[str] = None, seed: int = 0, num_images: Optional[int] = None,
                 vocab: Optional[str] = None, use_installed_vocab: bool = True,
                 feature_store: bool = True, spec: Optional[SceneSpec] = None) -> World:
    """Generate (once) and return the synthetic world for ``seed``, ``num_images`` and ``spec``."""
    n = DEFAULT_NUM_IMAGES if num_images is None else int(num_images)
    spec = spec or DEFAULT_SCENES
    name = f"world-{WORLD_VERSION}-{seed}-{n}"
    if spec != DEFAULT_SCENES:
        (a, b), (c, d) = spec.classes_per_image, spec.objects_per_image
        name += f"-c{spec.num_classes}-p{a}-{b}-o{c}-{d}"
    root = os.path.join(cache_dir or default_cache_dir(), name)
    return open_world(generate_world(root, seed, n, spec=spec), vocab, use_installed_vocab,
                      feature_store)


def open_world(root: str, vocab: Optional[str] = None, use_installed_vocab: bool = True,
               feature_store: bool = True) -> World:
    """A World over a generated ``root``: feature store built if possible, vocab resolved."""
    world = World.load(root)
    world.feature_store = _ensure_store(root) if feature_store else None
    with _locked(os.path.join(root, "vocab")):
        world.vocab = resolve_vocab(vocab, corpus=world.sentences(), out_dir=root,
                                    use_installed=use_installed_vocab)
    return world


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="directory to write the world into")
    p.add_argument("--num_images", type=int, default=DEFAULT_NUM_IMAGES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sentences", default=None,
                   help="sentences per image, e.g. 'mscoco=2,vg=2,vqa=3,gqa=3,nlvr2=4' (the default; "
                        "nlvr2: NLVR2-style statements per image)")
    p.add_argument("--scenes", default=None,
                   help=f"classes and objects per image, e.g. '{spec_text(DEFAULT_SCENES)}' "
                        f"(the default)")
    p.add_argument("--vocab", default=None, help="vocab.txt to use instead of resolving one")
    p.add_argument("--no_feature_store", action="store_true", help="keep the TSV only")
    args = p.parse_args(argv)
    root = generate_world(args.out, args.seed, args.num_images, sentence_counts(args.sentences),
                          scene_spec(args.scenes))
    world = open_world(root, args.vocab,
                       feature_store=not args.no_feature_store)
    print(json.dumps({"root": world.root, "features_tsv": world.features_tsv,
                      "feature_store": world.feature_store, "vocab": world.vocab,
                      "sizes": world.meta["sizes"]}, indent=1))


if __name__ == "__main__":
    main()
