"""The built-in topics of :mod:`shed_jax.demo.synthetic`: word lists, fact generators and phrasings.

Each :class:`_Topic` draws its facts (``dict``s with an ``answer`` and the template fields) from small built-in
tables or programmatically (arithmetic, unit conversions, Roman numerals, number lists), and phrases them with
question and answer templates. The order of :data:`_TOPICS` is part of the generated data.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np


# --------------------------------------------------------------------------------------------------------
# Built-in word lists. Each pair is (key, answer); answers are checked by ``synthetic.answer_in_text``.

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
