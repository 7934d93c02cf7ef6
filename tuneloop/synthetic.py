"""A synthetic instruction task a tiny, randomly initialised decoder learns on a CPU in a
few minutes: nothing to download, and exact match that starts near 0 and ends near 1.

Each row is a chat: the user asks to ``repeat`` or ``reverse`` a few words from a small
vocabulary, and the assistant answers with exactly those words, in order or reversed. The
model must read the instruction (two tasks share every prompt's shape) and copy from the
prompt (the words are drawn at random, so test prompts are new combinations); both are
what attention learns first. Deterministic for a seed.
"""

from __future__ import annotations

import random
from typing import Any

WORDS = (
    "apple", "river", "stone", "cloud", "green", "table", "music", "light", "paper", "ocean",
    "tiger", "smile", "bread", "chair", "dream", "grass", "house", "night", "plant", "train",
)  # fmt: skip
TASKS = ("repeat", "reverse")


def answer(task: str, words: list[str]) -> str:
    return " ".join(reversed(words) if task == "reverse" else words)


def rows(count: int, seed: int = 7, min_words: int = 2, max_words: int = 4) -> list[dict[str, Any]]:
    """``count`` distinct chat rows (no prompt twice)."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    while len(out) < count:
        task = rng.choice(TASKS)
        words = [rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))]
        prompt = f"{task}: {' '.join(words)}"
        if prompt in seen:
            continue
        seen.add(prompt)
        out.append({"messages": [{"role": "user", "content": prompt},
                                 {"role": "assistant", "content": answer(task, words)}]})  # fmt: skip
    return out


# --- a field-extraction task for a real pre-trained model -------------------------------
#
# Each row is a short customer message (one of several phrasings) and the assistant's
# answer is the order as one line of JSON, keys in a fixed order: what a support team
# would want from a chat model, scored by exact match and a JSON schema. SmolLM2-135M
# answers these with prose or loose JSON before fine-tuning and the exact line after.

NAMES = (
    "Maria Lopez", "Tom Becker", "Aisha Khan", "Li Wei", "Sofia Rossi", "James Okafor", "Elena Petrova",
    "Noah Smith", "Yuki Tanaka", "Lucas Martin", "Fatima Haddad", "Oliver Brown", "Ana Silva", "Ravi Patel",
    "Chloe Dubois", "Mateo Garcia", "Hannah Schmidt", "Omar Farouk", "Grace Kim", "Ivan Novak",
)  # fmt: skip
ITEMS = (
    "blue mug", "desk lamp", "notebook", "phone case", "water bottle", "backpack", "wall clock",
    "coffee grinder", "yoga mat", "tea kettle", "bike light", "pillow", "umbrella", "speaker",
)  # fmt: skip
CITIES = (
    "Lisbon", "Berlin", "Lagos", "Osaka", "Toronto", "Madrid", "Nairobi", "Oslo", "Lima", "Seoul",
    "Denver", "Prague", "Cairo", "Perth", "Dublin", "Quito",
)  # fmt: skip
PHRASINGS = (
    "Hi, this is {name}. Please send {quantity} {items} to {city}.",
    "{name} here: I would like {quantity} {items}, shipped to {city}.",
    "Order for {name} — {quantity} x {item}, delivery in {city}.",
    "Could you ship {quantity} {items} to {city}? Thanks, {name}",
    "Deliver to {city}: {quantity} {items}. Name on the order: {name}.",
    "Hello! {name} from {city} wants to buy {quantity} {items}.",
)
EXTRACTION_INSTRUCTION = "Extract the customer, item, quantity and city from this order as JSON.\n\n"
# What every answer is: scored by the json_schema scorer (the example project's generation.json_schema).
ORDER_SCHEMA = {
    "type": "object",
    "properties": {
        "customer": {"type": "string"},
        "item": {"type": "string"},
        "quantity": {"type": "integer", "minimum": 1},
        "city": {"type": "string"},
    },
    "required": ["customer", "item", "quantity", "city"],
    "additionalProperties": False,
}


def _plural(item: str, quantity: int) -> str:
    return item if quantity == 1 else item + ("es" if item.endswith(("ch", "sh")) else "s")


def order(rng: random.Random) -> tuple[str, dict[str, Any]]:
    """(a customer's message, the order in it)."""
    name, item, quantity, city = rng.choice(NAMES), rng.choice(ITEMS), rng.randint(1, 12), rng.choice(CITIES)
    text = rng.choice(PHRASINGS).format(
        name=name, quantity=quantity, city=city, item=item, items=_plural(item, quantity)
    )
    return text, {"customer": name, "item": item, "quantity": quantity, "city": city}


def extraction_rows(count: int, seed: int = 11) -> list[dict[str, Any]]:
    """``count`` distinct chat rows of the extraction task (no message twice)."""
    import json

    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    while len(out) < count:
        text, fields = order(rng)
        if text in seen:
            continue
        seen.add(text)
        out.append({"messages": [{"role": "user", "content": EXTRACTION_INSTRUCTION + text},
                                 {"role": "assistant", "content": json.dumps(fields)}]})  # fmt: skip
    return out


FORM_FIELDS = (("ITEM", "item"), ("QTY", "quantity"), ("SHIP TO", "city"), ("NAME", "customer"))


def form_order(rng: random.Random) -> tuple[str, dict[str, Any]]:
    """(an order as a web shop's form sends it, the order in it): the four fields as
    ``KEY: value`` pairs in any order, the name written "Last, First" as the form asks for
    it; the order still names the customer "First Last". A model tuned on customers'
    sentences copies the name as written: what production sends once the shop opens its
    form, and what corrections teach."""
    _, fields = order(rng)
    first, last = str(fields["customer"]).split(" ", 1)
    written = {**fields, "customer": f"{last}, {first}"}
    pairs = list(FORM_FIELDS)
    rng.shuffle(pairs)
    return " | ".join(f"{key}: {written[name]}" for key, name in pairs), fields
