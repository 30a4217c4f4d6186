"""Writes tasks/contrans_facts/facts.jsonl: factual completions written for this project.

The unrelated capability that a steering vector must leave alone (issue 4): each item is a short
factual prompt, the correct one-word completion and three wrong ones from the same category, so
the wrong answers are plausible words of the right kind. Run: python scripts/make_facts.py
"""

import json
import random
from pathlib import Path

CATEGORIES = {
    "The capital of {} is": [
        ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
        ("Egypt", "Cairo"), ("Russia", "Moscow"), ("China", "Beijing"), ("the United Kingdom", "London"),
        ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Kenya", "Nairobi"), ("Greece", "Athens"),
        ("Portugal", "Lisbon"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"),
        ("Poland", "Warsaw"), ("Ireland", "Dublin"), ("Austria", "Vienna"), ("Hungary", "Budapest"),
        ("Thailand", "Bangkok"), ("Peru", "Lima"), ("Turkey", "Ankara"), ("South Korea", "Seoul"),
        ("Denmark", "Copenhagen"), ("Belgium", "Brussels"), ("Cuba", "Havana"), ("Chile", "Santiago"),
        ("Iran", "Tehran"),
    ],
    "The main language spoken in {} is": [
        ("Brazil", "Portuguese"), ("Mexico", "Spanish"), ("Germany", "German"), ("Japan", "Japanese"),
        ("France", "French"), ("Italy", "Italian"), ("Russia", "Russian"), ("Greece", "Greek"),
        ("the Netherlands", "Dutch"), ("Poland", "Polish"), ("Turkey", "Turkish"), ("Sweden", "Swedish"),
    ],
    "A young {} is called a": [
        ("cat", "kitten"), ("dog", "puppy"), ("cow", "calf"), ("sheep", "lamb"), ("horse", "foal"),
        ("goat", "kid"), ("frog", "tadpole"), ("bear", "cub"),
    ],
    "The day after {} is": [
        ("Monday", "Tuesday"), ("Tuesday", "Wednesday"), ("Wednesday", "Thursday"), ("Thursday", "Friday"),
        ("Friday", "Saturday"), ("Saturday", "Sunday"), ("Sunday", "Monday"),
    ],
    "The month after {} is": [
        ("January", "February"), ("March", "April"), ("May", "June"), ("July", "August"),
        ("September", "October"), ("November", "December"), ("April", "May"), ("October", "November"),
    ],
    "The opposite of {} is": [
        ("hot", "cold"), ("up", "down"), ("left", "right"), ("big", "small"), ("fast", "slow"),
        ("early", "late"), ("open", "closed"), ("light", "dark"), ("full", "empty"), ("wet", "dry"),
        ("old", "new"), ("high", "low"),
    ],
    "{} plus one equals": [
        ("Two", "three"), ("Three", "four"), ("Four", "five"), ("Five", "six"), ("Six", "seven"),
        ("Seven", "eight"), ("Eight", "nine"), ("Nine", "ten"),
    ],
    "{} is the colour of": [
        ("Blue", "sky"), ("Green", "grass"), ("White", "snow"), ("Yellow", "sunflowers"), ("Orange", "oranges"),
    ],
}
STANDALONE = [
    ("The largest planet in the solar system is", "Jupiter", ["Mercury", "Mars", "Venus"]),
    ("The planet closest to the Sun is", "Mercury", ["Jupiter", "Saturn", "Neptune"]),
    ("The planet known as the red planet is", "Mars", ["Venus", "Jupiter", "Uranus"]),
    ("Water is made of hydrogen and", "oxygen", ["nitrogen", "carbon", "helium"]),
    ("The gas that plants take in from the air is carbon", "dioxide", ["monoxide", "fibre", "paper"]),
    ("The largest ocean on Earth is the", "Pacific", ["Atlantic", "Indian", "Arctic"]),
    ("The tallest mountain on Earth is Mount", "Everest", ["Kilimanjaro", "Fuji", "Olympus"]),
    ("The longest river in Africa is the", "Nile", ["Amazon", "Danube", "Thames"]),
    ("The number of days in a week is", "seven", ["five", "nine", "twelve"]),
    ("The number of legs on a spider is", "eight", ["six", "four", "ten"]),
    ("The number of months in a year is", "twelve", ["ten", "eight", "fifteen"]),
    ("The star at the centre of our solar system is the", "Sun", ["Moon", "Earth", "comet"]),
    ("Bees make", "honey", ["milk", "silk", "wool"]),
    ("The organ that pumps blood through the body is the", "heart", ["liver", "lung", "kidney"]),
    ("Ice is frozen", "water", ["milk", "oil", "sand"]),
    ("The author of Romeo and Juliet is William", "Shakespeare", ["Wordsworth", "Blake", "Golding"]),
    ("The first man to walk on the Moon was Neil", "Armstrong", ["Young", "Collins", "Diamond"]),
    ("The currency of Japan is the", "yen", ["euro", "peso", "rupee"]),
    ("The freezing point of water in degrees Celsius is", "zero", ["ten", "fifty", "hundred"]),
    ("A triangle has three", "sides", ["wheels", "legs", "doors"]),
]


def items() -> list[dict]:
    rng = random.Random(0)
    rows = []
    for template, pairs in CATEGORIES.items():
        answers = [answer for _, answer in pairs]
        for subject, answer in pairs:
            wrong = rng.sample([other for other in answers if other != answer], 3)
            rows.append((template.format(subject), answer, wrong))
    rows.extend(STANDALONE)
    out = []
    for number, (prompt, answer, wrong) in enumerate(rows):
        choices = [answer, *wrong]
        rng.shuffle(choices)
        out.append({"id": number, "prompt": prompt, "choices": choices, "answer": choices.index(answer)})
    return out


if __name__ == "__main__":
    path = Path(__file__).resolve().parents[1] / "tasks" / "contrans_facts" / "facts.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in items()), encoding="utf-8")
    print(f"wrote {path} ({len(items())} items)")
