"""Figure filters: `gsm8k.accuracy > 0.5 and (dpo.beta = 0.1 or dpo.beta = 0.2)`, parsed by hand (no eval)
and compiled to parameterised SQL over the index's figures.

A name is a run's own config key or metric (`learning_rate`, `gsm8k.accuracy`, `train/loss`), or
`STAGE.KEY` / `NAME.KEY`: KEY of the run itself or of an ancestor of that stage kind or recipe name, so
`dpo.beta = 0.1` finds the DPO runs with beta 0.1 and every run downstream of them (evals included).

Operators: = != < <= > >= on numbers; = != and ~ (contains) on text. Values: numbers, true/false,
'quoted' or "quoted" text, or a bare word. Combine with and, or, not and parentheses (and binds tighter).
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from compass.errors import CompassError

TOKEN = re.compile(r"""
    \s*(?:
      (?P<op><=|>=|!=|==|=|<|>|~)
    | (?P<lparen>\() | (?P<rparen>\))
    | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.\-/]))
    | (?P<name>`[^`]+`|[^\s()=<>!~'"]+)
    )""", re.X)
KEYWORDS = {"and", "or", "not"}
REL_TOL = 1e-9


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
        match = TOKEN.match(text, pos)
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


def _value_sql(cmp: Cmp) -> tuple[str, list]:
    if isinstance(cmp.value, float):
        tol = REL_TOL * max(1.0, abs(cmp.value))
        if cmp.op == "=":
            return "f.num BETWEEN ? AND ?", [cmp.value - tol, cmp.value + tol]
        if cmp.op == "!=":
            return "f.num IS NOT NULL AND f.num NOT BETWEEN ? AND ?", [cmp.value - tol, cmp.value + tol]
        return f"f.num {cmp.op} ?", [cmp.value]
    if cmp.op == "~":
        escaped = cmp.value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return "f.text LIKE ? ESCAPE '\\'", [f"%{escaped}%"]
    return f"f.text {cmp.op} ?", [cmp.value]


def name_forms(name: str) -> list[tuple[str | None, str]]:
    """(stage-or-name prefix or None, key) readings of a figure name."""
    forms: list[tuple[str | None, str]] = [(None, name)]
    head, dot, rest = name.partition(".")
    if dot and rest:
        forms.append((head, rest))
    return forms


def cmp_sql(cmp: Cmp) -> tuple[str, list]:
    """SQL selecting run_ids for which `cmp` holds."""
    cond, values = _value_sql(cmp)
    parts, params = [], []
    for prefix, key in name_forms(cmp.name):
        if prefix is None:
            parts.append(f"SELECT f.run_id FROM figures f WHERE f.key = ? AND {cond}")
            params += [key, *values]
        else:
            # CROSS JOIN fixes the order: the figure's index range first, then its run, then descendants
            parts.append("SELECT a.run_id FROM figures f CROSS JOIN runs ar CROSS JOIN ancestry a "
                         "WHERE ar.run_id = f.run_id AND a.ancestor_id = f.run_id "
                         f"AND f.key = ? AND (ar.stage = ? OR ar.name = ?) AND {cond}")
            params += [key, prefix, prefix, *values]
    return " UNION ".join(parts), params


def compile_where(node) -> tuple[str, list]:
    """A boolean SQL expression over `r.run_id` (r = the runs table)."""
    if isinstance(node, Cmp):
        sql, params = cmp_sql(node)
        return f"r.run_id IN ({sql})", params
    if isinstance(node, Not):
        sql, params = compile_where(node.item)
        return f"NOT ({sql})", params
    parts, params = [], []
    for item in node.items:
        sql, p = compile_where(item)
        parts.append(f"({sql})")
        params += p
    return f" {node.op.upper()} ".join(parts), params


def check_names(db, node) -> None:
    """Fail with close matches when a name is no figure of any run (a typo would otherwise match nothing)."""
    for cmp in comparisons(node):
        known = False
        for prefix, key in name_forms(cmp.name):
            if prefix is None:
                known = known or db.execute("SELECT 1 FROM figures WHERE key = ? LIMIT 1", (key,)).fetchone() is not None
            else:
                known = known or db.execute(
                    "SELECT 1 FROM figures f JOIN runs ar ON ar.run_id = f.run_id WHERE f.key = ? AND (ar.stage = ? OR ar.name = ?) LIMIT 1",
                    (key, prefix, prefix)).fetchone() is not None
        if not known:
            keys = [r[0] for r in db.execute("SELECT DISTINCT key FROM figures")]
            staged = [f"{s}.{k}" for s, k in db.execute("SELECT DISTINCT r.stage, f.key FROM figures f JOIN runs r ON r.run_id = f.run_id")]
            close = difflib.get_close_matches(cmp.name, keys + staged, n=4, cutoff=0.5)
            hint = f"; close names: {', '.join(close)}" if close else ""
            raise CompassError(f"--where: no run has a figure named {cmp.name!r}{hint}")


def figure_value(db, run_id: str, name: str) -> tuple[str, str] | None:
    """(value text, where it came from) of `name` for one run: its own figure first, else the nearest
    ancestor (or itself) of that stage kind / recipe name."""
    for prefix, key in name_forms(name):
        if prefix is None:
            row = db.execute("SELECT text FROM figures WHERE run_id = ? AND key = ? LIMIT 1", (run_id, key)).fetchone()
            if row:
                return row[0], "self"
        else:
            # the run's few ancestors first (CROSS JOIN keeps that order), then their figures by (run_id, key)
            row = db.execute(
                "SELECT f.text, a.ancestor_id, a.depth FROM ancestry a CROSS JOIN runs ar CROSS JOIN figures f "
                "WHERE a.run_id = ? AND ar.run_id = a.ancestor_id AND f.run_id = a.ancestor_id AND f.key = ? "
                "AND (ar.stage = ? OR ar.name = ?) ORDER BY a.depth LIMIT 1", (run_id, key, prefix, prefix)).fetchone()
            if row:
                return row[0], "self" if row[2] == 0 else f"ancestor {row[1][:8]}"
    return None
