"""Writes tasks/contrans_sentiment/sentiment_prompts.jsonl (all text written for this project).

Review-style prompts whose opening is neutral (facts, no evaluation), ending where the verdict
comes; the two choices are a positive and a negative verdict. Run: python scripts/make_sentiment_prompts.py
"""

import json
from pathlib import Path

SUBJECTS = [
    ("a budget hotel near the station", "We stayed three nights in a double room on the fourth floor."),
    ("a pair of hiking boots", "I wore them on a two-day trail with some river crossings."),
    ("an Italian restaurant on Main Street", "We ordered two pastas, a salad and a bottle of house wine."),
    ("a science-fiction novel", "The book follows a crew of five on a long voyage to a distant moon."),
    ("a wireless keyboard", "I have used it every day at work for about two months."),
    ("a city walking tour", "The tour lasted two hours and covered the old town and the harbour."),
    ("a cordless drill", "I used it to put up shelves and assemble a wardrobe."),
    ("a weekend yoga retreat", "There were three sessions a day and meals were included."),
    ("a family-run bakery", "I bought a sourdough loaf, two croissants and a coffee."),
    ("a regional train service", "I take the 7:40 train into the city four days a week."),
    ("a history podcast", "Each episode is about forty minutes long and covers one historical event."),
    ("a smartphone case", "The case is made of silicone and comes in six colours."),
    ("a dental clinic", "I went in for a routine check-up and a cleaning."),
    ("a jazz concert", "The quartet played two sets with a short break in between."),
    ("an online language course", "The course has twelve units with videos and short quizzes."),
    ("a rental car", "We picked up a compact car at the airport and drove it for a week."),
    ("a coffee grinder", "It has fifteen grind settings and a small glass container."),
    ("a children's theatre show", "The show ran for an hour and was aimed at ages five to ten."),
    ("a camping tent", "We pitched it for four nights at a lakeside campsite."),
    ("a local gym", "The gym has a weights room, a pool and group classes in the evening."),
    ("a museum of natural history", "We spent an afternoon in the dinosaur and mineral halls."),
    ("an electric kettle", "It holds 1.7 litres and has a blue light while it boils."),
    ("a hair salon", "I booked a cut and a wash on a Saturday morning."),
    ("a cooking class", "The class covered three dishes and lasted about three hours."),
    ("a pair of headphones", "I use them on my commute and for calls at home."),
    ("a ferry crossing", "The crossing took about ninety minutes each way."),
    ("a mobile banking app", "I use it to check my balance and pay bills each month."),
    ("a garden centre", "I went to buy tomato plants, compost and a watering can."),
    ("a documentary series", "The series has six episodes about life in the deep ocean."),
    ("a delivery service", "I ordered groceries for delivery on a weekday evening."),
    ("a beach resort", "We booked a week in a sea-view room with breakfast."),
    ("a board game", "We played it with four people over two evenings."),
    ("a plumber", "He came to replace a leaking pipe under the kitchen sink."),
    ("a laptop backpack", "It has two main compartments and a padded sleeve."),
    ("a summer music festival", "The festival ran for three days with two main stages."),
    ("a vegetarian cookbook", "The book has around a hundred recipes grouped by season."),
    ("an airport lounge", "I waited there for about three hours before a connecting flight."),
    ("a robot vacuum cleaner", "It runs every morning in our flat while we are at work."),
    ("a pottery workshop", "The workshop was one afternoon on the wheel with glazing."),
    ("a walking trail guidebook", "The guide describes forty routes in the national park."),
    ("a sushi takeaway", "We ordered a mixed platter and miso soup for two."),
    ("a fitness tracker", "I wore it day and night for a month."),
    ("a boutique bed and breakfast", "We stayed two nights in a room overlooking the garden."),
    ("an animated film", "The film runs about ninety minutes and is set in a mountain village."),
    ("a car repair garage", "I took my car in for a brake inspection and an oil change."),
    ("a public library", "I go there on Saturdays to borrow books and use the study room."),
    ("a bicycle", "I ride it to work, about six kilometres each way."),
    ("a winter coat", "I wore it through January and February."),
    ("a university lecture series", "The series had eight talks on the history of science."),
    ("a food market", "The market opens on Sundays and has around forty stalls."),
]
VERDICTS = [(" excellent", " terrible"), (" wonderful", " awful"), (" great", " poor"),
            (" delightful", " disappointing"), (" fantastic", " dreadful")]


def main() -> None:
    rows = []
    for index, (subject, details) in enumerate(SUBJECTS):
        positive, negative = VERDICTS[index % len(VERDICTS)]
        prompt = f"Review of {subject}: {details} Overall, my experience was"
        rows.append({"id": index, "prompt": prompt, "positive": positive, "negative": negative})
    out = Path(__file__).resolve().parents[1] / "tasks" / "contrans_sentiment" / "sentiment_prompts.jsonl"
    out.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    print(f"wrote {len(rows)} prompts to {out}")


if __name__ == "__main__":
    main()
