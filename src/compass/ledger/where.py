"""Figure filters: `gsm8k.accuracy > 0.5 and (dpo.beta = 0.1 or dpo.beta = 0.2)`, parsed by hand (no eval)
into Cmp / BoolOp / Not nodes; compass.ledger.index compiles them to parameterised SQL over the figures.

A name is a run's own config key or metric (`learning_rate`, `gsm8k.accuracy`, `train/loss`), or
`STAGE.KEY` / `NAME.KEY`: KEY of the run itself or of an ancestor of that stage kind or recipe name, so
`dpo.beta = 0.1` finds the DPO runs with beta 0.1 and every run downstream of them (evals included).

Operators: = != < <= > >= on numbers; = != and ~ (contains) on text. Values: numbers, true/false,
'quoted' or "quoted" text, or a bare word. Combine with and, or, not and parentheses (and binds tighter).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from compass.errors import CompassError

TOKEN = r"""
    \s*(?:
      (?P<op><=|>=|!=|==|=|<|>|~)
    | (?P<lparen>\() | (?P<rparen>\))
    | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.\-/]))
    | (?P<name>`[^`]+`|[^\s()=<>!~'"]+)
    )"""
KEYWORDS = {"and", "or", "not"}


@lru_cache(maxsize=1)
def _token() -> re.Pattern:
    return re.compile(TOKEN, re.X)  # on first use: the light commands that never parse a filter skip the compile


@dataclass(frozen=True)
class Cmp:
    name: str
    op: str
    value: float | str

    def __str__(self) -> str:
        value = self.value if isinstance(self.value, float) else repr(self.value)
        return f"{self.name} {self.op} {value}"


@dataclass(frozen=True)
class BoolOp:
    op: str  # and / or
    items: tuple


@dataclass(frozen=True)
class Not:
    item: object


def tokenize(text: str) -> list[tuple[str, str, int]]:
    tokens = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _token().match(text, pos)
        if not match or match.end() == pos:
            raise CompassError(f"--where: cannot read {text[pos:pos + 20]!r} at column {pos + 1} of {text!r}")
        kind = match.lastgroup
        value, start = match.group(kind), match.start(kind)
        if kind == "name" and value.lower() in KEYWORDS:
            kind = value.lower()
        tokens.append((kind, value, start))
        pos = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos][0] if self.pos < len(self.tokens) else None

    def take(self, *kinds: str) -> tuple[str, str, int]:
        if self.pos >= len(self.tokens):
            raise CompassError(f"--where: {self.text!r} ends early: expected {' or '.join(kinds)}")
        token = self.tokens[self.pos]
        if token[0] not in kinds:
            raise CompassError(f"--where: expected {' or '.join(kinds)} at column {token[2] + 1} of {self.text!r}, got {token[1]!r}")
        self.pos += 1
        return token

    def parse(self):
        if not self.tokens:
            raise CompassError("--where: empty filter")
        node = self.or_expr()
        if self.pos != len(self.tokens):
            token = self.tokens[self.pos]
            raise CompassError(f"--where: unexpected {token[1]!r} at column {token[2] + 1} of {self.text!r} (missing 'and'/'or'?)")
        return node

    def or_expr(self):
        items = [self.and_expr()]
        while self.peek() == "or":
            self.pos += 1
            items.append(self.and_expr())
        return items[0] if len(items) == 1 else BoolOp("or", tuple(items))

    def and_expr(self):
        items = [self.unary()]
        while self.peek() == "and":
            self.pos += 1
            items.append(self.unary())
        return items[0] if len(items) == 1 else BoolOp("and", tuple(items))

    def unary(self):
        kind = self.peek()
        if kind == "not":
            self.pos += 1
            return Not(self.unary())
        if kind == "lparen":
            self.pos += 1
            node = self.or_expr()
            self.take("rparen")
            return node
        return self.comparison()

    def comparison(self) -> Cmp:
        _, name, _ = self.take("name")
        name = name.strip("`")
        _, op, col = self.take("op")
        op = "=" if op == "==" else op
        kind, raw, _ = self.take("number", "string", "name")
        if kind == "number":
            value: float | str = float(raw)
        elif kind == "string":
            value = re.sub(r"\\(.)", r"\1", raw[1:-1])
        elif raw.lower() in ("true", "false"):
            value = 1.0 if raw.lower() == "true" else 0.0
        else:
            value = raw
        if isinstance(value, str) and op in ("<", "<=", ">", ">="):
            raise CompassError(f"--where: {name} {op} {raw}: '{op}' needs a number (text compares with =, != or ~)")
        if isinstance(value, float) and op == "~":
            value = raw
        return Cmp(name, op, value)


def parse_where(text: str):
    return _Parser(text).parse()


def comparisons(node) -> list[Cmp]:
    if isinstance(node, Cmp):
        return [node]
    if isinstance(node, Not):
        return comparisons(node.item)
    return [c for item in node.items for c in comparisons(item)]


def name_forms(name: str) -> list[tuple[str | None, str]]:
    """(stage-or-name prefix or None, key) readings of a figure name."""
    forms: list[tuple[str | None, str]] = [(None, name)]
    head, dot, rest = name.partition(".")
    if dot and rest:
        forms.append((head, rest))
    return forms
