"""Built-in datasets the project writes itself, for the shipped adapters: seeded and deterministic.

`questions(n, seed, held_out)` makes questions of five kinds, each with the word a correct
answer contains and an answer in every style:

* photo (40%): a question about a photo, which reaches the model as the bracketed line the offline
  image pathway writes (`describe_image`), from ImageNet class names with invented but
  plausible classifier probabilities (`examples.image_labels_for`), so adapters work on
  real photos in chat;
* colour, count, place: the answer is stated in the question ("The kite is red and the box
  is blue. What colour is the kite?");
* fact: short facts this module lists (capitals, colours of things, counts).

Styles (`STYLES`): `one-word` (one word or number, VQA style), `caption` (one sentence that
starts "A photo of"), `json` (`{"answer": ..., "confidence": ...}` with exactly those keys).
`generate(style, n, seed)` gives `Example`s for training; `held_out=True` draws from other
question templates, other ImageNet classes, other objects, names, cities and facts, so an
evaluation never sees a training question. Nothing here loads a model or touches files.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass

from mmchat.training.examples import Example, image_labels_for, imagenet_classes

STYLES = ("one-word", "caption", "json")
STYLE_SEEDS = {"one-word": 11, "caption": 22, "json": 33}  # training seeds; held-out uses HELD_OUT_SEED
HELD_OUT_SEED = 1000

PHOTO_TEMPLATES = (
    ["What is this?", "What is in this photo?", "What do you see in the picture?", "What is shown here?",
     "What is in the image?", "Describe the image.", "What does the photo show?", "Tell me what is in this picture."],
    ["Can you tell me what this picture shows?", "What is the main subject of this photo?",
     "What can be seen in this image?", "Identify what is in the picture.", "What is pictured here?"],
)
ANIMAL_TEMPLATES = (
    ["What animal is this?", "What kind of animal is in the photo?", "Which animal is shown?"],
    ["What animal do you see?", "Which animal is in the picture?"],
)
DRINK_CLASSES = ("espresso", "eggnog", "red wine", "consomme", "carbonara", "guacamole", "trifle", "mashed potatoes")
DRINK_TEMPLATES = (["What is in the cup?", "What is in the glass?", "What is in the bowl?", "What is in it?"],
                   ["What is inside the cup?", "What is being served?"])

# Colours are shared (an adapter that never saw "grey" answered "blue"); held-out questions
# differ by template, objects and names.
_ALL_COLOURS = ["red", "blue", "green", "yellow", "black", "white", "pink", "purple", "orange", "brown", "grey"]
COLOURS = (_ALL_COLOURS, _ALL_COLOURS)
OBJECTS = (["ball", "box", "kite", "hat", "car", "cup", "chair", "book", "bag", "door", "bike", "lamp"],
           ["umbrella", "scarf", "bottle", "pen", "boat", "shirt", "sofa", "clock"])
NAMES = (["Anna", "Ben", "Carla", "David", "Eva", "Farid", "Greta", "Hugo", "Ines", "Jonas"],
         ["Kofi", "Lena", "Marco", "Nora", "Omar", "Priya"])
CITIES = (["Lisbon", "Oslo", "Nairobi", "Lima", "Hanoi", "Dublin", "Kyoto", "Quito", "Tunis", "Perth"],
          ["Vienna", "Seoul", "Lagos", "Bergen", "Cusco", "Malaga"])
THINGS = (["apples", "birds", "cars", "chairs", "books", "dogs", "boats", "trees"],
          ["cats", "bottles", "bikes", "lamps", "cups", "horses"])
PLACES = (["table", "shelf", "street", "fence", "lawn", "beach"], ["roof", "bench", "bridge", "desk"])

# (question, word, caption): facts this project states. The held-out ones are other, common
# facts (the base model knows most of them; its own held-out score is on each card).
FACTS = (
    [("What is the capital of Spain?", "Madrid", "A photo of Madrid, the capital of Spain."),
     ("What is the capital of Germany?", "Berlin", "A photo of Berlin, the capital of Germany."),
     ("What is the capital of England?", "London", "A photo of London, the capital of England."),
     ("What is the capital of Egypt?", "Cairo", "A photo of Cairo, the capital of Egypt."),
     ("What is the capital of Russia?", "Moscow", "A photo of Moscow, the capital of Russia."),
     ("What is the capital of Greece?", "Athens", "A photo of Athens, the capital of Greece."),
     ("What colour is a banana?", "yellow", "A photo of a yellow banana."),
     ("What colour is coal?", "black", "A photo of black coal."),
     ("What colour is milk?", "white", "A photo of white milk in a glass."),
     ("What colour are strawberries?", "red", "A photo of red strawberries."),
     ("How many legs does a spider have?", "8", "A photo of a spider with 8 legs."),
     ("How many months are in a year?", "12", "A photo of a calendar with 12 months."),
     ("How many wheels does a bicycle have?", "2", "A photo of a bicycle with 2 wheels."),
     ("How many sides does a triangle have?", "3", "A photo of a triangle with 3 sides."),
     ("How many hours are in a day?", "24", "A photo of a clock showing the 24 hours of a day."),
     ("Name the capital of Portugal.", "Lisbon", "A photo of Lisbon, the capital of Portugal."),
     ("Tell me the capital city of Ireland.", "Dublin", "A photo of Dublin, the capital city of Ireland."),
     ("Vienna is the capital of which country?", "Austria", "A photo of Vienna, the capital of Austria."),
     ("What is the largest ocean on Earth?", "Pacific", "A photo of the Pacific, the largest ocean on Earth."),
     ("What do bees make?", "honey", "A photo of bees making honey."),
     ("How many players are on a football team on the field?", "11",
      "A photo of a football team with 11 players on the field.")],
    [("Which city is the capital of France?", "Paris", "A photo of Paris, the capital of France."),
     ("Which city is the capital of Italy?", "Rome", "A photo of Rome, the capital of Italy."),
     ("Which city is the capital of Japan?", "Tokyo", "A photo of Tokyo, the capital of Japan."),
     ("What is the usual colour of the sky on a clear day?", "blue", "A photo of a blue sky on a clear day."),
     ("What is the usual colour of a ripe tomato?", "red", "A photo of a ripe red tomato."),
     ("How many wheels does a car have?", "4", "A photo of a car on its 4 wheels."),
     ("What is frozen water called?", "ice", "A photo of ice, frozen water."),
     ("What is the usual colour of snow?", "white", "A photo of white snow."),
     ("How many days are there in a week?", "7", "A photo of a calendar with the 7 days of a week."),
     ("How many legs does a dog have?", "4", "A photo of a dog standing on its 4 legs.")],
)
FACT_CONFIDENCE = 0.9
STATED_CONFIDENCE = 0.95  # the answer is written in the question


@dataclass(frozen=True)
class Item:
    """One question with its expected word and an answer in every style."""

    question: str
    word: str
    caption: str
    confidence: float
    kind: str
    labels: tuple[tuple[str, float], ...] = ()

    @property
    def main_word(self) -> str:
        """The word the styles answer with (`word` may list accepted alternatives: "bird|robin")."""
        return self.word.split("|")[0]

    def answer(self, style: str) -> str:
        if style == "one-word":
            return self.main_word
        if style == "caption":
            return self.caption
        if style == "json":
            return json.dumps({"answer": self.main_word, "confidence": round(self.confidence, 2)})
        raise ValueError(f"style {style!r} is not one of {STYLES}")

    def example(self, style: str) -> Example:
        return Example(self.question, self.answer(style), self.labels, self.kind, self.word)


def head_word(label: str) -> str:
    """The one word that names an ImageNet class: 'snow leopard' -> 'leopard', 'kite (bird of prey)' -> 'kite'."""
    label = re.sub(r"\s*\(.*?\)", "", label).split(" / ")[0].strip()
    return label.split()[-1]


def _article(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def photo_item(rng: random.Random, held_out: bool) -> Item:
    from mmchat.backends.offline import image_subject

    classes = imagenet_classes()
    side = 1 if held_out else 0
    roll = rng.random()
    if roll < 0.15:
        name = rng.choice([c for i, c in enumerate(DRINK_CLASSES) if (i % 4 == 0) == held_out] or DRINK_CLASSES)
        question = rng.choice(DRINK_TEMPLATES[side])
    else:
        pool = [i for i in range(len(classes)) if (i % 5 == 0) == held_out and classes[i] not in DRINK_CLASSES]
        if roll < 0.55:
            pool = [i for i in pool if i < 398]  # ImageNet's animals
        index = rng.choice(pool)
        name = classes[index]
        templates = ANIMAL_TEMPLATES[side] + PHOTO_TEMPLATES[side] if index < 398 else PHOTO_TEMPLATES[side]
        question = rng.choice(templates)
    labels = image_labels_for(name, rng)
    subject = image_subject(labels)
    top_label, top_p = labels[0]
    top_phrase = re.sub(r"\s*\(.*?\)", "", top_label).split(" / ")[0]
    if subject.startswith("a ") and subject != "a big cat":  # a broad kind: cat, dog, bird, fish
        word = f"{subject[2:]}|{head_word(top_label).lower()}"  # "bird" or "robin" both answer it
        caption = f"A photo of {subject}, probably {_article(top_phrase)}."
    else:
        word = head_word(top_label)
        caption = f"A photo of {_article(top_phrase)}."
    return Item(question, word.lower() if word[:1].islower() else word, caption, top_p, "photo", labels)


def text_item(kind: str, rng: random.Random, held_out: bool) -> Item:
    side = 1 if held_out else 0
    if kind == "colour":
        o1, o2 = rng.sample(OBJECTS[side], 2)
        c1, c2 = rng.sample(COLOURS[side], 2)
        name = rng.choice(NAMES[side])
        # Which of the two is asked about is drawn for every question, so the answer depends on
        # the object named, not on its position.
        c, o = (c1, o1) if rng.random() < 0.5 else (c2, o2)
        a, b = _article(f"{c1} {o1}"), _article(f"{c2} {o2}")
        if held_out:
            question = f"In the room there is {a} next to {b}. Which colour is the {o}?"
        else:
            question = rng.choice([f"{name} has {a} and {b}. What colour is the {o}?",
                                   f"The {o1} is {c1} and the {o2} is {c2}. What colour is the {o}?",
                                   f"On the shelf {a} stands beside {b}. What colour is the {o}?"])
        return Item(question, c, f"A photo of {_article(f'{c} {o}')}.", STATED_CONFIDENCE, kind)
    if kind == "count":
        n, things, place = rng.randint(2, 9), rng.choice(THINGS[side]), rng.choice(PLACES[side])
        if held_out:
            question = f"I counted {n} {things} near the {place}. How many {things} did I count?"
        else:
            question = rng.choice([f"There are {n} {things} on the {place}. How many {things} are there?",
                                   f"{rng.choice(NAMES[0])} sees {n} {things} by the {place}. How many {things} "
                                   "are there?"])
        return Item(question, str(n), f"A photo of {n} {things} by the {place}.", STATED_CONFIDENCE, kind)
    if kind == "place":
        name, city = rng.choice(NAMES[side]), rng.choice(CITIES[side])
        if held_out:
            question = f"{name} moved to {city} last year. In which city does {name} live now?"
        else:
            question = rng.choice([f"{name} lives in {city}. Where does {name} live?",
                                   f"{name} works in {city}. In which city does {name} work?"])
        return Item(question, city, f"A photo of {name} in {city}.", STATED_CONFIDENCE, kind)
    if kind == "fact":
        question, word, caption = rng.choice(FACTS[side])
        return Item(question, word, caption, FACT_CONFIDENCE, kind)
    raise ValueError(f"kind {kind!r} is not a built-in kind")


KINDS = (("photo", 0.4), ("colour", 0.2), ("count", 0.13), ("place", 0.13), ("fact", 0.14))


def questions(n: int, seed: int, held_out: bool = False) -> list[Item]:
    """`n` questions (seeded): 40% about photos, the rest colour, count, place and fact (`KINDS`)."""
    rng = random.Random(seed)
    items = []
    for number in range(n):
        # Kinds in fixed proportions, order shuffled by the seed.
        position = (number + 0.5) / n
        cumulative = 0.0
        kind = KINDS[-1][0]
        for name, share in KINDS:
            cumulative += share
            if position < cumulative:
                kind = name
                break
        items.append(photo_item(rng, held_out) if kind == "photo" else text_item(kind, rng, held_out))
    rng.shuffle(items)
    return items


def generate(style: str, n: int, seed: int | None = None, held_out: bool = False) -> list[Example]:
    """`n` examples answered in `style` (seed: the style's own unless given)."""
    if style not in STYLES:
        from mmchat.errors import UserFacingError

        raise UserFacingError(f"built-in dataset {style!r} does not exist; accepted: {', '.join(STYLES)}")
    seed = (HELD_OUT_SEED if held_out else STYLE_SEEDS[style]) if seed is None else seed
    return [item.example(style) for item in questions(n, seed, held_out)]
