"""Captioned Fashion-MNIST in English and Korean: captions made from each image's class and its pixels.

DALL-E (Ramesh et al. 2021, "Zero-Shot Text-to-Image Generation", arXiv:2102.12092) learns from image-text pairs.
Fashion-MNIST has only class labels, so every image is described by its class plus properties *measured from
its pixels* (:func:`measure`, vectorised over a batch; ink = pixels above :data:`INK_THRESHOLD`):

* **size** — the ink area (share of the 28 x 28 canvas covered by ink), quantised into small / medium / large at
  the tertiles of the image's class in the training split (:data:`SIZE_TERTILES`): "small" means small *for a
  sneaker*. The ink bounding box (``height``, ``width``) is measured too.
* **brightness** — the mean intensity of the ink pixels, dark / light at the class's training median
  (:data:`BRIGHTNESS_MEDIAN`). "Dark" is as the image is displayed (0 = black background).
* **direction** (Sandal, Sneaker, Ankle boot only) — which way the toe points. The heel / shaft is the tall end
  of a shoe, so the ink of the upper half of the bounding box sits on the heel side: ``toe_offset`` = (x-centroid
  of the whole ink) - (x-centroid of the upper half's ink) is negative when the toe points left.
  Fashion-MNIST's shoes nearly all point left (99 % of sneakers and boots), so :class:`CaptionedFashionMNIST`
  mirrors each shoe image with probability 1/2 (seeded per item) *before* measuring: the direction is then a
  real, balanced property of the pixels.

Captions come from 4 templates per language (:func:`make_caption`; natural Korean with connective endings
"작고 어두운 운동화", "크기가 작고 색이 어두운 운동화", "이 운동화는 작고 어둡다" and the right topic particle).
Some captions name only the class (the plain prompts of :func:`class_prompts` are in-distribution), some drop
one attribute.

Held-out combinations (:data:`HELD_OUT`): in the training split an image whose (size, brightness, class) is one
of these is captioned with only one of the two attributes, so e.g. "a small dark bag" never appears in training
text although such bags do appear as images; the test split captions them fully. A model that draws or
retrieves "a small dark bag" has composed the attributes it learned elsewhere.

The text tokenizer is a SentencePiece BPE trained on every caption the templates can produce in both
languages (:func:`all_captions`, :func:`build_caption_tokenizer`), so it depends on nothing random.
"""

from __future__ import annotations

import random
import re
from itertools import product
from typing import Literal

import torch
from torch import Tensor

from paperzoo.data.loader import derive_seed

__all__ = ["CLASS_NAMES_EN", "CLASS_NAMES_KO", "SHOE_CLASSES", "SIZES", "BRIGHTNESS", "DIRECTIONS", "HELD_OUT",
           "INK_THRESHOLD", "SIZE_TERTILES", "BRIGHTNESS_MEDIAN", "measure", "quantise", "make_caption",
           "n_templates", "all_captions", "class_prompts", "caption_class", "describes", "build_caption_tokenizer",
           "CaptionedFashionMNIST"]

CLASS_NAMES_EN = ["t-shirt", "pair of trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                  "ankle boot"]
CLASS_NAMES_KO = ["티셔츠", "바지", "스웨터", "원피스", "코트", "샌들", "셔츠", "운동화", "가방", "앵클부츠"]
SHOE_CLASSES = (5, 7, 9)  # Sandal, Sneaker, Ankle boot: the classes whose direction is captioned
SIZES, BRIGHTNESS, DIRECTIONS = ("small", "medium", "large"), ("dark", "light"), ("left", "right")

#: (size, brightness, class) combinations never captioned together in the training split (module docstring)
HELD_OUT: tuple[tuple[str, str, int], ...] = (("small", "dark", 8), ("large", "light", 7), ("medium", "dark", 3),
                                              ("large", "dark", 4))

INK_THRESHOLD = 0.1  # a pixel is ink above this intensity in [0, 1] (the background is exactly 0 mostly)
# per class (index = label), measured on the 60,000 training images (tests/dalle/test_dalle_captions.py checks them)
SIZE_TERTILES = torch.tensor([(0.5166, 0.5663), (0.3048, 0.3329), (0.5765, 0.6429), (0.3533, 0.4260),
                              (0.5434, 0.6020), (0.2066, 0.2844), (0.5497, 0.6224), (0.2615, 0.3048),
                              (0.4872, 0.5816), (0.3992, 0.4656)])  # (10, 2) ink-area tertiles
BRIGHTNESS_MEDIAN = torch.tensor([0.6389, 0.6953, 0.6558, 0.6878, 0.7244, 0.5168, 0.5807, 0.5849, 0.6869, 0.7024])


# ------------------------------------------------------------------------------------------ measuring pixels
def measure(images: Tensor) -> dict[str, Tensor]:
    """Properties of each image, from its pixels. ``images``: (N, 28, 28) or (N, 1, H, W), uint8 or float [0, 1].

    Returns (N,) float tensors: ``area`` (ink pixels / all pixels), ``height`` and ``width`` (of the ink bounding
    box, pixels), ``brightness`` (mean intensity of the ink, 0 if none), ``toe_offset`` (module docstring:
    < 0 = the toe points left, > 0 = right; 0 without ink).
    """
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    x = x.flatten(0, -3) if x.dim() == 4 else x  # (N, 1, H, W) -> (N, H, W)
    if x.dim() != 3:
        raise ValueError(f"images must be (N, H, W) or (N, 1, H, W), got {tuple(images.shape)}")
    n, h, w = x.shape
    ink = x > INK_THRESHOLD  # (N, H, W)
    count = ink.sum((1, 2)).float()
    rows, cols = ink.any(2), ink.any(1)  # (N, H), (N, W): rows / columns holding ink
    top = rows.float().argmax(1)
    bottom = h - 1 - rows.flip(1).float().argmax(1)
    left = cols.float().argmax(1)
    right = w - 1 - cols.flip(1).float().argmax(1)
    has_ink = count > 0
    height = torch.where(has_ink, bottom - top + 1, 0).float()
    width = torch.where(has_ink, right - left + 1, 0).float()
    mass = x * ink  # (N, H, W): the ink's intensity
    brightness = mass.sum((1, 2)) / count.clamp(min=1)
    # toe direction: x-centroid of all ink minus x-centroid of the ink above the box's middle row
    xs = torch.arange(w, dtype=x.dtype)
    upper = (torch.arange(h)[None, :] < ((top + bottom) / 2)[:, None]).to(x.dtype)  # (N, H): the upper half
    mass_up = mass * upper[:, :, None]
    cx = (mass.sum(1) * xs).sum(1) / mass.sum((1, 2)).clamp(min=1e-6)
    cx_up = (mass_up.sum(1) * xs).sum(1) / mass_up.sum((1, 2)).clamp(min=1e-6)
    toe = torch.where(mass_up.sum((1, 2)) > 0, cx - cx_up, 0.0)
    return {"area": count / (h * w), "height": height, "width": width, "brightness": brightness, "toe_offset": toe}


def quantise(measures: dict[str, Tensor], labels: Tensor) -> dict[str, Tensor]:
    """Attribute indices (N,) int64: ``size`` into :data:`SIZES` (class tertiles of the area), ``brightness``
    into :data:`BRIGHTNESS` (class median), ``direction`` into :data:`DIRECTIONS` (-1 for non-shoes)."""
    labels = labels.long()
    t = SIZE_TERTILES[labels]  # (N, 2)
    size = (measures["area"] > t[:, 0]).long() + (measures["area"] > t[:, 1]).long()
    bright = (measures["brightness"] > BRIGHTNESS_MEDIAN[labels]).long()
    shoe = torch.isin(labels, torch.tensor(SHOE_CLASSES))
    direction = torch.where(shoe, (measures["toe_offset"] > 0).long(), -1)
    return {"size": size, "brightness": bright, "direction": direction}


# ------------------------------------------------------------------------------------------ templates
def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


_EN_ADJ = {"small": "small", "medium": "medium-sized", "large": "large", "dark": "dark", "light": "light"}


def _caption_en(cls: str, size: str | None, bright: str | None, direction: str | None, template: int) -> str:
    adjs = [_EN_ADJ[a] for a in (size, bright) if a]
    points = f" pointing {direction}" if direction else ""
    noun_phrase = _a(" ".join(adjs + [cls]))
    preds = adjs + ([f"pointing {direction}"] if direction else [])
    if template in (2, 3) and not preds:
        template -= 2  # nothing to predicate: the plain forms
    if template == 0:
        return noun_phrase + points  # a small dark sneaker pointing left
    if template == 1:
        return "a photo of " + noun_phrase + points  # a photo of a small dark sneaker pointing left
    if template == 2:
        return f"{_a(cls)} that is {_and(preds)}"  # a sneaker that is small, dark and pointing left
    return f"this {cls} is {_and(preds)}"  # this sneaker is small, dark and pointing left


# Korean forms of each attribute word: adnominal (before a noun), connective (-고), sentence-final (-다); and
# with a subject, connective and adnominal ("크기가 작고", "색이 어두운")
_KO = {"small": ("작은", "작고", "작다"), "medium": ("중간 크기의", "중간 크기이고", "중간 크기다"),
       "large": ("큰", "크고", "크다"), "dark": ("어두운", "어둡고", "어둡다"), "light": ("밝은", "밝고", "밝다"),
       "left": ("왼쪽을 향한", "왼쪽을 향하고", "왼쪽을 향해 있다"),
       "right": ("오른쪽을 향한", "오른쪽을 향하고", "오른쪽을 향해 있다")}
_KO_SUBJ = {"small": ("크기가 작고", "크기가 작은"), "medium": ("크기가 중간이고", "크기가 중간인"),
            "large": ("크기가 크고", "크기가 큰"), "dark": ("색이 어둡고", "색이 어두운"),
            "light": ("색이 밝고", "색이 밝은"), "left": ("앞코가 왼쪽을 향하고", "앞코가 왼쪽을 향한"),
            "right": ("앞코가 오른쪽을 향하고", "앞코가 오른쪽을 향한")}


def _topic(noun: str) -> str:
    """The topic particle: 은 after a final consonant (받침), 는 after a vowel."""
    return noun + ("은" if (ord(noun[-1]) - 0xAC00) % 28 else "는")


def _caption_ko(cls: str, size: str | None, bright: str | None, direction: str | None, template: int) -> str:
    words = [a for a in (size, bright) if a]
    if template in (2, 3) and not (words or direction):
        template -= 2
    if template in (0, 1):
        # "왼쪽을 향한 작고 어두운 운동화": connective -고 between adjectives, adnominal on the last
        adj = [_KO[a][1] for a in words[:-1]] + [_KO[a][0] for a in words[-1:]]
        phrase = " ".join(([_KO[direction][0]] if direction else []) + adj + [cls])
        return phrase + (" 사진" if template == 1 else "")
    if template == 2:  # "크기가 작고 색이 어두운 운동화"
        parts = words + ([direction] if direction else [])
        return " ".join([_KO_SUBJ[a][0] for a in parts[:-1]] + [_KO_SUBJ[parts[-1]][1], cls])
    parts = words + ([direction] if direction else [])  # "이 운동화는 작고 어둡다"
    return f"이 {_topic(cls)} " + " ".join([_KO[a][1] for a in parts[:-1]] + [_KO[parts[-1]][2]])


def n_templates(lang: str = "en") -> int:
    """Templates per language (both have 4)."""
    return 4


def make_caption(label: int, attrs: dict[str, str], lang: Literal["en", "ko"] = "en", template: int = 0) -> str:
    """The caption of a class ``label`` with the attribute words of ``attrs`` (keys ``size``, ``brightness``,
    ``direction``; a missing or None key is not mentioned), in ``lang``, with template ``template``."""
    if not 0 <= label < 10:
        raise ValueError(f"label must be a Fashion-MNIST class 0..9, got {label}")
    if not 0 <= template < n_templates(lang):
        raise ValueError(f"template must be in [0, {n_templates(lang)}), got {template}")
    size, bright, direction = attrs.get("size"), attrs.get("brightness"), attrs.get("direction")
    for v, allowed in ((size, SIZES), (bright, BRIGHTNESS), (direction, DIRECTIONS)):
        if v is not None and v not in allowed:
            raise ValueError(f"unknown attribute word {v!r}; expected one of {allowed}")
    if lang == "en":
        return _caption_en(CLASS_NAMES_EN[label], size, bright, direction, template)
    if lang == "ko":
        return _caption_ko(CLASS_NAMES_KO[label], size, bright, direction, template)
    raise ValueError(f"lang must be 'en' or 'ko', got {lang!r}")


def all_captions(langs: tuple[str, ...] = ("en", "ko")) -> list[str]:
    """Every caption the templates can produce (each attribute named or not), sorted: the tokenizer's corpus."""
    out = set()
    for label, lang in product(range(10), langs):
        dirs = (None, *DIRECTIONS) if label in SHOE_CLASSES else (None,)
        for size, bright, d, t in product((None, *SIZES), (None, *BRIGHTNESS), dirs, range(n_templates(lang))):
            out.add(make_caption(label, {"size": size, "brightness": bright, "direction": d}, lang, t))
    return sorted(out)


def class_prompts(lang: Literal["en", "ko"] = "en") -> list[str]:
    """One plain prompt per class, index = label: "a sneaker", "운동화" (template 0 without attributes)."""
    return [make_caption(c, {}, lang, 0) for c in range(10)]


# aliases a generated or user-written caption may use. Scanning left to right finds "t-shirt" before the "shirt"
# inside it (and "티셔츠" before "셔츠"); English names must stand as words ("top" is not in "stop").
_ALIASES = {0: ["t-shirt", "tshirt", "top", "티셔츠"], 1: ["trousers", "trouser", "pants", "바지"],
            2: ["pullover", "sweater", "스웨터", "풀오버"], 3: ["dress", "원피스", "드레스"], 4: ["coat", "코트"],
            5: ["sandals", "sandal", "샌들"], 6: ["shirt", "셔츠"], 7: ["sneakers", "sneaker", "운동화"],
            8: ["bag", "가방"], 9: ["ankle boots", "ankle boot", "boots", "boot", "앵클부츠", "부츠"]}
_NAME_CLASS = {n: c for c, names in _ALIASES.items() for n in names}
_NAME_RE = re.compile("|".join(rf"(?<![a-z]){re.escape(n)}(?![a-z])" if n.isascii() else re.escape(n)
                               for n in sorted(_NAME_CLASS, key=len, reverse=True)))


def caption_class(text: str) -> int | None:
    """The class a caption names (the first class name in it, English or Korean), or None if it names none."""
    m = _NAME_RE.search(text.lower())
    return None if m is None else _NAME_CLASS[m.group()]


_ATTRS = (("size", SIZES), ("brightness", BRIGHTNESS), ("direction", DIRECTIONS))


def describes(keys: Tensor, stated: Tensor) -> Tensor:
    """(N, M) bool: caption j describes image i — same class, and every attribute the caption states (>= 0 in
    ``stated`` (M, 4)) equals the image's (``keys`` (N, 4), both as :attr:`CaptionedFashionMNIST.keys`). "a
    sneaker" describes every sneaker; "a small sneaker" the small ones."""
    k, s = keys[:, None, :], stated[None, :, :]  # (N, 1, 4), (1, M, 4)
    return ((s == k) | ((s < 0) & (torch.arange(4, device=keys.device) > 0))).all(-1)


def build_caption_tokenizer(vocab_size: int = 512):  # -> SentencePieceTokenizer
    """A SentencePiece BPE over :func:`all_captions` of both languages (byte fallback: any text round-trips).

    ``vocab_size`` must exceed 260 + the distinct characters (~70); the corpus is small, so fewer pieces than
    ``vocab_size`` may be made.
    """
    from paperzoo.text.tokenizers import SentencePieceTokenizer

    return SentencePieceTokenizer.train(all_captions(), vocab_size=vocab_size, model_type="bpe")


# ------------------------------------------------------------------------------------------ the dataset
class CaptionedFashionMNIST:
    """Fashion-MNIST with one caption per image: items ``(image (1, 28, 28) float [0, 1], caption, label)``.

    Each item's draws (mirroring a shoe, language, template, which attributes to name) come from a generator
    seeded by (seed, split, index): the same seed gives the same captions, on any machine.

    Args:
        split: "train" (60,000) or "test" (10,000).
        lang: "en", "ko" or "both" (each item's language drawn at random).
        seed: the seed of the per-item draws.
        n: keep the first ``n`` items only (quick runs).
        plain: probability that a caption names the class only; ``partial`` that it drops one attribute.
        flip_shoes: mirror each shoe image with probability 1/2 (direction balance, module docstring).
        root: the dataset directory (default: paperzoo's search path).

    Attributes: ``images`` uint8 (N, 1, 28, 28) *as captioned* (shoes mirrored), ``labels`` (N,), ``captions``,
    ``langs``, ``templates``, ``measures`` and ``attrs`` (:func:`measure`, :func:`quantise`), ``keys`` (N, 4)
    what each image is and ``stated`` (N, 4) what its caption says (:func:`describes`), ``flipped`` and
    ``held_out`` (N,) bool: the item's full attributes are a :data:`HELD_OUT` combination (named in full only in
    the test split).
    """

    def __init__(self, split: Literal["train", "test"] = "train", lang: Literal["en", "ko", "both"] = "en",
                 seed: int = 0, *, n: int | None = None, plain: float = 0.15, partial: float = 0.15,
                 flip_shoes: bool = True, root: str | None = None) -> None:
        from paperzoo.data.datasets import load_image_dataset

        if lang not in ("en", "ko", "both"):
            raise ValueError(f"lang must be 'en', 'ko' or 'both', got {lang!r}")
        if not (0 <= plain <= 1 and 0 <= partial <= 1 and plain + partial <= 1):
            raise ValueError(f"plain={plain} and partial={partial} must be probabilities summing to <= 1")
        ds = load_image_dataset("fashion_mnist", split, root)
        images, labels = (ds.images[:n], ds.labels[:n]) if n is not None else (ds.images, ds.labels)
        self.split, self.lang, self.seed = split, lang, seed
        rngs = [random.Random(derive_seed(seed, 0 if split == "train" else 1, i)) for i in range(len(labels))]
        shoe = torch.isin(labels, torch.tensor(SHOE_CLASSES))
        flip = torch.tensor([r.random() < 0.5 for r in rngs]) & shoe & flip_shoes
        self.images = torch.where(flip[:, None, None, None], images.flip(-1), images).contiguous()
        self.labels, self.flipped = labels.clone(), flip
        self.measures = measure(self.images)
        self.attrs = quantise(self.measures, labels)
        held = torch.zeros(len(labels), dtype=torch.bool)
        for size, bright, cls in HELD_OUT:
            held |= (self.attrs["size"] == SIZES.index(size)) & (self.attrs["brightness"] == BRIGHTNESS.index(bright)) \
                & (labels == cls)
        self.held_out = held
        self.langs, self.templates, self.captions, stated = [], [], [], []
        for i, r in enumerate(rngs):
            lg, template, words = self._draw(i, r, plain, partial)
            self.langs.append(lg)
            self.templates.append(template)
            self.captions.append(make_caption(int(labels[i]), words, lg, template))
            stated.append([int(labels[i])] + [vocab.index(words[k]) if k in words else -1
                                              for k, vocab in _ATTRS])
        self.stated = torch.tensor(stated, dtype=torch.int64).view(-1, 4)  # (N, 4)

    @property
    def keys(self) -> Tensor:
        """(N, 4) int64: each image's (label, size, brightness, direction) indices (direction -1: not a shoe)."""
        return torch.stack([self.labels, self.attrs["size"], self.attrs["brightness"], self.attrs["direction"]], 1)

    def _draw(self, i: int, r: random.Random, plain: float, partial: float) -> tuple[str, int, dict[str, str]]:
        """Item i's language, template and the attribute words its caption states."""
        label = int(self.labels[i])
        words = {"size": SIZES[self.attrs["size"][i]], "brightness": BRIGHTNESS[self.attrs["brightness"][i]]}
        if label in SHOE_CLASSES:
            words["direction"] = DIRECTIONS[self.attrs["direction"][i]]
        lang = self.lang if self.lang != "both" else r.choice(("en", "ko"))
        template, u = r.randrange(n_templates(lang)), r.random()
        if u < plain:
            words = {}
        elif u < plain + partial:
            words.pop(r.choice(sorted(words)))
        if self.split == "train" and self.held_out[i] and "size" in words and "brightness" in words:
            words.pop(r.choice(("size", "brightness")))  # never name a held-out combination in training
        return lang, template, words

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, str, int]:
        return self.images[i].float() / 255.0, self.captions[i], int(self.labels[i])

    def __repr__(self) -> str:
        return f"CaptionedFashionMNIST(split={self.split!r}, lang={self.lang!r}, seed={self.seed}, n={len(self)})"
