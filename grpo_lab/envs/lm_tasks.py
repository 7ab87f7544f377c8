"""Small language-model tasks with verifiable rewards, and a character-level tokenizer.

Every task draws ``Example(prompt, answer)`` pairs from a seed (a local ``random.Random``; global
RNG state is never touched) and scores a model's completion with an exact check. One character is
one token, so lengths below are in characters and in tokens alike.

Tasks (registered in ``LM_TASKS``; ``make_task("addition", digits=3)``):

    addition(digits=2)        "12+34="      -> "46"      a, b uniform in [0, 10^digits), no
                                                         leading zeros; answer str(a + b)
    sort(length=5)            "sort:40213=" -> "01234"   `length` uniform digits, sorted ascending
    reverse(length=5,         "rev:abcde="  -> "edcba"   `length` uniform letters of `letters`,
            letters="abcde")                             reversed
    countdown(numbers=3,      "3,5,7>22="   -> "3*5+7"   make the target (after ">") from the
              max_number=9,                              numbers (comma separated, each uniform in
              ops="+-*")                                 [1, max_number], repeats possible)

Countdown: the reference answer uses every number once, in a random order, joined by operators
drawn from ``ops``; the target is its value, so a solution always exists. Targets may be negative
(when "-" is in ``ops``) and are written with a leading "-" then. An answer is an expression

    expr := number (op number)*      number := 0 | [1-9][0-9]*      op := a character of ``ops``

with no parentheses and no spaces, evaluated with the usual precedence (``*`` before ``+`` and
``-``, left to right) by a small parser (``evaluate_expression``), never ``eval``. It must use only
the given numbers, each at most as often as it is given (a subset is fine), and equal the target.

Rewards: a completion is stripped of surrounding whitespace (text after EOS is the caller's to cut:
decode up to EOS). Correct -> 1.0. Wrong but well-formed -> ``format_reward`` (a constructor
keyword of every task, default 0.0). Anything else -> 0.0. Well-formed means: a non-empty string of
ASCII digits (addition, sort), a non-empty string over ``letters`` (reverse), an expression as above
over the given numbers with a wrong value (countdown: an expression using a number not given, or a
number more often than given, breaks the rules and gets 0, not ``format_reward``). Addition, sort
and reverse compare strings exactly, so "046" for 46 is wrong (but well-formed). ``reward`` never
raises, whatever the completion.

Tokenizer: ``CharTokenizer(alphabet)`` has ids 0, 1, 2 for ``<pad>``, ``<bos>``, ``<eos>`` and then
one id per character of the alphabet, in order. ``task_tokenizer(task)`` builds one covering a
task; it is plain JSON on disk (``save``/``load``), nothing is downloaded.

Batches: ``encode_prompts`` left-pads ``<bos> + prompt`` for generation; ``encode_sft`` right-pads
``<bos> + prompt + answer + <eos>`` and marks the answer and ``<eos>`` in ``loss_mask``, so the SFT
loss is next-token cross-entropy of logits[:, :-1] against input_ids[:, 1:] where
loss_mask[:, 1:] is true. A sequence needs 1 + max_prompt_len + max_answer_len + 1 positions
(``check_context``).
"""

from __future__ import annotations

import inspect
import json
import math
import operator
import random
import re
import string
import sys
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from grpo_lab.registry import Registry

Tensor = torch.Tensor

__all__ = [
    "BOS",
    "EOS",
    "LM_TASKS",
    "PAD",
    "AdditionTask",
    "CharTokenizer",
    "CountdownTask",
    "Example",
    "LMTask",
    "ReverseTask",
    "SortTask",
    "check_context",
    "check_tokenizer",
    "encode_prompts",
    "encode_sft",
    "evaluate_expression",
    "make_task",
    "task_tokenizer",
]

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIAL_TOKENS = (PAD, BOS, EOS)
DIGITS = "0123456789"
COUNTDOWN_OPS = "+-*"
MAX_EXPRESSION_DIGITS = 1000  # evaluate_expression rejects longer numbers (int() has a limit)


# ---------------------------------------------------------------------------------------------
# argument checks


def _check_int(name: str, value: object, lo: int, hi: int | None = None) -> int:
    """``value`` as an int in [lo, hi] (hi None: no upper bound), else a ValueError naming it."""
    allowed = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        raise ValueError(f"{name} must be an integer {allowed}, got {value}")
    return value


def _check_format_reward(value: object) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"format_reward must be a number in [0, 1], got {value!r}")
    return float(value)


def _check_seed(seed: object) -> int:
    try:
        return operator.index(seed)
    except TypeError:
        raise ValueError(f"seed must be an integer, got {seed!r}") from None


def _check_chars(name: str, value: object, allowed: str) -> str:
    """A non-empty string of distinct characters, each in ``allowed``."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string of characters from {allowed!r}")
    bad = sorted(set(value) - set(allowed))
    if bad:
        raise ValueError(f"{name} has characters {bad} not allowed; use characters of {allowed!r}")
    repeated = sorted(c for c, k in Counter(value).items() if k > 1)
    if repeated:
        raise ValueError(f"{name} repeats characters {repeated}; each must appear once")
    return value


def _unique_chars(*parts: str) -> str:
    """The characters of ``parts`` in order of first appearance, each once."""
    return "".join(dict.fromkeys("".join(parts)))


def _only(text: str, chars: str) -> bool:
    """``text`` is non-empty and every character is in ``chars``."""
    return bool(text) and all(c in chars for c in text)


# ---------------------------------------------------------------------------------------------
# tokenizer


class CharTokenizer:
    """Character-level tokenizer: ids 0, 1, 2 are pad, bos, eos; then one id per character of
    ``alphabet`` (in the given order, duplicates rejected)."""

    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __init__(self, alphabet: str) -> None:
        if not isinstance(alphabet, str) or not alphabet:
            raise ValueError(f"alphabet must be a non-empty str, got {alphabet!r}")
        repeated = sorted(c for c, k in Counter(alphabet).items() if k > 1)
        if repeated:
            raise ValueError(f"alphabet repeats characters {repeated}; each needs exactly one id")
        self.alphabet = alphabet
        self._tokens = [*SPECIAL_TOKENS, *alphabet]  # id -> token
        self._ids = {c: i for i, c in enumerate(alphabet, start=len(SPECIAL_TOKENS))}

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    def __len__(self) -> int:
        return self.vocab_size

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and other.alphabet == self.alphabet

    def __hash__(self) -> int:
        return hash((CharTokenizer, self.alphabet))

    def __repr__(self) -> str:
        return f"CharTokenizer({self.alphabet!r})"

    def can_encode(self, text: str) -> bool:
        return isinstance(text, str) and all(c in self._ids for c in text)

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        """Ids of the characters of ``text``, with bos first / eos last when asked."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        if not self.can_encode(text):
            unknown = sorted(set(text) - set(self._ids))
            raise ValueError(
                f"cannot encode characters {unknown} of text {text[:50]!r}: "
                f"not in the tokenizer alphabet {self.alphabet!r}"
            )
        ids = [self._ids[c] for c in text]
        return [self.bos_id] * bool(bos) + ids + [self.eos_id] * bool(eos)

    def decode(
        self,
        ids: Sequence[int] | Tensor,
        *,
        skip_special: bool = True,
        stop_at_eos: bool = True,
    ) -> str:
        """Text of a 1-D id sequence. ``stop_at_eos``: stop at the first eos (written as "<eos>"
        only when ``skip_special`` is False); ``skip_special``: drop pad/bos/eos, else write them
        as "<pad>", "<bos>", "<eos>"."""
        out = []
        for i in self._id_list(ids):
            special = i < len(SPECIAL_TOKENS)
            if not (special and skip_special):
                out.append(self._tokens[i])
            if i == self.eos_id and stop_at_eos:
                break
        return "".join(out)

    def _id_list(self, ids: Sequence[int] | Tensor) -> list[int]:
        if isinstance(ids, Tensor):
            if ids.dim() != 1 or ids.is_floating_point() or ids.is_complex():
                raise ValueError(
                    f"ids must be a 1-D integer tensor, got {ids.dtype} of shape {tuple(ids.shape)}"
                )
            ids = ids.tolist()
        try:
            seq = [operator.index(i) for i in ids]
        except TypeError:
            raise ValueError("ids must be a 1-D sequence of integers") from None
        bad = sorted({i for i in seq if not 0 <= i < self.vocab_size})
        if bad:
            raise ValueError(f"ids {bad[:10]} out of range: the vocabulary has {self.vocab_size}")
        return seq

    def to_dict(self) -> dict:
        return {"kind": "char", "special_tokens": list(SPECIAL_TOKENS), "alphabet": self.alphabet}

    @classmethod
    def from_dict(cls, d: dict) -> CharTokenizer:
        if not isinstance(d, dict) or not isinstance(d.get("alphabet"), str):
            raise ValueError(
                "a tokenizer dict needs a string 'alphabet' (see CharTokenizer.to_dict)"
            )
        if d.get("kind", "char") != "char":
            raise ValueError(f"tokenizer kind must be 'char', got {d['kind']!r}")
        special = d.get("special_tokens", list(SPECIAL_TOKENS))
        if list(special) != list(SPECIAL_TOKENS):
            raise ValueError(f"special_tokens must be {list(SPECIAL_TOKENS)}, got {special!r}")
        return cls(d["alphabet"])

    def save(self, path: str | Path) -> None:
        """Write the tokenizer as JSON to ``path`` (parent folders are created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {str(path)!r} does not exist")
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
            raise ValueError(f"tokenizer file {str(path)!r} is not a valid tokenizer: {e}") from e


# ---------------------------------------------------------------------------------------------
# tasks


@dataclass(frozen=True)
class Example:
    prompt: str  # e.g. "12+34="
    answer: str  # the reference completion without EOS, e.g. "46"


class LMTask(ABC):
    """A task: seeded examples and an exact reward. Subclasses set ``name``, ``alphabet``,
    ``max_prompt_len``, ``max_answer_len`` and implement ``_draw`` and ``_well_formed`` (and
    ``_correct`` when an exact string match is not the rule)."""

    name: str = ""
    alphabet: str
    max_prompt_len: int
    max_answer_len: int

    def __init__(self, *, format_reward: float = 0.0) -> None:
        self.format_reward = _check_format_reward(format_reward)

    @property
    def num_prompts(self) -> int | None:
        """How many distinct prompts the task can generate (None: not counted)."""
        return None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"{type(self).__name__}({args})"

    def _config(self) -> dict[str, Any]:
        return {"format_reward": self.format_reward}

    # sampling

    def sample(self, n: int, seed: int) -> list[Example]:
        """``n`` examples drawn i.i.d. (prompts may repeat); the same for the same seed."""
        n = _check_int("n", n, 0)
        rng = random.Random(_check_seed(seed))
        return [self._draw(rng) for _ in range(n)]

    def splits(self, n_train: int, n_eval: int, seed: int) -> tuple[list[Example], list[Example]]:
        """Train and eval examples with pairwise distinct prompts (so none shared between them)."""
        total = _check_int("n_train", n_train, 0) + _check_int("n_eval", n_eval, 0)
        count = self.num_prompts
        if count is not None and total > count:
            raise ValueError(
                f"task {self.name!r} has {count} distinct prompts, fewer than "
                f"n_train + n_eval = {n_train} + {n_eval} = {total}"
            )
        examples = self._distinct(random.Random(_check_seed(seed)), total)
        return examples[:n_train], examples[n_train:]

    @abstractmethod
    def _draw(self, rng: random.Random) -> Example: ...

    def _distinct(self, rng: random.Random, k: int) -> list[Example]:
        """``k`` examples with distinct prompts: draw until found, giving up after 20 k + 1000."""
        found: dict[str, Example] = {}
        max_draws = 20 * k + 1000
        for _ in range(max_draws):
            if len(found) == k:
                break
            example = self._draw(rng)
            found.setdefault(example.prompt, example)
        if len(found) < k:
            raise ValueError(
                f"task {self.name!r} gave only {len(found)} distinct prompts in {max_draws} draws, "
                f"fewer than the {k} asked for; ask for fewer or make the task larger"
            )
        return list(found.values())

    # reward

    def reward(self, example: Example, completion: str) -> float:
        """1.0 if correct, ``format_reward`` if wrong but well-formed, else 0.0; never raises."""
        if not isinstance(completion, str):
            return 0.0
        text = completion.strip()
        if self._correct(example, text):
            return 1.0
        return self.format_reward if self._well_formed(example, text) else 0.0

    def is_correct(self, example: Example, completion: str) -> bool:
        return isinstance(completion, str) and self._correct(example, completion.strip())

    def _correct(self, example: Example, text: str) -> bool:
        return text == example.answer

    @abstractmethod
    def _well_formed(self, example: Example, text: str) -> bool: ...


class _IndexedTask(LMTask):
    """A task whose prompts are numbered 0 .. num_prompts - 1 and drawn uniformly, so distinct
    prompts are drawn without replacement directly."""

    _count: int

    @property
    def num_prompts(self) -> int:
        return self._count

    @abstractmethod
    def _example_at(self, index: int) -> Example: ...

    def _draw(self, rng: random.Random) -> Example:
        return self._example_at(rng.randrange(self._count))

    def _distinct(self, rng: random.Random, k: int) -> list[Example]:
        if self._count > sys.maxsize:  # random.sample needs len(range) to fit in an index
            return super()._distinct(rng, k)
        return [self._example_at(i) for i in rng.sample(range(self._count), k)]


LM_TASKS: Registry[Callable[..., LMTask]] = Registry("task")


def make_task(name: str, **kwargs: Any) -> LMTask:
    """Build the registered task ``name`` (one of ``LM_TASKS.names()``) with ``kwargs``."""
    factory = LM_TASKS.get(name)
    allowed = list(inspect.signature(factory).parameters)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"unknown argument(s) {unknown} for task {name!r}; allowed: {allowed}")
    return factory(**kwargs)


@LM_TASKS.register("addition")
class AdditionTask(_IndexedTask):
    """Prompt "a+b=", answer str(a + b); a and b uniform in [0, 10^digits)."""

    name = "addition"

    def __init__(self, digits: int = 2, *, format_reward: float = 0.0) -> None:
        super().__init__(format_reward=format_reward)
        self.digits = _check_int("digits", digits, 1, 9)
        self.alphabet = _unique_chars(DIGITS, "+=")
        self.max_prompt_len = 2 * digits + 2
        self.max_answer_len = digits + 1
        self._count = 10 ** (2 * digits)

    def _config(self) -> dict[str, Any]:
        return {"digits": self.digits, **super()._config()}

    def _example_at(self, index: int) -> Example:
        a, b = divmod(index, 10**self.digits)
        return Example(f"{a}+{b}=", str(a + b))

    def _well_formed(self, example: Example, text: str) -> bool:
        return _only(text, DIGITS)


@LM_TASKS.register("sort")
class SortTask(_IndexedTask):
    """Prompt "sort:" + `length` digits + "=", answer the digits sorted ascending."""

    name = "sort"

    def __init__(self, length: int = 5, *, format_reward: float = 0.0) -> None:
        super().__init__(format_reward=format_reward)
        self.length = _check_int("length", length, 1, 64)
        self.alphabet = _unique_chars(DIGITS, "sort:=")
        self.max_prompt_len = len("sort:=") + length
        self.max_answer_len = length
        self._count = 10**length

    def _config(self) -> dict[str, Any]:
        return {"length": self.length, **super()._config()}

    def _example_at(self, index: int) -> Example:
        digits = str(index).zfill(self.length)
        return Example(f"sort:{digits}=", "".join(sorted(digits)))

    def _well_formed(self, example: Example, text: str) -> bool:
        return _only(text, DIGITS)


@LM_TASKS.register("reverse")
class ReverseTask(_IndexedTask):
    """Prompt "rev:" + `length` characters of `letters` + "=", answer them reversed."""

    name = "reverse"

    def __init__(
        self, length: int = 5, letters: str = "abcde", *, format_reward: float = 0.0
    ) -> None:
        super().__init__(format_reward=format_reward)
        self.length = _check_int("length", length, 1, 64)
        self.letters = _check_chars("letters", letters, string.ascii_letters)
        self.alphabet = _unique_chars(letters, "rev:=")
        self.max_prompt_len = len("rev:=") + length
        self.max_answer_len = length
        self._count = len(letters) ** length

    def _config(self) -> dict[str, Any]:
        return {"length": self.length, "letters": self.letters, **super()._config()}

    def _example_at(self, index: int) -> Example:
        chars = []
        for _ in range(self.length):  # index written in base len(letters), most significant first
            index, r = divmod(index, len(self.letters))
            chars.append(self.letters[r])
        text = "".join(reversed(chars))
        return Example(f"rev:{text}=", text[::-1])

    def _well_formed(self, example: Example, text: str) -> bool:
        return _only(text, self.letters)


# countdown


def _expression_tokens(text: str, ops: str) -> list[str] | None:
    """["3", "*", "5", "+", "7"] for "3*5+7"; None unless ``text`` matches number (op number)*."""
    op = "[" + "".join(re.escape(o) for o in ops) + "]"
    number = "(?:0|[1-9][0-9]*)"
    if not isinstance(text, str) or re.fullmatch(f"{number}(?:{op}{number})*", text) is None:
        return None
    return re.findall(f"[0-9]+|{op}", text)


def _evaluate_tokens(tokens: list[str]) -> int:
    """Value of number (op number)* with * before + and -, left to right."""
    total, sign, term = 0, 1, int(tokens[0])
    for op, number in zip(tokens[1::2], tokens[2::2], strict=True):
        if op == "*":
            term *= int(number)
        else:
            total, sign, term = total + sign * term, (1 if op == "+" else -1), int(number)
    return total + sign * term


def evaluate_expression(text: str, ops: str = COUNTDOWN_OPS) -> int | None:
    """Integer value of an expression of non-negative integers (no leading zeros, at most
    ``MAX_EXPRESSION_DIGITS`` digits each) joined by the operators in ``ops`` (a subset of "+-*"),
    no parentheses or spaces, * before + and -; None when ``text`` is not such an expression."""
    tokens = _expression_tokens(text, ops)
    if tokens is None or any(len(t) > MAX_EXPRESSION_DIGITS for t in tokens[0::2]):
        return None
    return _evaluate_tokens(tokens)


@LM_TASKS.register("countdown")
class CountdownTask(LMTask):
    """Prompt "3,5,7>22=", answer an expression over some of 3, 5, 7 (each at most once) that
    equals 22, e.g. "3*5+7"."""

    name = "countdown"

    def __init__(
        self,
        numbers: int = 3,
        max_number: int = 9,
        ops: str = COUNTDOWN_OPS,
        *,
        format_reward: float = 0.0,
    ) -> None:
        super().__init__(format_reward=format_reward)
        self.numbers = _check_int("numbers", numbers, 2, 6)
        self.max_number = _check_int("max_number", max_number, 1, 999)
        self.ops = _check_chars("ops", ops, COUNTDOWN_OPS)
        self.alphabet = _unique_chars(DIGITS, ops, ",>=")
        width = len(str(max_number))
        # |value| of a sum of products of numbers in [1, M]: <= max(M, 2)^n with *, n M without
        bound = max(max_number, 2) ** numbers if "*" in ops else numbers * max_number
        target_len = len(str(bound)) + ("-" in ops)
        self.max_answer_len = numbers * width + numbers - 1
        self.max_prompt_len = numbers * width + numbers - 1 + len(">=") + target_len

    def _config(self) -> dict[str, Any]:
        args = {"numbers": self.numbers, "max_number": self.max_number, "ops": self.ops}
        return {**args, **super()._config()}

    def _draw(self, rng: random.Random) -> Example:
        numbers = [rng.randint(1, self.max_number) for _ in range(self.numbers)]
        order = rng.sample(numbers, len(numbers))
        ops = [rng.choice(self.ops) for _ in range(self.numbers - 1)]
        answer = "".join(f"{op}{x}" for op, x in zip(["", *ops], order, strict=True))
        target = _evaluate_tokens(re.findall(r"[0-9]+|[-+*]", answer))
        return Example(",".join(map(str, numbers)) + f">{target}=", answer)

    def parse_prompt(self, prompt: str) -> tuple[list[int], int]:
        """([3, 5, 7], 22) for "3,5,7>22="; ValueError for a prompt not in that format."""
        match = re.fullmatch(r"((?:[1-9][0-9]*,)*[1-9][0-9]*)>(-?(?:0|[1-9][0-9]*))=", prompt)
        if match is None:
            raise ValueError(f"not a countdown prompt (like '3,5,7>22='): {prompt!r}")
        return [int(x) for x in match.group(1).split(",")], int(match.group(2))

    def _value(self, example: Example, text: str) -> int | None:
        """Value of ``text`` if it is an expression over the example's numbers (each used at most
        as often as given), else None."""
        tokens = _expression_tokens(text, self.ops)
        if tokens is None:
            return None
        given, _ = self.parse_prompt(example.prompt)
        if Counter(tokens[0::2]) - Counter(map(str, given)):  # a number not given, or reused
            return None
        return _evaluate_tokens(tokens)

    def _correct(self, example: Example, text: str) -> bool:
        value = self._value(example, text)
        return value is not None and value == self.parse_prompt(example.prompt)[1]

    def _well_formed(self, example: Example, text: str) -> bool:
        return self._value(example, text) is not None


# ---------------------------------------------------------------------------------------------
# tokenizer <-> task, batches


def task_tokenizer(task: LMTask) -> CharTokenizer:
    """A tokenizer whose alphabet is the task's."""
    return CharTokenizer(task.alphabet)


def check_tokenizer(tokenizer: CharTokenizer, task: LMTask) -> None:
    """Raise if ``tokenizer`` cannot encode a character of the task's alphabet."""
    missing = [c for c in task.alphabet if not tokenizer.can_encode(c)]
    if missing:
        raise ValueError(
            f"tokenizer cannot encode characters {missing} of task {task.name!r} "
            f"(task alphabet {task.alphabet!r}, tokenizer alphabet {tokenizer.alphabet!r})"
        )


def check_context(task: LMTask, context_len: int) -> None:
    """Raise if bos + the longest prompt + the longest answer + eos do not fit ``context_len``."""
    context_len = _check_int("context_len", context_len, 1)
    needed = 1 + task.max_prompt_len + task.max_answer_len + 1
    if needed > context_len:
        raise ValueError(
            f"task {task.name!r} needs a context of {needed} tokens (1 bos + {task.max_prompt_len} "
            f"prompt + {task.max_answer_len} answer + 1 eos) but context_len is {context_len}"
        )


def _encode_rows(tokenizer: CharTokenizer, texts: Sequence[str], name: str) -> list[list[int]]:
    """bos + ids of each text; errors name the bad item."""
    if isinstance(texts, str) or len(texts) == 0:
        raise ValueError(f"{name} must be a non-empty sequence, got {texts!r}")
    rows = []
    for i, text in enumerate(texts):
        try:
            rows.append(tokenizer.encode(text, bos=True))
        except ValueError as e:
            raise ValueError(f"{name}[{i}]: {e}") from None
    return rows


def encode_prompts(tokenizer: CharTokenizer, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
    """LEFT-padded generation batch of bos + prompt: input_ids (B, P) long and attention_mask
    (B, P) long, 1 on real tokens; P is the longest prompt + 1."""
    rows = _encode_rows(tokenizer, prompts, "prompts")
    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), tokenizer.pad_id, dtype=torch.long)  # (B, P)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, P)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, width - len(row) :] = 1
    return input_ids, attention_mask


def encode_sft(
    tokenizer: CharTokenizer, examples: Sequence[Example]
) -> tuple[Tensor, Tensor, Tensor]:
    """RIGHT-padded supervised batch of bos + prompt + answer + eos: input_ids (B, L) long,
    attention_mask (B, L) long (1 on real tokens), loss_mask (B, L) bool, true on the answer
    tokens and the eos (the targets: CE of logits[:, :-1] vs input_ids[:, 1:] on loss_mask[:, 1:])."""
    texts = [ex.prompt + ex.answer for ex in examples]
    rows = [row + [tokenizer.eos_id] for row in _encode_rows(tokenizer, texts, "examples")]
    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), tokenizer.pad_id, dtype=torch.long)  # (B, L)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, L)
    loss_mask = torch.zeros((len(rows), width), dtype=torch.bool)  # (B, L)
    for i, (row, ex) in enumerate(zip(rows, examples, strict=True)):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, : len(row)] = 1
        loss_mask[i, 1 + len(ex.prompt) : len(row)] = True  # answer + eos
    return input_ids, attention_mask, loss_mask
