"""Words of the synthetic world: object classes and attributes, and their ids in LXMERT's label spaces.

The public LXMERT features come from a Faster R-CNN trained on Visual Genome with 1600 object
classes and 400 attribute classes (Anderson et al. 2018); ``objects_id``/``attrs_id`` in the TSV
index those spaces. The synthetic world uses a few dozen real words from them, spread over the
1600/400 id spaces by a fixed permutation (independent of the world seed, so ids are stable).
"""
from typing import Dict, List

import numpy as np

NUM_OBJECT_LABELS = 1600
NUM_ATTR_LABELS = 400

CLASSES: List[str] = [
    "dog", "cat", "car", "bus", "table", "chair", "tree", "person", "horse", "bird", "boat",
    "bottle", "cup", "plate", "bowl", "book", "clock", "lamp", "bench", "bicycle", "motorcycle",
    "truck", "train", "sheep", "cow", "elephant", "giraffe", "umbrella", "bag", "ball", "kite",
    "bed", "couch", "sink", "window", "door", "sign", "fence", "flower", "vase", "phone",
    "laptop", "pizza", "cake", "banana", "apple",
]
COLOURS: List[str] = ["red", "blue", "green", "yellow", "white", "black", "brown", "gray",
                      "orange", "pink", "purple"]
SIZES: List[str] = ["small", "large"]
MATERIALS: List[str] = ["wooden", "metal", "plastic", "glass"]
# "what is the X made of?" answers, by material adjective.
MATERIAL_NOUN: Dict[str, str] = {"wooden": "wood", "metal": "metal", "plastic": "plastic",
                                 "glass": "glass"}
ATTRIBUTES: List[str] = COLOURS + SIZES + MATERIALS

_IRREGULAR_PLURAL = {"person": "people", "bus": "buses", "couch": "couches", "sheep": "sheep",
                     "bench": "benches", "glass": "glasses"}
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten"]


def plural(noun: str) -> str:
    """English plural of a class name."""
    return _IRREGULAR_PLURAL.get(noun, noun + "s")


def number_word(n: int) -> str:
    """'two' for 2; digits beyond ten."""
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def article(word: str) -> str:
    """'an' before a vowel sound, else 'a'."""
    return "an" if word[0] in "aeiou" else "a"


def _spread(names: List[str], space: int, salt: int) -> Dict[str, int]:
    ids = np.random.default_rng([2019, salt]).choice(space, size=len(names), replace=False)
    return {name: int(i) for name, i in zip(names, ids)}


OBJECT_IDS: Dict[str, int] = _spread(CLASSES, NUM_OBJECT_LABELS, 1)
ATTR_IDS: Dict[str, int] = _spread(ATTRIBUTES, NUM_ATTR_LABELS, 2)


def grounded_words(classes: List[str]) -> List[str]:
    """The words of the world's sentences that only the image determines: the classes and their
    plurals, the attributes, the material nouns, counts (number words and digits) and the
    spatial relation words. The evaluation's image-dependent masked-LM accuracy is over these
    (and ``--grounded_mask_rate`` masks them more often)."""
    words = list(classes) + [plural(c) for c in classes] + ATTRIBUTES
    words += sorted(set(MATERIAL_NOUN.values())) + NUMBER_WORDS + [str(i) for i in range(37)]
    words += ["left", "right", "above", "below"]
    return sorted(set(words))
