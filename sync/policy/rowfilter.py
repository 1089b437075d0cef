"""The row filter language of policy files.

Grammar (case-insensitive keywords)::

    expr       := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | "(" expr ")" | comparison
    comparison := column ( op literal
                         | ["not"] "in" "(" literal ("," literal)* ")"
                         | "is" ["not"] "null" )
    op         := "=" | "!=" | "<>" | "<" | "<=" | ">" | ">="
    literal    := number | 'string' | true | false

Only columns and literals: no function calls, subqueries, casts, comments or ``;``.
A filter compiles to SQL built from identifiers and bound literals — the filter's own
text never reaches the server — and evaluates in Python with SQL's three-valued logic,
so the two can be checked against each other.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from psycopg import sql

from sync.errors import FilterSyntaxError
from sync.policy.literals import comparison_problem

Literal = str | int | Decimal | bool

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<number>-?\d+(?:\.\d+)?)
  | (?P<string>'(?:[^']|'')*')
  | (?P<op><=|>=|<>|!=|=|<|>)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<comma>,)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
""", re.VERBOSE)
_KEYWORDS = {"and", "or", "not", "in", "is", "null", "true", "false"}


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    pos: int


@dataclass(frozen=True)
class Compare:
    column: str
    op: str
    value: Literal


@dataclass(frozen=True)
class In:
    column: str
    values: tuple[Literal, ...]
    negated: bool


@dataclass(frozen=True)
class IsNull:
    column: str
    negated: bool


@dataclass(frozen=True)
class Not:
    operand: Node


@dataclass(frozen=True)
class BoolOp:
    op: str  # "and" | "or"
    operands: tuple[Node, ...]


Node = Compare | In | IsNull | Not | BoolOp


def _tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        if text.startswith("--", pos) or text.startswith("/*", pos):
            raise FilterSyntaxError("comments are not allowed in a row filter", text=text,
                                    position=pos)
        m = _TOKEN.match(text, pos)
        if not m:
            ch = text[pos]
            what = ("';' is not allowed (one expression only)" if ch == ";"
                    else "unterminated string" if ch == "'"
                    else f"unexpected character {ch!r}")
            raise FilterSyntaxError(what, text=text, position=pos)
        kind = m.lastgroup or ""
        if kind != "ws":
            word = m.group()
            if kind == "ident" and word.lower() in _KEYWORDS:
                kind, word = word.lower(), word.lower()
            tokens.append(Token(kind, word, pos))
        pos = m.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self, *kinds: str) -> Token:
        tok = self.peek()
        if tok.kind not in kinds:
            self.fail(f"expected {' or '.join(kinds)}, found "
                      f"{repr(tok.text) if tok.text else 'end of filter'}", tok)
        self.i += 1
        return tok

    def fail(self, message: str, tok: Token) -> None:
        raise FilterSyntaxError(message, text=self.text, position=tok.pos)

    def parse(self) -> Node:
        node = self.expr()
        if self.peek().kind != "end":
            self.fail(f"unexpected {self.peek().text!r}", self.peek())
        return node

    def expr(self) -> Node:
        return self._chain("or", self.and_expr)

    def and_expr(self) -> Node:
        return self._chain("and", self.not_expr)

    def _chain(self, op: str, operand: Callable[[], Node]) -> Node:
        """``operand (op operand)*``, flattened into one BoolOp."""
        parts = [operand()]
        while self.peek().kind == op:
            self.i += 1
            parts.append(operand())
        return parts[0] if len(parts) == 1 else BoolOp(op, tuple(parts))

    def not_expr(self) -> Node:
        tok = self.peek()
        if tok.kind == "not":
            self.i += 1
            return Not(self.not_expr())
        if tok.kind == "lparen":
            self.i += 1
            if self.peek().kind == "ident" and self.peek().text.lower() == "select":
                self.fail("subqueries are not allowed", self.peek())
            node = self.expr()
            self.take("rparen")
            return node
        return self.comparison()

    def comparison(self) -> Node:
        tok = self.take("ident")
        if self.peek().kind == "lparen":
            self.fail(f"function calls are not allowed ({tok.text}(...))", tok)
        column = tok.text.lower()
        nxt = self.peek()
        if nxt.kind == "op":
            self.i += 1
            op = "!=" if nxt.text == "<>" else nxt.text
            return Compare(column, op, self.literal())
        if nxt.kind == "is":
            self.i += 1
            negated = self.peek().kind == "not"
            if negated:
                self.i += 1
            self.take("null")
            return IsNull(column, negated)
        negated = nxt.kind == "not"
        if negated:
            self.i += 1
        if self.peek().kind == "in":
            self.i += 1
            self.take("lparen")
            values = [self.literal()]
            while self.peek().kind == "comma":
                self.i += 1
                values.append(self.literal())
            self.take("rparen")
            return In(column, tuple(values), negated)
        self.fail("expected a comparison (=, !=, <, <=, >, >=), in (...), or is null after "
                  f"column {column!r}", self.peek())
        raise AssertionError("unreachable")

    def literal(self) -> Literal:
        tok = self.peek()
        if tok.kind == "number":
            self.i += 1
            return Decimal(tok.text) if "." in tok.text else int(tok.text)
        if tok.kind == "string":
            self.i += 1
            return tok.text[1:-1].replace("''", "'")
        if tok.kind in ("true", "false"):
            self.i += 1
            return tok.kind == "true"
        if tok.kind == "null":
            self.fail("compare with null using 'is null' / 'is not null'", tok)
        if tok.kind == "ident":
            self.fail(f"only literals may stand on the right of a comparison, found {tok.text!r}",
                      tok)
        self.fail(f"expected a literal, found {repr(tok.text) if tok.text else 'end of filter'}",
                  tok)
        raise AssertionError("unreachable")


@dataclass(frozen=True)
class RowFilter:
    """A parsed row filter; ``columns`` are the columns it reads."""

    text: str
    tree: Node

    @classmethod
    def parse(cls, text: str) -> RowFilter:
        if not text.strip():
            raise FilterSyntaxError("empty row filter", text=text, position=0)
        return cls(text, _Parser(text).parse())

    @property
    def columns(self) -> frozenset[str]:
        out: set[str] = set()

        def walk(n: Node) -> None:
            if isinstance(n, Compare | In | IsNull):
                out.add(n.column)
            elif isinstance(n, Not):
                walk(n.operand)
            else:
                for o in n.operands:
                    walk(o)
        walk(self.tree)
        return frozenset(out)

    def to_sql(self, alias: str) -> sql.Composable:
        """SQL text of identifiers and ``sql.Literal`` values (adapted by psycopg).
        For local queries; what is sent to a peer uses ``to_sql_params``."""
        return _to_sql(self.tree, alias)

    def to_sql_params(self, alias: str, types: dict[str, str],
                      prefix: str = "regionsync.f") -> tuple[sql.Composable, list[tuple[str, str]]]:
        """SQL whose values are session settings, plus the settings to bind.

        Peers are read with COPY, which takes no bind parameters; so each literal becomes
        ``current_setting('regionsync.fN')::<column type>`` and its value is bound with
        ``set_config(%s, %s, true)``. The filter's values never appear in SQL text.
        """
        params: list[tuple[str, str]] = []

        def value(column: str, v: Literal) -> sql.Composable:
            name = f"{prefix}{len(params)}"
            params.append((name, _as_text(v)))
            return sql.SQL("current_setting({})::{}").format(
                sql.Literal(name), sql.SQL(types.get(column, "text")))
        return _to_sql(self.tree, alias, value), params

    def type_problem(self, types: dict[str, str]) -> str | None:
        """Why a literal cannot compare with its column's type, or None."""
        return comparison_problem(_comparisons(self.tree), types, _render)

    def describe(self) -> str:
        """The filter in words, for people reviewing a policy."""
        return _describe(self.tree)

    def evaluate(self, row: dict[str, Any]) -> bool:
        """Whether SQL's WHERE would keep ``row`` (NULL/unknown counts as not kept)."""
        return _eval(self.tree, row) is True


def _literal(_column: str, v: Literal) -> sql.Composable:
    return sql.Literal(v)


def _to_sql(node: Node, alias: str,
            value: Callable[[str, Literal], sql.Composable] = _literal) -> sql.Composable:
    if isinstance(node, Compare):
        return sql.SQL("{} {} {}").format(sql.Identifier(alias, node.column), sql.SQL(node.op),
                                          value(node.column, node.value))
    if isinstance(node, In):
        return sql.SQL("{} {}IN ({})").format(
            sql.Identifier(alias, node.column), sql.SQL("NOT " if node.negated else ""),
            sql.SQL(", ").join(value(node.column, v) for v in node.values))
    if isinstance(node, IsNull):
        return sql.SQL("{} IS {}NULL").format(sql.Identifier(alias, node.column),
                                              sql.SQL("NOT " if node.negated else ""))
    if isinstance(node, Not):
        return sql.SQL("(NOT {})").format(_to_sql(node.operand, alias, value))
    joiner = sql.SQL(" AND " if node.op == "and" else " OR ")
    return sql.SQL("({})").format(joiner.join(_to_sql(o, alias, value) for o in node.operands))


def _as_text(v: Literal) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _render(v: Literal) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    return str(v)


def _comparisons(node: Node) -> list[Compare | In]:
    if isinstance(node, Compare | In):
        return [node]
    if isinstance(node, IsNull):
        return []
    if isinstance(node, Not):
        return _comparisons(node.operand)
    return [c for o in node.operands for c in _comparisons(o)]


_OP_WORDS = {"=": "is", "!=": "is not", "<": "is less than", "<=": "is at most",
             ">": "is greater than", ">=": "is at least"}


def _describe(node: Node) -> str:
    if isinstance(node, Compare):
        return f"{node.column} {_OP_WORDS[node.op]} {_render(node.value)}"
    if isinstance(node, In):
        listed = ", ".join(_render(v) for v in node.values)
        return f"{node.column} is {'not ' if node.negated else ''}one of {listed}"
    if isinstance(node, IsNull):
        return f"{node.column} is {'filled in' if node.negated else 'empty'}"
    if isinstance(node, Not):
        return f"not ({_describe(node.operand)})"
    word = " and " if node.op == "and" else " or "
    return "(" + word.join(_describe(o) for o in node.operands) + ")"


def _cmp(a: Any, op: str, b: Any) -> bool | None:
    if a is None:
        return None
    if isinstance(a, bool) != isinstance(b, bool):
        return None
    if op == "=":
        return bool(a == b)
    if op == "!=":
        return bool(a != b)
    if op == "<":
        return bool(a < b)
    if op == "<=":
        return bool(a <= b)
    if op == ">":
        return bool(a > b)
    return bool(a >= b)


def _eval(node: Node, row: dict[str, Any]) -> bool | None:
    if isinstance(node, Compare):
        return _cmp(row.get(node.column), node.op, node.value)
    if isinstance(node, IsNull):
        return (row.get(node.column) is None) != node.negated
    if isinstance(node, In):
        v = row.get(node.column)
        if v is None:
            return None
        hit = any(_cmp(v, "=", x) for x in node.values)
        return hit != node.negated
    if isinstance(node, Not):
        r = _eval(node.operand, row)
        return None if r is None else not r
    results = [_eval(o, row) for o in node.operands]
    if node.op == "and":
        if any(r is False for r in results):
            return False
        return None if any(r is None for r in results) else True
    if any(r is True for r in results):
        return True
    return None if any(r is None for r in results) else False
