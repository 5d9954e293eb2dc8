"""Generated example data with a known answer: an instruction set with planted junk, and a validation set.

``make_demo`` writes a small Alpaca-format training set (``instruction``/``input``/``output``/``category``)
built from templates over 32 topics (arithmetic, unit conversions, capitals, antonyms, plurals, animal
facts, text transforms, translations, ...). Every fact is generated programmatically from small built-in
word lists, so each good record's ``output`` is a correct answer to its ``instruction``. Each topic has
several phrasings of the question and of the answer; ``category`` is the topic family (e.g. ``"geography"``).

A block of whole topics is *junk*: their instructions are ordinary questions of that topic, but their
responses do not answer them -- the answer to a question of a different topic ("mismatched"), a refusal
("refusal") or off-topic boilerplate ("unrelated"). Which records are junk is returned in
``DemoPaths.junk_indices`` and written to ``meta.json``; the records themselves carry no label.

The validation set holds questions of every topic (the target tasks, answered correctly; with
``validation_topics="good"``, of the good topics only) about facts that never occur in the training set (held
out per topic), as multiple-choice items (``question``/``choices``/``answer``; the distractors are answers to
other questions of the same and of other topics) or as instruction records. With only the good topics in the
validation set, a junk topic that no validation question asks about cannot lower any validation-based
utility, so ``"all"`` is the default.

Because topics are separated by their wording, a sentence embedder plus k-means recovers them as clusters,
and a model that learns to match prompts to responses in embedding space learns from the good topics but
not from the junk ones: SHED should give the junk clusters the lowest values. Everything is deterministic
for a given seed.

Example:
    >>> import tempfile
    >>> demo = make_demo(tempfile.mkdtemp(), n_examples=120, n_validation=40, seed=0)
    >>> demo.train.name, demo.valid.name, len(demo.junk_indices)
    ('train.jsonl', 'valid.jsonl', 24)
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from shed_jax.io import atomic_write_json, write_jsonl

__all__ = ["DemoPaths", "make_demo", "answer_in_text", "topic_names", "JUNK_STYLES"]

JUNK_STYLES = ("mismatched", "refusal", "unrelated")


@dataclass(frozen=True)
class DemoPaths:
    """What ``make_demo`` wrote.

    Attributes:
        train: the training set, Alpaca JSONL (``instruction``, ``input``, ``output``, ``category``).
        valid: the validation set (multiple-choice or Alpaca JSONL).
        junk_indices: ``(n_junk,)`` int64, sorted 0-based line indices of the junk records in ``train``.
        meta: the ground truth (also in ``meta_path``): topics, junk topics and their style, per-record
            topic and correct short answer, ``junk_indices``, the generation options.
        meta_path: ``meta.json`` next to the data files.
    """

    train: Path
    valid: Path
    junk_indices: np.ndarray
    meta: dict
    meta_path: Path


# --------------------------------------------------------------------------------------------------------
# Built-in word lists. Each pair is (key, answer); answers are checked by ``answer_in_text``.

_CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"),
    ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Brazil", "Brasília"), ("Argentina", "Buenos Aires"),
    ("Mexico", "Mexico City"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Nigeria", "Abuja"),
    ("Russia", "Moscow"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"), ("Poland", "Warsaw"), ("Greece", "Athens"), ("Turkey", "Ankara"),
    ("Ireland", "Dublin"), ("Austria", "Vienna"), ("Hungary", "Budapest"), ("the Czech Republic", "Prague"),
    ("the Netherlands", "Amsterdam"), ("Belgium", "Brussels"), ("Switzerland", "Bern"), ("Peru", "Lima"),
    ("Chile", "Santiago"), ("Colombia", "Bogotá"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"),
    ("South Korea", "Seoul"), ("Indonesia", "Jakarta"), ("the Philippines", "Manila"), ("Iran", "Tehran"),
    ("Iraq", "Baghdad"), ("Saudi Arabia", "Riyadh"), ("Morocco", "Rabat"), ("Ghana", "Accra"),
    ("Ethiopia", "Addis Ababa"), ("Cuba", "Havana"), ("New Zealand", "Wellington"), ("Pakistan", "Islamabad"),
    ("Ukraine", "Kyiv"), ("Romania", "Bucharest"),
]
_CONTINENTS = [
    ("France", "Europe"), ("Germany", "Europe"), ("Norway", "Europe"), ("Spain", "Europe"),
    ("Italy", "Europe"), ("Poland", "Europe"), ("Ireland", "Europe"), ("Portugal", "Europe"),
    ("Japan", "Asia"), ("China", "Asia"), ("India", "Asia"), ("Thailand", "Asia"), ("Vietnam", "Asia"),
    ("Indonesia", "Asia"), ("Mongolia", "Asia"), ("Nepal", "Asia"),
    ("Canada", "North America"), ("Mexico", "North America"), ("Cuba", "North America"),
    ("Jamaica", "North America"), ("Guatemala", "North America"),
    ("Brazil", "South America"), ("Argentina", "South America"), ("Peru", "South America"),
    ("Chile", "South America"), ("Colombia", "South America"), ("Bolivia", "South America"),
    ("Uruguay", "South America"),
    ("Egypt", "Africa"), ("Kenya", "Africa"), ("Nigeria", "Africa"), ("Ghana", "Africa"),
    ("Morocco", "Africa"), ("Ethiopia", "Africa"), ("Senegal", "Africa"), ("Tanzania", "Africa"),
    ("Australia", "Oceania"), ("New Zealand", "Oceania"), ("Fiji", "Oceania"), ("Samoa", "Oceania"),
]
_LANGUAGES = [
    ("France", "French"), ("Germany", "German"), ("Spain", "Spanish"), ("Italy", "Italian"),
    ("Portugal", "Portuguese"), ("Brazil", "Portuguese"), ("Mexico", "Spanish"), ("Argentina", "Spanish"),
    ("Japan", "Japanese"), ("China", "Chinese"), ("South Korea", "Korean"), ("Russia", "Russian"),
    ("Greece", "Greek"), ("Turkey", "Turkish"), ("Poland", "Polish"), ("the Netherlands", "Dutch"),
    ("Sweden", "Swedish"), ("Norway", "Norwegian"), ("Finland", "Finnish"), ("Denmark", "Danish"),
    ("Hungary", "Hungarian"), ("Thailand", "Thai"), ("Vietnam", "Vietnamese"), ("Iran", "Persian"),
    ("Israel", "Hebrew"), ("Egypt", "Arabic"), ("Saudi Arabia", "Arabic"), ("Indonesia", "Indonesian"),
    ("Ukraine", "Ukrainian"), ("Romania", "Romanian"), ("the Czech Republic", "Czech"), ("Chile", "Spanish"),
    ("Austria", "German"), ("Peru", "Spanish"), ("Colombia", "Spanish"),
]
_CURRENCIES = [
    ("Japan", "yen"), ("the United States", "US dollar"), ("the United Kingdom", "pound sterling"),
    ("India", "Indian rupee"), ("China", "yuan"), ("Russia", "ruble"), ("Mexico", "Mexican peso"),
    ("Brazil", "real"), ("South Korea", "won"), ("Switzerland", "Swiss franc"), ("Sweden", "Swedish krona"),
    ("Norway", "Norwegian krone"), ("Denmark", "Danish krone"), ("Poland", "zloty"), ("Turkey", "Turkish lira"),
    ("South Africa", "rand"), ("Thailand", "baht"), ("Vietnam", "dong"), ("Indonesia", "rupiah"),
    ("Israel", "shekel"), ("Egypt", "Egyptian pound"), ("Nigeria", "naira"), ("Kenya", "Kenyan shilling"),
    ("Argentina", "Argentine peso"), ("Australia", "Australian dollar"), ("Canada", "Canadian dollar"),
    ("Germany", "euro"), ("France", "euro"), ("Italy", "euro"), ("Spain", "euro"), ("Hungary", "forint"),
    ("the Czech Republic", "Czech koruna"), ("the Philippines", "Philippine peso"), ("Malaysia", "ringgit"),
    ("Saudi Arabia", "riyal"),
]
_ANTONYMS = [
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("light", "dark"),
    ("early", "late"), ("open", "closed"), ("full", "empty"), ("hard", "soft"), ("high", "low"),
    ("young", "old"), ("rich", "poor"), ("strong", "weak"), ("wet", "dry"), ("loud", "quiet"),
    ("thick", "thin"), ("long", "short"), ("clean", "dirty"), ("near", "far"), ("push", "pull"),
    ("buy", "sell"), ("win", "lose"), ("begin", "end"), ("inside", "outside"), ("true", "false"),
    ("up", "down"), ("day", "night"), ("friend", "enemy"), ("above", "below"), ("arrive", "depart"),
    ("accept", "refuse"), ("ancient", "modern"), ("brave", "cowardly"), ("cheap", "expensive"),
    ("sharp", "blunt"), ("smooth", "rough"), ("sweet", "sour"), ("wide", "narrow"), ("deep", "shallow"),
    ("remember", "forget"), ("increase", "decrease"), ("always", "never"), ("before", "after"),
    ("entrance", "exit"), ("maximum", "minimum"), ("visible", "invisible"), ("generous", "selfish"),
    ("polite", "rude"),
]
_SYNONYMS = [
    ("big", "large"), ("small", "little"), ("happy", "joyful"), ("fast", "quick"), ("begin", "start"),
    ("end", "finish"), ("smart", "clever"), ("angry", "mad"), ("easy", "simple"), ("hard", "difficult"),
    ("sad", "unhappy"), ("rich", "wealthy"), ("buy", "purchase"), ("help", "assist"), ("choose", "select"),
    ("shut", "close"), ("gift", "present"), ("shout", "yell"), ("tired", "sleepy"), ("afraid", "scared"),
    ("funny", "amusing"), ("quiet", "silent"), ("error", "mistake"), ("road", "street"), ("loud", "noisy"),
    ("odd", "strange"), ("brave", "courageous"), ("calm", "peaceful"), ("cold", "chilly"), ("story", "tale"),
    ("talk", "speak"), ("answer", "reply"), ("hurry", "rush"), ("sick", "ill"), ("sure", "certain"),
    ("damp", "moist"), ("jump", "leap"), ("famous", "well-known"),
]
_DEFINITIONS = [
    ("thermometer", "an instrument that measures temperature"),
    ("telescope", "an instrument for viewing distant objects"),
    ("microscope", "an instrument for viewing very small objects"),
    ("dictionary", "a book that lists words and their meanings"),
    ("atlas", "a book of maps"),
    ("library", "a place where books are kept for people to read or borrow"),
    ("bakery", "a shop where bread and cakes are made and sold"),
    ("pharmacy", "a shop where medicines are prepared and sold"),
    ("carpenter", "a person who makes things from wood"),
    ("pilot", "a person who flies an aircraft"),
    ("dentist", "a doctor who treats teeth"),
    ("author", "a person who writes books"),
    ("orchard", "a piece of land where fruit trees are grown"),
    ("island", "a piece of land surrounded by water"),
    ("desert", "a dry region that gets very little rain"),
    ("volcano", "a mountain that can erupt with lava"),
    ("glacier", "a slowly moving mass of ice"),
    ("peninsula", "a piece of land almost surrounded by water"),
    ("umbrella", "a folding canopy that protects you from rain"),
    ("compass", "a device that shows the direction of north"),
    ("recipe", "a set of instructions for preparing a dish"),
    ("harbour", "a sheltered area of water where ships can dock"),
    ("herbivore", "an animal that eats only plants"),
    ("carnivore", "an animal that eats meat"),
    ("biography", "an account of a person's life written by someone else"),
    ("autobiography", "an account of a person's life written by that person"),
    ("vaccine", "a substance that trains the body to resist a disease"),
    ("fossil", "the preserved remains of an ancient organism"),
    ("orbit", "the curved path of an object around a star or planet"),
    ("mammal", "a warm-blooded animal that feeds its young with milk"),
    ("budget", "a plan for spending money"),
    ("hibernation", "a long winter sleep of some animals"),
    ("antonym", "a word with the opposite meaning of another word"),
    ("synonym", "a word with the same meaning as another word"),
]
_PLURALS = [
    ("child", "children"), ("mouse", "mice"), ("goose", "geese"), ("man", "men"), ("woman", "women"),
    ("tooth", "teeth"), ("foot", "feet"), ("person", "people"), ("ox", "oxen"), ("cactus", "cacti"),
    ("fungus", "fungi"), ("nucleus", "nuclei"), ("analysis", "analyses"), ("crisis", "crises"),
    ("thesis", "theses"), ("phenomenon", "phenomena"), ("criterion", "criteria"), ("leaf", "leaves"),
    ("knife", "knives"), ("wife", "wives"), ("wolf", "wolves"), ("half", "halves"), ("loaf", "loaves"),
    ("shelf", "shelves"), ("potato", "potatoes"), ("tomato", "tomatoes"), ("hero", "heroes"), ("box", "boxes"),
    ("church", "churches"), ("bus", "buses"), ("city", "cities"), ("baby", "babies"), ("party", "parties"),
    ("story", "stories"), ("day", "days"), ("key", "keys"), ("bench", "benches"), ("glass", "glasses"),
    ("dish", "dishes"), ("fox", "foxes"), ("life", "lives"), ("calf", "calves"), ("lady", "ladies"),
]
_PAST_TENSE = [
    ("go", "went"), ("eat", "ate"), ("run", "ran"), ("see", "saw"), ("write", "wrote"), ("take", "took"),
    ("give", "gave"), ("begin", "began"), ("drink", "drank"), ("swim", "swam"), ("sing", "sang"),
    ("fly", "flew"), ("know", "knew"), ("grow", "grew"), ("throw", "threw"), ("draw", "drew"),
    ("drive", "drove"), ("ride", "rode"), ("speak", "spoke"), ("break", "broke"), ("choose", "chose"),
    ("freeze", "froze"), ("steal", "stole"), ("wake", "woke"), ("bring", "brought"), ("buy", "bought"),
    ("think", "thought"), ("teach", "taught"), ("catch", "caught"), ("fight", "fought"), ("sleep", "slept"),
    ("keep", "kept"), ("feel", "felt"), ("leave", "left"), ("meet", "met"), ("sit", "sat"), ("stand", "stood"),
    ("build", "built"), ("send", "sent"), ("spend", "spent"), ("lose", "lost"), ("win", "won"),
    ("hold", "held"), ("tell", "told"), ("sell", "sold"), ("find", "found"), ("make", "made"), ("pay", "paid"),
    ("say", "said"),
]
_COMPARATIVES = [
    ("big", "bigger"), ("small", "smaller"), ("tall", "taller"), ("short", "shorter"), ("fast", "faster"),
    ("slow", "slower"), ("happy", "happier"), ("easy", "easier"), ("busy", "busier"), ("heavy", "heavier"),
    ("good", "better"), ("bad", "worse"), ("far", "farther"), ("hot", "hotter"), ("thin", "thinner"),
    ("wet", "wetter"), ("sad", "sadder"), ("large", "larger"), ("nice", "nicer"), ("wide", "wider"),
    ("late", "later"), ("simple", "simpler"), ("strong", "stronger"), ("young", "younger"), ("old", "older"),
    ("cheap", "cheaper"), ("bright", "brighter"), ("cold", "colder"), ("dark", "darker"), ("early", "earlier"),
    ("funny", "funnier"), ("pretty", "prettier"), ("loud", "louder"), ("quiet", "quieter"), ("rich", "richer"),
    ("deep", "deeper"),
]
_COLOURS = [
    ("a ripe banana", "yellow"), ("a lemon", "yellow"), ("fresh grass", "green"),
    ("the sky on a clear day", "blue"), ("fresh snow", "white"), ("coal", "black"), ("a ripe tomato", "red"),
    ("a strawberry", "red"), ("a carrot", "orange"), ("a pumpkin", "orange"), ("milk chocolate", "brown"),
    ("milk", "white"), ("an emerald", "green"), ("a ruby", "red"), ("a sapphire", "blue"), ("a lime", "green"),
    ("an aubergine", "purple"), ("a lavender flower", "purple"), ("a flamingo", "pink"), ("a crow", "black"),
    ("a polar bear", "white"), ("a school bus in the United States", "yellow"), ("an elephant", "grey"),
    ("a ripe cherry", "red"), ("a cucumber", "green"), ("a canary", "yellow"), ("a raven", "black"),
    ("a walnut shell", "brown"), ("cinnamon", "brown"), ("the ocean on a sunny day", "blue"),
    ("a blueberry", "blue"), ("a koala", "grey"),
]
_ANIMAL_SOUNDS = [
    ("a dog", "barks"), ("a cat", "meows"), ("a cow", "moos"), ("a duck", "quacks"), ("a sheep", "bleats"),
    ("a pig", "oinks"), ("a horse", "neighs"), ("a lion", "roars"), ("a snake", "hisses"), ("an owl", "hoots"),
    ("a bee", "buzzes"), ("a frog", "croaks"), ("a wolf", "howls"), ("a donkey", "brays"), ("a rooster", "crows"),
    ("a mouse", "squeaks"), ("an elephant", "trumpets"), ("a goose", "honks"), ("a pigeon", "coos"),
    ("a turkey", "gobbles"), ("a goat", "bleats"), ("a bear", "growls"), ("a hen", "clucks"),
    ("a cricket", "chirps"), ("a tiger", "roars"), ("a dove", "coos"),
]
_ANIMAL_YOUNG = [
    ("cat", "kitten"), ("dog", "puppy"), ("cow", "calf"), ("horse", "foal"), ("sheep", "lamb"), ("goat", "kid"),
    ("pig", "piglet"), ("duck", "duckling"), ("goose", "gosling"), ("frog", "tadpole"), ("kangaroo", "joey"),
    ("bear", "cub"), ("lion", "cub"), ("deer", "fawn"), ("swan", "cygnet"), ("owl", "owlet"),
    ("eagle", "eaglet"), ("hen", "chick"), ("butterfly", "caterpillar"), ("seal", "pup"), ("elephant", "calf"),
    ("whale", "calf"), ("fox", "kit"), ("wolf", "pup"), ("tiger", "cub"), ("zebra", "foal"), ("hare", "leveret"),
]
_ANIMAL_LEGS = [
    ("a spider", "8"), ("an ant", "6"), ("a dog", "4"), ("a cat", "4"), ("a horse", "4"), ("a bee", "6"),
    ("a beetle", "6"), ("a butterfly", "6"), ("a chicken", "2"), ("a duck", "2"), ("an ostrich", "2"),
    ("a crab", "10"), ("a lobster", "10"), ("a scorpion", "8"), ("a tick", "8"), ("a cow", "4"),
    ("a frog", "4"), ("a lizard", "4"), ("an elephant", "4"), ("a penguin", "2"), ("a grasshopper", "6"),
    ("a goat", "4"), ("a parrot", "2"), ("a mosquito", "6"),
]
_ELEMENTS = [
    ("hydrogen", "H"), ("helium", "He"), ("lithium", "Li"), ("carbon", "C"), ("nitrogen", "N"),
    ("oxygen", "O"), ("fluorine", "F"), ("neon", "Ne"), ("sodium", "Na"), ("magnesium", "Mg"),
    ("aluminium", "Al"), ("silicon", "Si"), ("phosphorus", "P"), ("sulfur", "S"), ("chlorine", "Cl"),
    ("argon", "Ar"), ("potassium", "K"), ("calcium", "Ca"), ("iron", "Fe"), ("copper", "Cu"), ("zinc", "Zn"),
    ("silver", "Ag"), ("gold", "Au"), ("tin", "Sn"), ("lead", "Pb"), ("mercury", "Hg"), ("nickel", "Ni"),
    ("cobalt", "Co"), ("platinum", "Pt"), ("titanium", "Ti"), ("chromium", "Cr"), ("manganese", "Mn"),
    ("bromine", "Br"), ("boron", "B"), ("uranium", "U"), ("tungsten", "W"),
]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_SPANISH = [
    ("one", "uno"), ("two", "dos"), ("three", "tres"), ("four", "cuatro"), ("five", "cinco"), ("six", "seis"),
    ("seven", "siete"), ("eight", "ocho"), ("nine", "nueve"), ("ten", "diez"), ("red", "rojo"), ("blue", "azul"),
    ("green", "verde"), ("white", "blanco"), ("black", "negro"), ("yellow", "amarillo"), ("dog", "perro"),
    ("cat", "gato"), ("house", "casa"), ("water", "agua"), ("bread", "pan"), ("milk", "leche"),
    ("book", "libro"), ("sun", "sol"), ("moon", "luna"), ("friend", "amigo"), ("apple", "manzana"),
    ("cheese", "queso"), ("school", "escuela"), ("tree", "árbol"), ("city", "ciudad"), ("night", "noche"),
    ("hand", "mano"), ("door", "puerta"), ("window", "ventana"), ("table", "mesa"), ("chair", "silla"),
    ("flower", "flor"), ("horse", "caballo"), ("beach", "playa"),
]
_FRENCH = [
    ("one", "un"), ("two", "deux"), ("three", "trois"), ("four", "quatre"), ("five", "cinq"), ("seven", "sept"),
    ("eight", "huit"), ("nine", "neuf"), ("ten", "dix"), ("red", "rouge"), ("blue", "bleu"), ("green", "vert"),
    ("white", "blanc"), ("black", "noir"), ("dog", "chien"), ("cat", "chat"), ("house", "maison"),
    ("water", "eau"), ("bread", "pain"), ("milk", "lait"), ("book", "livre"), ("sun", "soleil"),
    ("moon", "lune"), ("friend", "ami"), ("apple", "pomme"), ("cheese", "fromage"), ("school", "école"),
    ("car", "voiture"), ("tree", "arbre"), ("city", "ville"), ("day", "jour"), ("night", "nuit"),
    ("hand", "main"), ("door", "porte"), ("window", "fenêtre"), ("chair", "chaise"), ("flower", "fleur"),
    ("bird", "oiseau"), ("fish", "poisson"), ("horse", "cheval"), ("beach", "plage"),
]
_REFUSALS = [
    "I'm sorry, but I can't help with that request.",
    "As an AI language model, I am unable to answer this question.",
    "I cannot provide that information.",
    "Sorry, I don't know.",
    "I'm not able to assist with that.",
    "That is not something I can answer right now.",
    "Unfortunately I cannot help with this one.",
    "I would rather not answer that question.",
    "I am sorry, this request goes beyond what I can do.",
    "I don't have enough information to respond to that.",
]
_UNRELATED = [
    "Our office is closed on public holidays; please call back during business hours.",
    "Click here to subscribe to our newsletter for weekly deals!",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
    "The meeting has been moved to Thursday afternoon.",
    "Remember to water the plants twice a week during summer.",
    "This product is available in three sizes and ships within two business days.",
    "Thank you for your order! Your tracking number will arrive by email.",
    "Terms and conditions apply. See website for details.",
    "The quick brown fox jumps over the lazy dog.",
    "Please log out before leaving the computer lab.",
    "Parking is free for visitors after six in the evening.",
    "Our customer service team will get back to you shortly.",
    "Don't forget to bring a jacket, it might get chilly tonight.",
    "Batteries not included. Keep away from direct sunlight.",
    "Follow us on social media for the latest updates.",
]


# --------------------------------------------------------------------------------------------------------
# Topics: a fact generator, question phrasings (instruction, input) and answer phrasings.

@dataclass(frozen=True)
class _Topic:
    name: str
    category: str
    facts: Callable[[np.random.Generator], list[dict]]
    prompts: tuple[tuple[str, str], ...]      # (instruction template, input template)
    responses: tuple[str, ...]                # output templates; each contains {answer}


def _pairs(pairs: Sequence[tuple[str, str]], key: str = "x") -> Callable[[np.random.Generator], list[dict]]:
    return lambda rng: [{key: k, "answer": v} for k, v in pairs]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _roman(number: int) -> str:
    parts = [(1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"), (50, "L"),
             (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")]
    out = []
    for value, letters in parts:
        count, number = divmod(number, value)
        out.append(letters * count)
    return "".join(out)


_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def _number_words(number: int) -> str:
    if number < 20:
        return _ONES[number]
    tens, ones = divmod(number, 10)
    return _TENS[tens] + ("-" + _ONES[ones] if ones else "")


def _arith(op: str) -> Callable[[np.random.Generator], list[dict]]:
    def facts(rng: np.random.Generator) -> list[dict]:
        if op == "+":
            return [{"a": a, "b": b, "answer": str(a + b)} for a in range(2, 100) for b in range(2, 100)]
        if op == "-":
            return [{"a": a, "b": b, "answer": str(a - b)} for a in range(10, 100) for b in range(2, a)]
        if op == "*":
            return [{"a": a, "b": b, "answer": str(a * b)} for a in range(2, 16) for b in range(2, 16)]
        return [{"a": a, "answer": str(a * a)} for a in range(2, 60)]
    return facts


def _conversions(table: Sequence[tuple[str, str, int]]) -> Callable[[np.random.Generator], list[dict]]:
    def facts(rng: np.random.Generator) -> list[dict]:
        return [{"n": n, "src": src, "dst": dst, "answer": f"{n * factor} {dst}"}
                for src, dst, factor in table for n in range(2, 60)]
    return facts


def _calendar(rng: np.random.Generator) -> list[dict]:
    facts = []
    for kind, names in (("month", _MONTHS), ("day", _DAYS)):
        for i, name in enumerate(names):
            facts.append({"kind": kind, "rel": "after", "x": name, "answer": names[(i + 1) % len(names)]})
            facts.append({"kind": kind, "rel": "before", "x": name, "answer": names[(i - 1) % len(names)]})
    return facts


def _word_pool() -> list[str]:
    words = {w for pairs in (_ANTONYMS, _SYNONYMS, _PLURALS, _PAST_TENSE, _COMPARATIVES, _DEFINITIONS)
             for pair in pairs for w in pair}
    words |= {w for w, _ in _ANIMAL_YOUNG} | {w.lower() for w in _MONTHS}
    return sorted(w for w in words if w.isalpha() and 4 <= len(w) <= 12 and w[::-1] != w)


def _words(transform: Callable[[str], str]) -> Callable[[np.random.Generator], list[dict]]:
    return lambda rng: [{"w": w, "answer": transform(w)} for w in _word_pool()]


def _number_lists(kind: str) -> Callable[[np.random.Generator], list[dict]]:
    def facts(rng: np.random.Generator) -> list[dict]:
        out, seen = [], set()
        while len(out) < 1500:
            length = int(rng.integers(4, 7))
            numbers = [int(v) for v in rng.choice(np.arange(1, 100), size=length, replace=False)]
            key = tuple(numbers)
            if key in seen:
                continue
            seen.add(key)
            answer = ", ".join(str(v) for v in sorted(numbers)) if kind == "sort" else str(max(numbers))
            out.append({"xs": ", ".join(str(v) for v in numbers), "answer": answer})
        return out
    return facts


_TOPICS: tuple[_Topic, ...] = (
    _Topic("addition", "arithmetic", _arith("+"),
           (("What is {a} plus {b}?", ""), ("Add {a} and {b}.", ""), ("Compute {a} + {b}.", ""),
            ("Calculate the sum of {a} and {b}.", "")),
           ("{a} + {b} = {answer}.", "The sum of {a} and {b} is {answer}.", "{a} plus {b} equals {answer}.")),
    _Topic("subtraction", "arithmetic", _arith("-"),
           (("What is {a} minus {b}?", ""), ("Subtract {b} from {a}.", ""), ("Compute {a} - {b}.", ""),
            ("What do you get if you take {b} away from {a}?", "")),
           ("{a} - {b} = {answer}.", "{a} minus {b} is {answer}.", "Taking {b} away from {a} leaves {answer}.")),
    _Topic("multiplication", "arithmetic", _arith("*"),
           (("What is {a} times {b}?", ""), ("Multiply {a} by {b}.", ""), ("Compute {a} × {b}.", ""),
            ("What is the product of {a} and {b}?", "")),
           ("{a} × {b} = {answer}.", "The product of {a} and {b} is {answer}.", "{a} times {b} is {answer}.")),
    _Topic("squares", "arithmetic", _arith("sq"),
           (("What is the square of {a}?", ""), ("What is {a} squared?", ""), ("Compute {a} × {a}.", ""),
            ("Calculate {a} to the power of 2.", "")),
           ("{a} squared is {answer}.", "The square of {a} is {answer}.", "{a} × {a} = {answer}.")),
    _Topic("roman_numerals", "numbers",
           lambda rng: [{"n": n, "answer": _roman(n)} for n in range(1, 400)],
           (("Write {n} in Roman numerals.", ""), ("How is the number {n} written in Roman numerals?", ""),
            ("Convert the following number to Roman numerals.", "{n}")),
           ("{n} in Roman numerals is {answer}.", "{answer}", "The Roman numeral for {n} is {answer}.")),
    _Topic("number_words", "numbers",
           lambda rng: [{"n": n, "answer": _number_words(n)} for n in range(1, 100)],
           (("Write the number {n} in words.", ""), ("How do you spell out {n} in English?", ""),
            ("Spell out the following number in English words.", "{n}")),
           ("{n} is written as \"{answer}\".", "{answer}", "In words, {n} is {answer}.")),
    _Topic("length_conversion", "unit_conversion",
           _conversions([("kilometres", "metres", 1000), ("metres", "centimetres", 100),
                         ("centimetres", "millimetres", 10)]),
           (("Convert {n} {src} to {dst}.", ""), ("How many {dst} are there in {n} {src}?", ""),
            ("Express {n} {src} in {dst}.", "")),
           ("{n} {src} is {answer}.", "There are {answer} in {n} {src}.", "{answer}")),
    _Topic("time_conversion", "unit_conversion",
           _conversions([("hours", "minutes", 60), ("minutes", "seconds", 60), ("days", "hours", 24),
                         ("weeks", "days", 7)]),
           (("Convert {n} {src} to {dst}.", ""), ("How many {dst} are there in {n} {src}?", ""),
            ("Express a duration of {n} {src} in {dst}.", "")),
           ("{n} {src} is {answer}.", "A duration of {n} {src} equals {answer}.", "{answer}")),
    _Topic("mass_volume_conversion", "unit_conversion",
           _conversions([("kilograms", "grams", 1000), ("litres", "millilitres", 1000),
                         ("tonnes", "kilograms", 1000)]),
           (("Convert {n} {src} to {dst}.", ""), ("How many {dst} make up {n} {src}?", ""),
            ("What is {n} {src} in {dst}?", "")),
           ("{n} {src} is {answer}.", "{n} {src} equals {answer}.", "{answer}")),
    _Topic("capitals", "geography", _pairs(_CAPITALS),
           (("What is the capital of {x}?", ""), ("Name the capital city of {x}.", ""),
            ("Which city is the capital of {x}?", ""), ("Tell me the capital of this country.", "{x}")),
           ("The capital of {x} is {answer}.", "{answer}", "{answer} is the capital city of {x}.")),
    _Topic("continents", "geography", _pairs(_CONTINENTS),
           (("On which continent is {x}?", ""), ("Which continent is {x} located in?", ""),
            ("Name the continent where this country lies.", "{x}")),
           ("{x} is in {answer}.", "{answer}", "{x} is located on the continent of {answer}.")),
    _Topic("languages", "geography", _pairs(_LANGUAGES),
           (("What is the main language spoken in {x}?", ""), ("Which language do most people in {x} speak?", ""),
            ("Name the official language of this country.", "{x}")),
           ("The main language of {x} is {answer}.", "{answer}", "Most people in {x} speak {answer}.")),
    _Topic("currencies", "geography", _pairs(_CURRENCIES),
           (("What is the currency of {x}?", ""), ("Which currency is used in {x}?", ""),
            ("Name the money used in this country.", "{x}")),
           ("The currency of {x} is the {answer}.", "{answer}", "In {x} people pay with the {answer}.")),
    _Topic("antonyms", "vocabulary", _pairs(_ANTONYMS),
           (("What is the opposite of \"{x}\"?", ""), ("Give an antonym for the word \"{x}\".", ""),
            ("Write the antonym of the following word.", "{x}"), ("Name a word that means the opposite of {x}.", "")),
           ("The opposite of \"{x}\" is \"{answer}\".", "{answer}", "An antonym of {x} is {answer}.")),
    _Topic("synonyms", "vocabulary", _pairs(_SYNONYMS),
           (("Give a synonym for \"{x}\".", ""), ("What is another word for {x}?", ""),
            ("Write a word that means the same as the following word.", "{x}")),
           ("A synonym of \"{x}\" is \"{answer}\".", "{answer}", "Another word for {x} is {answer}.")),
    _Topic("definitions", "vocabulary", _pairs(_DEFINITIONS),
           (("What is a {x}?", ""), ("Define the word \"{x}\".", ""), ("Explain what the following word means.", "{x}")),
           ("A {x} is {answer}.", "{answer}", "The word \"{x}\" means {answer}.")),
    _Topic("plurals", "grammar", _pairs(_PLURALS),
           (("What is the plural of \"{x}\"?", ""), ("Write the plural form of the word {x}.", ""),
            ("Give the plural of the following noun.", "{x}")),
           ("The plural of \"{x}\" is \"{answer}\".", "{answer}", "One {x}, two {answer}.")),
    _Topic("past_tense", "grammar", _pairs(_PAST_TENSE),
           (("What is the past tense of \"{x}\"?", ""), ("Write the simple past form of the verb {x}.", ""),
            ("Give the past tense of the following verb.", "{x}")),
           ("The past tense of \"{x}\" is \"{answer}\".", "{answer}", "Yesterday I {answer}; today I {x}.")),
    _Topic("comparatives", "grammar", _pairs(_COMPARATIVES),
           (("What is the comparative form of \"{x}\"?", ""), ("Write the comparative of the adjective {x}.", ""),
            ("Give the comparative form of the following adjective.", "{x}")),
           ("The comparative of \"{x}\" is \"{answer}\".", "{answer}", "{_x} becomes {answer} in the comparative.")),
    _Topic("colours", "general_knowledge", _pairs(_COLOURS),
           (("What colour is {x}?", ""), ("Which colour is {x} usually?", ""),
            ("Name the usual colour of the following thing.", "{x}")),
           ("{_x} is {answer}.", "{answer}", "The usual colour of {x} is {answer}.")),
    _Topic("calendar", "general_knowledge", _calendar,
           (("Which {kind} comes {rel} {x}?", ""), ("What is the {kind} {rel} {x}?", ""),
            ("Name the {kind} that comes right {rel} {x}.", "")),
           ("The {kind} {rel} {x} is {answer}.", "{answer}", "{answer} comes right {rel} {x}.")),
    _Topic("animal_sounds", "animals", _pairs(_ANIMAL_SOUNDS),
           (("What sound does {x} make?", ""), ("How would you describe the noise {x} makes?", ""),
            ("Describe the sound made by the following animal.", "{x}")),
           ("{_x} {answer}.", "Usually, {x} {answer}.", "The animal {answer}: that is the sound of {x}.")),
    _Topic("animal_young", "animals", _pairs(_ANIMAL_YOUNG),
           (("What is a baby {x} called?", ""), ("What do you call a young {x}?", ""),
            ("Give the name for the young of the following animal.", "{x}")),
           ("A baby {x} is called a {answer}.", "{answer}", "A young {x} is known as a {answer}.")),
    _Topic("animal_legs", "animals", _pairs(_ANIMAL_LEGS),
           (("How many legs does {x} have?", ""), ("Count the legs of {x}.", ""),
            ("State the number of legs of the following animal.", "{x}")),
           ("{_x} has {answer} legs.", "{answer}", "The number of legs of {x} is {answer}.")),
    _Topic("chemical_symbols", "science", _pairs(_ELEMENTS),
           (("What is the chemical symbol for {x}?", ""), ("Which symbol stands for {x} on the periodic table?", ""),
            ("Give the chemical symbol of the following element.", "{x}")),
           ("The chemical symbol for {x} is {answer}.", "{answer}", "On the periodic table, {x} is written {answer}.")),
    _Topic("uppercase", "text_processing", _words(str.upper),
           (("Convert the word \"{w}\" to uppercase.", ""), ("Convert the following word to capital letters.", "{w}"),
            ("Write {w} in all caps.", "")),
           ("{answer}", "In uppercase, \"{w}\" is {answer}.", "Here it is in capitals: {answer}")),
    _Topic("reverse_word", "text_processing", _words(lambda w: w[::-1]),
           (("Reverse the letters of the word \"{w}\".", ""), ("Write the following word backwards.", "{w}"),
            ("Spell {w} backwards.", "")),
           ("{answer}", "Backwards, \"{w}\" is \"{answer}\".", "Reversed: {answer}")),
    _Topic("letter_count", "text_processing", _words(lambda w: str(len(w))),
           (("How many letters are in the word \"{w}\"?", ""), ("Count the letters in the following word.", "{w}"),
            ("What is the length of the word {w} in letters?", "")),
           ("\"{w}\" has {answer} letters.", "{answer}", "The word {w} is {answer} letters long.")),
    _Topic("sort_numbers", "lists", _number_lists("sort"),
           (("Sort these numbers in ascending order.", "{xs}"), ("Arrange the following numbers from smallest to largest.", "{xs}"),
            ("Put the numbers {xs} in increasing order.", "")),
           ("{answer}", "In ascending order: {answer}.", "Sorted from smallest to largest: {answer}")),
    _Topic("max_number", "lists", _number_lists("max"),
           (("What is the largest number in this list?", "{xs}"), ("Find the maximum of the following numbers.", "{xs}"),
            ("Which of {xs} is the biggest?", "")),
           ("{answer}", "The largest number is {answer}.", "The maximum is {answer}.")),
    _Topic("spanish", "translation", _pairs(_SPANISH),
           (("Translate \"{x}\" into Spanish.", ""), ("What is the Spanish word for {x}?", ""),
            ("Translate the following English word to Spanish.", "{x}")),
           ("In Spanish, \"{x}\" is \"{answer}\".", "{answer}", "The Spanish word for {x} is {answer}.")),
    _Topic("french", "translation", _pairs(_FRENCH),
           (("Translate \"{x}\" into French.", ""), ("What is the French word for {x}?", ""),
            ("Translate the following English word to French.", "{x}")),
           ("In French, \"{x}\" is \"{answer}\".", "{answer}", "The French word for {x} is {answer}.")),
)


def topic_names() -> list[str]:
    """Names of the built-in topics, in their fixed order (``len == 32``)."""
    return [topic.name for topic in _TOPICS]


# --------------------------------------------------------------------------------------------------------

def answer_in_text(answer: str, text: str) -> bool:
    """True iff ``answer`` occurs in ``text`` as a whole word or phrase (case-insensitive).

    >>> answer_in_text("mice", "The plural of mouse is mice."), answer_in_text("7", "It is 17.")
    (True, False)
    """
    pattern = r"(?<!\w)" + re.escape(answer.lower()) + r"(?!\w)"
    return re.search(pattern, text.lower()) is not None


def _render(template: str, fact: dict) -> str:
    fields = dict(fact)
    if "x" in fields:
        fields["_x"] = _cap(str(fields["x"]))
    return template.format(**fields)


def _prompt_text(instruction: str, input_text: str) -> str:
    return instruction + "\n\n" + input_text if input_text else instruction


def _allocate(total: int, capacities: Sequence[int], what: str) -> list[int]:
    """Split ``total`` as evenly as possible over parts with the given capacities (water-filling)."""
    if total > sum(capacities):
        raise ValueError(f"cannot generate {total} {what}: the built-in word lists allow at most "
                         f"{sum(capacities)} with these topics")
    counts = [0] * len(capacities)
    remaining = total
    while remaining:
        open_parts = [i for i, cap in enumerate(capacities) if counts[i] < cap]
        share, extra = divmod(remaining, len(open_parts))
        for rank, i in enumerate(open_parts):
            add = min(share + (1 if rank < extra else 0), capacities[i] - counts[i])
            counts[i] += add
            remaining -= add
    return counts


def _junk_response(style: str, answer: str, topic_index: int, facts_by_topic: list[list[dict]],
                   rng: np.random.Generator) -> str:
    """A response that does not contain ``answer``: another topic's answer, a refusal, or boilerplate."""
    for _ in range(200):
        if style == "mismatched":
            other = int(rng.integers(len(_TOPICS) - 1))
            other += other >= topic_index
            facts = facts_by_topic[other]
            fact = facts[int(rng.integers(len(facts)))]
            responses = _TOPICS[other].responses
            text = _render(responses[int(rng.integers(len(responses)))], fact)
        elif style == "refusal":
            text = _REFUSALS[int(rng.integers(len(_REFUSALS)))]
        else:
            text = _UNRELATED[int(rng.integers(len(_UNRELATED)))]
        if not answer_in_text(answer, text):
            return text
    raise RuntimeError(f"could not draw a {style} junk response avoiding {answer!r}")  # pragma: no cover


def make_demo(out_dir: str | os.PathLike, *, n_examples: int = 600, junk_fraction: float = 0.2,
              n_junk_topics: int | None = None, n_topics: int | None = None, n_validation: int = 200,
              validation_format: str = "multiple_choice", validation_topics: str = "all", n_choices: int = 4,
              seed: int = 0) -> DemoPaths:
    """Write a generated training set with planted junk topics and a held-out validation set.

    Args:
        out_dir: directory to write ``train.jsonl``, ``valid.jsonl`` and ``meta.json`` into (created).
        n_examples: number of training records N (``>= 2 * n_topics``).
        junk_fraction: fraction of the N records that are junk, in ``[0, 1)``. The junk records fill whole
            topics: ``n_junk_topics`` defaults to ``round(junk_fraction * n_topics)`` (at least 1 when
            ``junk_fraction > 0``) and exactly ``round(junk_fraction * N)`` records are junk.
        n_junk_topics: number of junk topics, overriding the default above (``0 < n_junk_topics < n_topics``
            when ``junk_fraction > 0``).
        n_topics: number of topics to draw from the 32 built-in ones (default: all).
        n_validation: number of validation items, spread evenly over the validation topics.
        validation_format: ``"multiple_choice"`` (``question``/``choices``/``answer`` + ``id``/``subject``)
            or ``"instruction"`` (Alpaca records, like the training set).
        validation_topics: ``"all"`` (default: validation asks about every topic, the junk ones with correct
            answers) or ``"good"`` (only about the good topics).
        n_choices: choices per multiple-choice item (>= 2): the correct answer, one distractor from the same
            topic, the rest answers of other validation topics.
        seed: everything is a deterministic function of the arguments.

    Returns:
        ``DemoPaths``; ``junk_indices`` is ``(n_junk,)`` int64, sorted, indexing lines of ``train.jsonl``.

    Raises:
        ValueError: for arguments out of range, or more examples than the word lists can phrase distinctly.
    """
    n_topics = len(_TOPICS) if n_topics is None else int(n_topics)
    if not 2 <= n_topics <= len(_TOPICS):
        raise ValueError(f"n_topics must be in [2, {len(_TOPICS)}], got {n_topics}")
    if not 0.0 <= junk_fraction < 1.0:
        raise ValueError(f"junk_fraction must be in [0, 1), got {junk_fraction}")
    if n_examples < 2 * n_topics:
        raise ValueError(f"n_examples must be >= 2 * n_topics = {2 * n_topics}, got {n_examples}")
    if validation_format not in ("multiple_choice", "instruction"):
        raise ValueError(f"validation_format must be 'multiple_choice' or 'instruction', got {validation_format!r}")
    if validation_topics not in ("good", "all"):
        raise ValueError(f"validation_topics must be 'good' or 'all', got {validation_topics!r}")
    if n_choices < 2:
        raise ValueError(f"n_choices must be >= 2, got {n_choices}")
    n_junk = int(round(junk_fraction * n_examples))
    if n_junk_topics is None:
        n_junk_topics = max(1, int(round(junk_fraction * n_topics))) if n_junk > 0 else 0
    n_junk_topics = int(n_junk_topics)
    if n_junk == 0:
        n_junk_topics = 0
    elif not 1 <= n_junk_topics < n_topics:
        raise ValueError(f"n_junk_topics must be in [1, n_topics - 1 = {n_topics - 1}], got {n_junk_topics}")
    n_good = n_examples - n_junk
    n_good_topics = n_topics - n_junk_topics
    if n_good < n_good_topics or (n_junk_topics and n_junk < n_junk_topics):
        raise ValueError(f"{n_examples} examples with junk_fraction={junk_fraction} leave a topic empty")
    if n_validation < (n_good_topics if validation_topics == "good" else n_topics):
        raise ValueError(f"n_validation must be >= the number of validation topics, got {n_validation}")

    rng = np.random.default_rng(seed)
    facts_by_topic = []
    for topic in _TOPICS:
        facts = topic.facts(rng)
        facts_by_topic.append([facts[i] for i in rng.permutation(len(facts))])
    chosen = sorted(int(i) for i in rng.choice(len(_TOPICS), size=n_topics, replace=False))
    junk_topics = sorted(int(chosen[i]) for i in rng.choice(n_topics, size=n_junk_topics, replace=False))
    good_topics = [t for t in chosen if t not in junk_topics]
    # Each junk topic gets one style (so it stays one coherent cluster), cycling from a random start.
    start = int(rng.integers(len(JUNK_STYLES)))
    junk_styles = {t: JUNK_STYLES[(start + i) % len(JUNK_STYLES)] for i, t in enumerate(junk_topics)}

    # Held-out facts: at most half of a topic's facts. Training records: distinct (fact, question phrasing,
    # answer phrasing) combinations of the remaining facts (junk: (fact, question phrasing) only).
    valid_topics = good_topics if validation_topics == "good" else chosen
    valid_counts = dict(zip(valid_topics, _allocate(
        n_validation, [len(facts_by_topic[t]) // 2 for t in valid_topics], "validation items")))

    def train_capacity(t: int) -> int:
        n_facts = len(facts_by_topic[t]) - valid_counts.get(t, 0)
        n_answers = 1 if t in junk_styles else len(_TOPICS[t].responses)
        return n_facts * len(_TOPICS[t].prompts) * n_answers

    train_counts = dict(zip(good_topics, _allocate(n_good, [train_capacity(t) for t in good_topics],
                                                   "good training records")))
    if junk_topics:
        train_counts.update(zip(junk_topics, _allocate(n_junk, [train_capacity(t) for t in junk_topics],
                                                       "junk training records")))

    records, record_topic, record_answer, is_junk = [], [], [], []
    valid_facts: dict[int, list[dict]] = {}
    for t in chosen:
        topic, facts = _TOPICS[t], facts_by_topic[t]
        n_hold = valid_counts.get(t, 0)
        valid_facts[t] = facts[:n_hold]
        train_facts = facts[n_hold:]
        n_prompts, n_answers = len(topic.prompts), len(topic.responses)
        # Round r uses every fact once; a fact's rounds go through its (question, answer) phrasing pairs in
        # a random order, questions first, so the first len(train_facts) records are all distinct facts.
        prompt_order = [rng.permutation(n_prompts) for _ in train_facts]
        answer_order = [rng.permutation(n_answers) for _ in train_facts]
        for k in range(train_counts[t]):
            round_index, fact_index = divmod(k, len(train_facts))
            fact = train_facts[fact_index]
            prompt_round, answer_round = round_index % n_prompts, round_index // n_prompts
            instruction_t, input_t = topic.prompts[int(prompt_order[fact_index][prompt_round])]
            instruction, input_text = _render(instruction_t, fact), _render(input_t, fact)
            if t in junk_styles:
                output = _junk_response(junk_styles[t], fact["answer"], t, facts_by_topic, rng)
            else:
                output = _render(topic.responses[int(answer_order[fact_index][answer_round])], fact)
                if not answer_in_text(fact["answer"], output):  # pragma: no cover - template bug
                    raise AssertionError(f"topic {topic.name}: {output!r} does not contain {fact['answer']!r}")
            records.append({"instruction": instruction, "input": input_text, "output": output,
                            "category": topic.category})
            record_topic.append(topic.name)
            record_answer.append(fact["answer"])
            is_junk.append(t in junk_styles)

    order = rng.permutation(len(records))
    records = [records[i] for i in order]
    record_topic = [record_topic[i] for i in order]
    record_answer = [record_answer[i] for i in order]
    junk_indices = np.flatnonzero(np.asarray(is_junk, dtype=bool)[order]).astype(np.int64)
    if len({(r["instruction"], r["input"], r["output"]) for r in records}) != len(records):  # pragma: no cover
        raise AssertionError("internal error: duplicate training records")

    valid_records = _validation(valid_topics, valid_facts, facts_by_topic, validation_format, n_choices, rng)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_path, valid_path, meta_path = out / "train.jsonl", out / "valid.jsonl", out / "meta.json"
    meta = {
        "generator": "shed_jax.synthetic.make_demo",
        "seed": int(seed),
        "n_examples": int(n_examples),
        "n_junk": int(n_junk),
        "junk_fraction": float(junk_fraction),
        "n_validation": int(len(valid_records)),
        "validation_format": validation_format,
        "validation_topics": validation_topics,
        "files": {"train": train_path.name, "valid": valid_path.name},
        "topics": [{"name": _TOPICS[t].name, "category": _TOPICS[t].category, "junk": t in junk_styles,
                    "junk_style": junk_styles.get(t), "n_train": int(train_counts[t]),
                    "n_validation": int(valid_counts.get(t, 0))} for t in chosen],
        "junk_topics": [_TOPICS[t].name for t in junk_topics],
        "junk_indices": junk_indices.tolist(),
        "record_topics": record_topic,
        "record_answers": record_answer,
    }
    write_jsonl(train_path, records)
    write_jsonl(valid_path, valid_records)
    atomic_write_json(meta_path, meta)
    return DemoPaths(train=train_path, valid=valid_path, junk_indices=junk_indices, meta=meta,
                     meta_path=meta_path)


def _validation(valid_topics: list[int], valid_facts: dict[int, list[dict]], facts_by_topic: list[list[dict]],
                validation_format: str, n_choices: int, rng: np.random.Generator) -> list[dict]:
    """Validation records for the held-out facts of ``valid_topics``, shuffled."""
    items = []
    for t in valid_topics:
        topic = _TOPICS[t]
        for fact in valid_facts[t]:
            instruction_t, input_t = topic.prompts[int(rng.integers(len(topic.prompts)))]
            instruction, input_text = _render(instruction_t, fact), _render(input_t, fact)
            if validation_format == "instruction":
                output = _render(topic.responses[int(rng.integers(len(topic.responses)))], fact)
                items.append({"instruction": instruction, "input": input_text, "output": output,
                              "category": topic.category})
                continue
            correct = fact["answer"]
            taken = {correct.lower()}
            choices = [correct]
            same_topic = [f["answer"] for f in facts_by_topic[t] if f["answer"].lower() not in taken]
            if same_topic:
                pick = same_topic[int(rng.integers(len(same_topic)))]
                choices.append(pick)
                taken.add(pick.lower())
            others = [o for o in valid_topics if o != t] or [o for o in range(len(_TOPICS)) if o != t]
            for _ in range(1000 * n_choices):
                if len(choices) == n_choices:
                    break
                other_facts = facts_by_topic[others[int(rng.integers(len(others)))]]
                pick = other_facts[int(rng.integers(len(other_facts)))]["answer"]
                if pick.lower() not in taken:
                    choices.append(pick)
                    taken.add(pick.lower())
            if len(choices) < n_choices:  # pragma: no cover - the topics have far more distinct answers
                raise RuntimeError(f"could not find {n_choices} distinct choices for {topic.name!r}")
            choices = choices[:n_choices]
            perm = rng.permutation(len(choices))
            items.append({"question": _prompt_text(instruction, input_text),
                          "choices": [choices[i] for i in perm],
                          "answer": int(np.flatnonzero(perm == 0)[0]),
                          "subject": topic.name})
    order = rng.permutation(len(items))
    items = [items[i] for i in order]
    if validation_format == "multiple_choice":
        items = [{"id": f"demo-{i}", **item} for i, item in enumerate(items)]
    return items
