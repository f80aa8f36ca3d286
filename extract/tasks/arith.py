"""``arith``: a built-in synthetic dataset of short multi-step arithmetic word problems.

Each problem takes 2-3 steps (+, -, x) on small integers; its answer is a worked solution in a
rigid GSM8K format, one equation per step::

    question: Mia has 3 bags with 4 apples in each. She gives 5 to Ben. How many apples does Mia have now?
    answer:   Mia starts with 3 x 4 = 12 apples. 12 - 5 = 7.
              #### 7

Problems are short (60-110 tokens with the ``plain`` template and SmolLM2's tokenizer), every
intermediate result is a positive integer below 1000, and at most one step multiplies, so a tiny
backbone plus a small side network can learn them on a CPU in minutes.

Deterministic by ``(seed, split)`` across processes: ``random.Random`` seeded with a string hashes
it with sha512, never with Python's salted ``hash()``. The splits are disjoint by construction: a
question belongs to ``test`` iff the sha256 of its text falls in the test bucket, whatever the seed.
So ``generate(n)`` is a prefix of ``generate(m)`` for ``n < m``, and a test question never appears
in any train split.
"""

from __future__ import annotations

import hashlib
import operator
import random
from dataclasses import dataclass

from ..errors import DataError
from .examples import Example

SPLITS = ("train", "test")
SIZES = {"train": 2000, "test": 200}  # default number of examples per split
STEPS = (2, 3)  # default numbers of equations per problem
MAX_OPERAND = 20  # default largest operand
TEST_BUCKETS = 10  # one question in TEST_BUCKETS belongs to the test split
MULTIPLIERS = {2: "doubles", 3: "triples", 4: "quadruples"}
APPLY = {"+": operator.add, "-": operator.sub, "x": operator.mul}
GROUP_SIZES = range(2, 6)  # "3 bags with 4 apples in each": 2..5 bags

PEOPLE = [  # (name, subject pronoun, possessive pronoun)
    ("Mia", "she", "her"), ("Liam", "he", "his"), ("Emma", "she", "her"), ("Noah", "he", "his"),
    ("Olivia", "she", "her"), ("Lucas", "he", "his"), ("Ava", "she", "her"), ("Ethan", "he", "his"),
    ("Sofia", "she", "her"), ("Omar", "he", "his"), ("Zoe", "she", "her"), ("Ben", "he", "his"),
    ("Priya", "she", "her"), ("Diego", "he", "his"), ("Hana", "she", "her"), ("Tom", "he", "his"),
    ("Grace", "she", "her"), ("Leo", "he", "his"), ("Nora", "she", "her"), ("Sam", "he", "his"),
]
OBJECTS = [
    "apples", "oranges", "cookies", "marbles", "stickers", "pencils", "books", "cards", "coins",
    "stamps", "shells", "balloons", "crayons", "toy cars", "flowers", "eggs", "cupcakes", "beads",
]
CONTAINERS = ["bags", "boxes", "packs", "jars", "baskets"]
PLACES = ["bag", "room", "box", "basket", "backpack"]

STARTS = [  # the first quantity, given directly
    "{Name} has {a} {obj}.",
    "{Name} starts with {a} {obj}.",
    "There are {a} {obj} in {Name}'s {place}.",
    "{Name} keeps {a} {obj} in a {place}.",
]
GROUP_STARTS = [  # the first quantity as k groups of n: the first step multiplies
    "{Name} has {k} {container} with {n} {obj} in each.",
    "{Name} buys {k} {container} of {obj}, and each one holds {n}.",
    "{Name} has {k} {container}. Each of them holds {n} {obj}.",
]
ADDS = ["buys {b} more", "finds {b} more", "gets {b} more from {friend}", "is given {b} more",
        "collects {b} more", "wins {b} more"]
SUBS = ["gives {b} to {friend}", "gives away {b}", "sells {b}", "loses {b}", "uses {b}",
        "trades {b} to {friend}"]
MULS = ["{verb} the number of {obj}", "{verb} {pos} {obj}"]
JOINS = {  # how the step clauses form sentences; {P} is the capitalised pronoun
    1: ["{P} {s0}."],
    2: ["{P} {s0} and then {s1}.", "{P} {s0}. Then {p} {s1}.", "First {p} {s0}, then {p} {s1}."],
    3: ["{P} {s0}, then {s1}, and finally {s2}.", "{P} {s0}. Then {p} {s1}. After that, {p} {s2}.",
        "First {p} {s0}. Next {p} {s1}. Finally {p} {s2}."],
}
QUESTIONS = ["How many {obj} does {Name} have now?", "How many {obj} does {Name} have in the end?",
             "How many {obj} does {Name} end up with?", "How many {obj} does {p} have now?"]


@dataclass(frozen=True)
class Step:
    op: str  # "+", "-" or "x"
    operand: int


def generate(
    n: int,
    seed: int = 0,
    split: str = "train",
    steps: tuple[int, ...] = STEPS,
    max_operand: int = MAX_OPERAND,
) -> list[Example]:
    """``n`` distinct problems of ``split`` with ``steps`` equations each (drawn uniformly) and
    operands in ``2..max_operand``; multipliers are 2..4."""
    if split not in SPLITS:
        raise DataError(f"arith has splits {', '.join(SPLITS)}, not {split!r}")
    if n < 0 or max_operand < 2 or not steps or min(steps) < 1 or max(steps) > max(JOINS):
        raise DataError(f"arith needs n >= 0, max_operand >= 2 and steps in 1..{max(JOINS)}")
    rng = random.Random(f"arith:{seed}:{split}")
    examples: list[Example] = []
    seen: set[str] = set()
    for _ in range(1000 + 100 * n):  # bound the loop: rejections are rare unless the space is tiny
        if len(examples) == n:
            return examples
        question, answer, result = _problem(rng, rng.choice(steps), max_operand)
        if question in seen or split_of(question) != split:
            continue
        seen.add(question)
        examples.append(Example(question, answer, {"id": len(examples), "final": str(result)}))
    raise DataError(f"could not generate {n} distinct arith problems; raise max_operand or lower n")


def split_of(question: str) -> str:
    """The split a question belongs to, from a stable hash of its text."""
    bucket = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big") % TEST_BUCKETS
    return "test" if bucket == 0 else "train"


def _problem(rng: random.Random, n_steps: int, max_operand: int) -> tuple[str, str, int]:
    """One random problem: (question, worked answer, final result)."""
    name, p, pos = rng.choice(PEOPLE)
    friends = [person[0] for person in PEOPLE if person[0] != name]
    obj = rng.choice(OBJECTS)
    fill = dict(Name=name, p=p, P=p.capitalize(), pos=pos, obj=obj,
                place=rng.choice(PLACES), container=rng.choice(CONTAINERS))

    grouped = n_steps > 1 and rng.random() < 0.3
    if grouped:
        k, size = rng.choice(GROUP_SIZES), rng.randint(2, max_operand)
        value = k * size
        opening = rng.choice(GROUP_STARTS).format(k=k, n=size, **fill)
        lines = [f"{name} starts with {k} x {size} = {value} {obj}."]
    else:
        value = rng.randint(2, max_operand)
        opening = rng.choice(STARTS).format(a=value, **fill)
        lines = [f"{name} starts with {value} {obj}."]

    clauses = []
    may_multiply = not grouped  # at most one multiplication per problem keeps numbers small
    for _ in range(n_steps - 1 if grouped else n_steps):
        step = _step(rng, value, max_operand, may_multiply)
        may_multiply &= step.op != "x"
        clauses.append(_clause(rng, step, fill | {"friend": rng.choice(friends)}))
        result = APPLY[step.op](value, step.operand)
        lines.append(f"{value} {step.op} {step.operand} = {result}.")
        value = result

    numbered = {f"s{i}": clause for i, clause in enumerate(clauses)}
    said = rng.choice(JOINS[len(clauses)]).format(**numbered, **fill)
    question = " ".join([opening, said, rng.choice(QUESTIONS).format(**fill)])
    return question, " ".join(lines) + f"\n#### {value}", value


def _step(rng: random.Random, value: int, max_operand: int, may_multiply: bool) -> Step:
    """A random step that keeps the running value a positive integer below 1000."""
    ops = ["+", "+", "-", "-"] + (["x"] if may_multiply else [])
    while True:
        op = rng.choice(ops)
        if op == "+" and value + 2 < 1000:
            return Step("+", rng.randint(2, min(max_operand, 999 - value)))
        if op == "-" and value > 2:
            return Step("-", rng.randint(2, min(max_operand, value - 1)))
        if op == "x" and value * 2 < 1000:
            return Step("x", rng.choice([k for k in MULTIPLIERS if value * k < 1000]))


def _clause(rng: random.Random, step: Step, fill: dict) -> str:
    """The verb phrase that tells a step, e.g. "gives 3 to Ben"."""
    if step.op == "x":
        return rng.choice(MULS).format(verb=MULTIPLIERS[step.operand], **fill)
    return rng.choice(ADDS if step.op == "+" else SUBS).format(b=step.operand, **fill)
