"""Writes lm_eval_contrans/data/neutral_anchors.txt: the default anchor corpus.

The map from source to target states is fitted on how both models read the same texts, so the
texts should be as varied as what the models will see: many topics, registers and sentence shapes.
A small grammar (the first version of this corpus) gave a map with a high held-out R^2 that
transferred poorly: its sentences were too alike. This version samples the text from the packaged
SmolLM2-135M-Instruct (Apache-2.0), prompted with requests written for this project (a genre and a
topic each; the genres span neutral, pleasant and unpleasant registers), keeps whole sentences of
6-40 words, at most three per answer, and cuts about half of them after a random word (a
few cut texts that come out equal to an earlier one are dropped), so that
last-token fits see mid-sentence positions too. The text is model-written prose for fitting a map,
not a source of facts.

Seeded sampling in fixed batches (made with torch 2.13.0+cpu); `git diff` after a rerun shows whether
your torch build reproduces the shipped file byte for byte.
Run: python scripts/make_anchor_corpus.py          (about 15 minutes on 2 CPU cores)
"""

from __future__ import annotations

import random
import re
from pathlib import Path

COUNT = 2400
SEED = 20261126
BATCH = 32
NEW_TOKENS = 96
SENTENCES_PER_ANSWER = 3

GENRES = [
    "Write a short encyclopedia paragraph about {topic}.",
    "Explain to a student how {topic} works.",
    "Write a short local news report that mentions {topic}.",
    "Describe a typical day for someone whose job involves {topic}.",
    "Write a few sentences from a travel guide about a town known for {topic}.",
    "Summarise the history of {topic} in a few sentences.",
    "Write the opening of a short story in which a character deals with {topic}.",
    "Give practical instructions for a beginner interested in {topic}.",
    "Write a short letter to a friend that mentions {topic}.",
    "Describe {topic} as it might appear in a school textbook.",
    "Write the minutes of a town meeting that discussed {topic}.",
    "Write a product description for something related to {topic}.",
    # an instruction-tuned model writes cheerfully by default; these requests give the corpus the
    # other registers too (loss, danger, anger, disgust, surprise), so that the map is fitted on
    # states that vary along the directions concepts live in, not only along topic
    "Write a short news report about an accident or a loss connected with {topic}.",
    "Write a diary entry about a bad day that involved {topic}.",
    "Write a complaint letter about a problem with {topic}.",
    "Write a tense scene from a story in which {topic} becomes dangerous.",
    "Write a few sentences about a surprising discovery connected with {topic}.",
    "Write an angry message from someone who was treated unfairly over {topic}.",
    "Write a sad farewell note that mentions {topic}.",
    "Describe a dirty, smelly or rotten place connected with {topic}.",
    "Write a cheerful message to a friend about {topic}.",
]

TOPICS = [
    "lighthouses", "river otters", "copper mining", "tax law", "the violin", "tidal energy", "medieval bridges",
    "cloud formation", "beekeeping", "railway signalling", "volcanoes", "the printing press", "crop rotation",
    "glass blowing", "chess openings", "tide tables", "coral reefs", "postal services", "bicycle repair",
    "ancient Rome", "the immune system", "weather balloons", "sourdough bread", "public libraries",
    "container shipping", "solar panels", "migratory birds", "paper making", "the stock exchange",
    "mountain rescue", "wool spinning", "city planning", "the water cycle", "fire brigades", "map projections",
    "submarine cables", "orchards", "the Moon landings", "typewriters", "tea plantations", "earthquake engineering",
    "sign language", "radio astronomy", "fishing villages", "road tunnels", "the periodic table", "desert plants",
    "museum archives", "wind turbines", "jazz history", "plate tectonics", "dairy farming", "clock making",
    "the human heart", "airport logistics", "stone walls", "vaccination", "wetlands", "shipbuilding",
    "the alphabet", "satellite navigation", "olive harvests", "court procedures", "canal locks", "honey",
    "polar expeditions", "pottery", "census taking", "recycling plants", "the Silk Road", "rainforests",
    "electric motors", "folk dances", "dictionary making", "mushroom foraging", "tram networks", "calculus",
    "the Roman alphabet", "bridges made of rope", "salt production", "school timetables", "telescopes",
    "knitting patterns", "cave systems", "the metric system", "fountain pens", "river deltas", "sheep herding",
    "opera houses", "hydroelectric dams", "spice trade routes", "microscopes", "ferry routes", "bookbinding",
    "snowfall records", "the Olympic Games", "cartography", "crossword puzzles", "bus timetables",
    "cotton mills", "lunar eclipses", "sea turtles", "parliament buildings", "weaving looms", "garden ponds",
    "postage stamps", "ice hockey", "steam locomotives", "arctic foxes", "tree rings", "medieval castles",
    "vineyards", "semiconductors", "origami", "river ferries", "archaeological digs", "forest fires",
    "bread ovens", "carpentry joints", "the printing of newspapers", "helicopters", "street markets",
    "water treatment", "ballet", "chemistry labs", "desert caravans", "cloud computing", "lace making",
    "marathon running", "botanical gardens", "the Great Lakes", "nuclear fusion", "bird ringing",
    "chocolate making", "sailing knots", "the census of 1900", "guitar building", "public parks",
    "asteroid belts", "hot air balloons", "herbal medicine", "glaciers", "the telephone exchange",
    "rice terraces", "stained glass", "ocean currents", "cheese caves", "ski resorts", "paper money",
    "old maps of London", "fossil hunting", "the Nile", "cricket", "sewing machines", "oil refineries",
    "wild mushrooms", "harbour cranes", "bee orchids", "the French Revolution", "mobile phones",
    "sand dunes", "quilting", "electric grids", "monasteries", "chemical elements", "flood defences",
]


def prompts(rng: random.Random) -> list[str]:
    pairs = [(genre, topic) for genre in GENRES for topic in TOPICS]
    rng.shuffle(pairs)
    return [genre.format(topic=topic) for genre, topic in pairs]


SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def whole_sentences(answer: str) -> list[str]:
    """Complete sentences of a sampled answer (the last piece is cut off by the token limit)."""
    pieces = []
    for paragraph in answer.split("\n"):
        pieces += SENTENCE_END.split(paragraph.strip())
    if pieces and not answer.rstrip().endswith((".", "!", "?")):
        pieces = pieces[:-1]
    keep = []
    for piece in pieces:
        piece = piece.strip().lstrip("-*#0123456789. ").strip()
        words = piece.split()
        if 6 <= len(words) <= 40 and piece[-1] in ".!?" and ":" not in piece[-3:] and "*" not in piece:
            keep.append(piece)
    return keep


def main() -> None:
    import torch
    from tqdm.auto import tqdm

    from lm_eval_contrans.loading import load_model, parse_model_spec

    rng = random.Random(SEED)
    model, tokenizer = load_model(parse_model_spec("packaged:smollm2-135m-instruct", "source"), argument="source",
                                  dtype="float32", device="cpu")
    tokenizer.padding_side = "left"
    requests = prompts(rng)
    seen, lines = set(), []
    progress = tqdm(total=COUNT, desc="anchor sentences", unit="sentence")
    for start in range(0, len(requests), BATCH):
        batch = [tokenizer.apply_chat_template([{"role": "user", "content": request}], tokenize=False,
                                               add_generation_prompt=True) for request in requests[start:start + BATCH]]
        encoded = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(SEED + start)
        with torch.no_grad():
            output = model.generate(**encoded, max_new_tokens=NEW_TOKENS, do_sample=True, temperature=0.8, top_p=0.95,
                                    pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        for row in output[:, encoded.input_ids.shape[1]:]:
            for sentence in whole_sentences(tokenizer.decode(row, skip_special_tokens=True))[:SENTENCES_PER_ANSWER]:
                if sentence in seen or len(lines) >= COUNT:
                    continue
                seen.add(sentence)
                words = sentence.split()
                if rng.random() < 0.5:
                    sentence = " ".join(words[: rng.randint(4, len(words) - 1)])
                lines.append(sentence)
                progress.update(1)
        if len(lines) >= COUNT:
            break
    progress.close()
    lines = list(dict.fromkeys(lines))  # a cut can make two different sentences equal; keep the first
    out = Path(__file__).resolve().parents[1] / "lm_eval_contrans" / "data" / "neutral_anchors.txt"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} anchor texts to {out}")


if __name__ == "__main__":
    main()
