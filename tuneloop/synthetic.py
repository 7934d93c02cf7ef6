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
