"""Writes lm_eval_contrans/data/neutral_anchors.txt: the default anchor corpus (written for this project).

Neutral, encyclopedic-style sentences from a small grammar over many topics, then cut at a random
word position in about half of the cases, so that the last tokens (whose states the map is fitted
on) cover nouns, verbs, function words and punctuation rather than only sentence ends.
Deterministic: the same seed gives the same file. Run: python scripts/make_anchor_corpus.py
"""

import random
from pathlib import Path

COUNT = 2400
SEED = 20261126

PLACES = ["the river valley", "a coastal town", "the northern province", "the old harbour", "a mountain village",
          "the capital", "the eastern plains", "a small island", "the lake district", "the border region",
          "the university town", "a farming county", "the desert oasis", "the forest reserve", "the city centre",
          "a fishing port", "the southern coast", "the high plateau", "a railway junction", "the river delta"]
PEOPLE = ["the architect", "a local historian", "the committee", "the mayor", "a team of engineers", "the botanist",
          "the author", "a group of students", "the council", "the museum curator", "the orchestra", "a cartographer",
          "the physician", "the navigator", "the surveyor", "a carpenter", "the editor", "the geologist",
          "the librarian", "the school board", "a pair of astronomers", "the translator", "the chemist", "a sculptor"]
THINGS = ["the bridge", "a stone church", "the railway line", "the observatory", "a public library", "the canal",
          "the lighthouse", "a textile mill", "the town hall", "the dam", "a botanical garden", "the market square",
          "the printing press", "a steam engine", "the aqueduct", "the harbour wall", "a wooden windmill",
          "the telegraph office", "the cathedral", "a concert hall", "the water tower", "the tram network"]
YEARS = [str(year) for year in range(1612, 2021, 7)]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
VERBS_PAST = ["built", "designed", "restored", "documented", "surveyed", "expanded", "described", "renamed",
              "studied", "repaired", "photographed", "mapped", "funded", "opened", "inspected", "catalogued"]
SUBJECTS = ["mathematics", "botany", "astronomy", "geology", "linguistics", "chemistry", "economics", "music theory",
            "architecture", "navigation", "agriculture", "medicine", "philosophy", "zoology", "meteorology"]
ANIMALS = ["heron", "red fox", "river otter", "barn owl", "salmon", "honey bee", "grey seal", "badger",
           "monarch butterfly", "brown trout", "swallow", "hedgehog", "elk", "green turtle", "kingfisher"]
FOODS = ["rye bread", "lentil soup", "rice", "apples", "cheese", "tea", "olive oil", "barley", "smoked fish",
         "honey", "potatoes", "dried figs", "maize", "buckwheat", "plums"]
MATERIALS = ["granite", "limestone", "oak", "iron", "brick", "copper", "glass", "slate", "sandstone", "steel"]
NUMBERS = ["two", "three", "four", "five", "six", "seven", "eight", "ten", "twelve", "fifteen", "twenty", "forty"]
UNITS = ["metres", "kilometres", "hectares", "tonnes", "litres", "storeys", "arches", "rooms", "platforms"]
ADJECTIVES = ["northern", "central", "western", "lower", "upper", "outer", "inner", "older", "newer", "eastern"]

TEMPLATES = [
    "{Thing} in {place} was {verb} by {person} in {year}.",
    "{Person} {verb} {thing} during the summer of {year}.",
    "The {adjective} part of {place} is known for its {material} buildings.",
    "In {year}, {person} published a short study of {subject}.",
    "{Thing} is about {number} {unit} long and was finished in {year}.",
    "The {animal} is often seen near {place} in {month}.",
    "Farmers in {place} have grown {food} for several generations.",
    "{Person} moved to {place} in {year} to teach {subject}.",
    "The population of {place} grew slowly after {year}.",
    "{Thing} was made mostly of {material} and {material2}.",
    "Each {month}, a market in {place} sells {food} and {food2}.",
    "The first record of {thing} appears in a letter from {year}.",
    "{Person} gave a lecture on {subject} at {thing} in {month} {year}.",
    "A road connects {place} with {place2}, crossing {thing}.",
    "The {animal} feeds mainly on insects, seeds and small fish.",
    "Visitors to {place} can reach {thing} by a path along the water.",
    "During {month}, the weather in {place} is usually mild and dry.",
    "{Thing} has {number} {unit} and a roof of {material}.",
    "The local school in {place} offers classes in {subject} and {subject2}.",
    "Records show that {person} {verb} {thing} twice before {year}.",
    "The collection includes maps, letters and drawings of {place}.",
    "Most of the {material} used in {thing} came from {place}.",
    "{Person} kept a diary that describes daily life in {place}.",
    "The region's economy depends on {food}, timber and tourism.",
    "A census taken in {year} counted {number} thousand residents in {place}.",
    "The {animal} was first described by naturalists in {year}.",
    "Trains between {place} and {place2} run every {number} minutes.",
    "The archive holds {number} boxes of papers about {subject}.",
    "In {month} {year}, {thing} was closed for repairs.",
    "{Person} compared the climate of {place} with that of {place2}.",
    "The museum in {place} displays tools made of {material} and {material2}.",
    "Students of {subject} often visit {thing} on field trips.",
    "The festival in {place} takes place every {month}.",
    "A small stream runs beside {thing} and joins the river further south.",
    "The dictionary lists {number} words related to {subject}.",
    "{Thing} stands on a hill overlooking {place}.",
    "Local recipes from {place} combine {food} with {food2}.",
    "The report by {person} was translated into {number} languages.",
    "After {year}, {thing} was used as a warehouse for {food}.",
    "The {adjective} wing of {thing} was added in {year}.",
]


def fill(template: str, rng: random.Random) -> str:
    place, place2 = rng.sample(PLACES, 2)
    material, material2 = rng.sample(MATERIALS, 2)
    food, food2 = rng.sample(FOODS, 2)
    subject, subject2 = rng.sample(SUBJECTS, 2)
    thing, person = rng.choice(THINGS), rng.choice(PEOPLE)
    values = dict(
        place=place, place2=place2, thing=thing, Thing=thing[0].upper() + thing[1:], person=person,
        Person=person[0].upper() + person[1:], year=rng.choice(YEARS), month=rng.choice(MONTHS),
        verb=rng.choice(VERBS_PAST), subject=subject, subject2=subject2, animal=rng.choice(ANIMALS),
        food=food, food2=food2, material=material, material2=material2, number=rng.choice(NUMBERS),
        unit=rng.choice(UNITS), adjective=rng.choice(ADJECTIVES),
    )
    return template.format(**values)


def main() -> None:
    rng = random.Random(SEED)
    seen, lines = set(), []
    while len(lines) < COUNT:
        sentence = fill(rng.choice(TEMPLATES), rng)
        words = sentence.split()
        if rng.random() < 0.5 and len(words) > 5:
            sentence = " ".join(words[: rng.randint(4, len(words) - 1)])
        if sentence not in seen:
            seen.add(sentence)
            lines.append(sentence)
    out = Path(__file__).resolve().parents[1] / "lm_eval_contrans" / "data" / "neutral_anchors.txt"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} anchor texts to {out}")


if __name__ == "__main__":
    main()
