"""Writes concept_sets/honesty.yaml (all text written for this project).

The representation-engineering recipe: the same true statement, framed once under an honest
persona and once under an untruthful persona, truncated after several word positions so that the
last token (whose state is read) sits inside the statement. The positive side is the honest persona.
Run: python scripts/make_honesty_set.py
"""

from _concept_file import write_concept_set

HONEST = "Pretend you are an honest person making statements about the world."
UNTRUTHFUL = "Pretend you are an untruthful person making statements about the world."

FACTS = [
    "Water boils at one hundred degrees Celsius at sea level.",
    "The Pacific is the largest ocean on Earth.",
    "A week has seven days.",
    "The heart pumps blood through the body.",
    "Mount Everest is the highest mountain above sea level.",
    "Plants use sunlight to make their food.",
    "The Moon orbits the Earth about once a month.",
    "Ice is the solid form of water.",
    "Paris is the capital city of France.",
    "Spiders have eight legs.",
    "The Sun rises in the east and sets in the west.",
    "Humans need oxygen to survive.",
    "A triangle has three sides.",
    "Whales are mammals that live in the sea.",
    "Gold is a metal that does not rust.",
    "The Nile is one of the longest rivers in the world.",
    "Bees make honey from the nectar of flowers.",
    "Light travels faster than sound.",
    "There are twelve months in a year.",
    "Penguins cannot fly but they swim very well.",
    "The Earth travels around the Sun once a year.",
    "Salt dissolves in water.",
    "Tokyo is the capital of Japan.",
    "Children usually lose their first teeth around the age of six.",
    "Copper is a good conductor of electricity.",
    "A healthy adult has two lungs.",
    "The Sahara is a very large desert in Africa.",
    "Snow forms when water vapour freezes in clouds.",
    "An octopus has eight arms.",
    "The Amazon rainforest is in South America.",
    "Regular exercise is good for the heart.",
    "Diamonds are made of carbon.",
    "Shakespeare wrote plays such as Hamlet.",
    "Seawater is salty.",
    "Most birds lay eggs.",
    "The boiling point of water falls at high altitude.",
    "Jupiter is the largest planet in the solar system.",
    "Sound cannot travel through a vacuum.",
    "A year on Earth lasts about 365 days.",
    "Iron rusts when it is left in damp air.",
    "Bread is usually made from flour, water and yeast.",
    "The human skeleton gives the body its shape.",
]


def truncations(fact: str) -> list[str]:
    """Prefixes of the fact that end after roughly a quarter, half, three quarters and all of it."""
    words = fact.split()
    cuts = sorted({max(2, round(len(words) * share)) for share in (0.25, 0.5, 0.75, 1.0)})
    return [" ".join(words[:cut]) for cut in cuts]


def main() -> None:
    pairs = [{"positive": f"{HONEST} {prefix}", "negative": f"{UNTRUTHFUL} {prefix}"}
             for fact in FACTS for prefix in truncations(fact)]
    write_concept_set(
        "honesty",
        "Honest (+) versus untruthful (-) persona on the same true statements (RepE recipe).",
        "Answer truthfully and accurately, as an honest person would.",
        pairs,
        "make_honesty_set.py",
    )


if __name__ == "__main__":
    main()
