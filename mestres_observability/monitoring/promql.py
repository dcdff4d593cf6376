"""A static check of PromQL: every metric and label an expression names exists.

:func:`parse` reads PromQL into a small syntax tree (selectors, range and
subquery selectors, ``offset``/``@``, functions, aggregations with
``by``/``without``, binary operators with ``bool``, ``on``/``ignoring`` and
``group_left``/``group_right``, precedence as Prometheus has it), good for the
expressions the renderers write and for Grafana panel queries (``$__rate_interval``
and other ``$variables`` are read as durations or numbers).

:func:`check_expression` then walks the tree and says what is wrong:

* a metric that is neither a sample of the catalogue (with the namespace
  applied, and its feature enabled under the settings), nor a series of the
  named exporters (:mod:`~mestres_observability.monitoring.exporters`), nor a
  series Prometheus writes (``up``...), nor a recording rule defined alongside;
* a label matcher, ``by``/``without``, ``on``/``ignoring``, ``group_left`` or
  ``label_replace`` source naming a label the series in question do not have
  (every series has ``job`` and ``instance``; ``_bucket`` samples have ``le``).

The label sets are followed through functions, aggregations and binary
operators, so ``sum by (job) (rate(x[5m])) / on (endpoint) ...`` is refused:
after ``sum by (job)`` only ``job`` is left.

Example::

    problems = check_expression('sum by (route) (rate(http_requests_total[5m]))',
                                config=ObservabilityConfig())
    # ["label 'route' in by(...): the series have endpoint, instance, job, method, status"]
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import catalogue
from ..config import ObservabilityConfig
from . import _yaml
from .exporters import EXPORTERS, PROMETHEUS_SERIES, TARGET_LABELS

__all__ = [
    "Aggregate",
    "Binary",
    "Call",
    "Node",
    "NumberLiteral",
    "Paren",
    "Problem",
    "PromQLSyntaxError",
    "RangeSelector",
    "Selector",
    "StringLiteral",
    "Unary",
    "check_expression",
    "check_rule_files",
    "known_series",
    "parse",
    "rule_expressions",
    "selectors",
]

Labels = frozenset[str] | None  # None: unknown, any label may be there


class PromQLSyntaxError(ValueError):
    """An expression this parser cannot read (position and reason in the message)."""


# ---------------------------------------------------------------- tokens
_TOKEN_RE = re.compile(r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<duration>(?:\d+(?:ms|[smhdwy]))+)(?!\w)
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<var>\$\{[^}]+\}|\$\w+|\[\[\w+\]\])
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>==|!=|<=|>=|=~|!~|[-+*/%^<>=(){}\[\],:@])
""", re.VERBOSE)


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    pos: int


def _tokenize(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise PromQLSyntaxError(f"unexpected character {text[pos]!r} at {pos}: {text}")
        kind = m.lastgroup or ""
        if kind != "ws":
            out.append(_Tok(kind, m.group(), pos))
        pos = m.end()
    out.append(_Tok("eof", "", len(text)))
    return out


# ---------------------------------------------------------------- syntax tree
@dataclass(frozen=True)
class Node:
    """Base of the syntax tree."""


@dataclass(frozen=True)
class NumberLiteral(Node):
    """A number (or a Grafana ``$variable`` standing for one)."""

    text: str


@dataclass(frozen=True)
class StringLiteral(Node):
    """A string literal (quotes removed)."""

    value: str


@dataclass(frozen=True)
class Selector(Node):
    """An instant vector selector: ``name{label op "value", ...}``."""

    name: str | None
    matchers: tuple[tuple[str, str, str], ...]
    pos: int = 0


@dataclass(frozen=True)
class RangeSelector(Node):
    """``expr[range]`` or a subquery ``expr[range:step]``."""

    expr: Node
    range: str
    subquery: bool = False


@dataclass(frozen=True)
class Call(Node):
    """A function call."""

    func: str
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Aggregate(Node):
    """``op [by|without (labels)] ([param,] expr)``."""

    op: str
    expr: Node
    param: Node | None = None
    grouping: tuple[str, ...] = ()
    without: bool = False
    has_grouping: bool = False


@dataclass(frozen=True)
class Binary(Node):
    """``lhs op [bool] [on|ignoring (labels)] [group_left|group_right (labels)] rhs``."""

    op: str
    lhs: Node
    rhs: Node
    return_bool: bool = False
    matching: tuple[str, ...] | None = None  # labels of on/ignoring, None: neither
    on: bool = False
    group: str = ""  # "", "left" or "right"
    include: tuple[str, ...] = ()


@dataclass(frozen=True)
class Unary(Node):
    """``-expr`` or ``+expr``."""

    op: str
    expr: Node


@dataclass(frozen=True)
class Paren(Node):
    """``(expr)``."""

    expr: Node


AGGREGATIONS = frozenset({"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                          "count_values", "bottomk", "topk", "quantile"})
_PARAM_AGGREGATIONS = frozenset({"count_values", "bottomk", "topk", "quantile"})
#: Functions taking a range vector first; the result keeps its labels.
RANGE_FUNCTIONS = frozenset({
    "rate", "irate", "increase", "delta", "idelta", "deriv", "changes", "resets",
    "avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time",
    "quantile_over_time", "stddev_over_time", "stdvar_over_time", "last_over_time",
    "present_over_time", "absent_over_time", "predict_linear", "holt_winters", "mad_over_time",
})
#: Functions whose result keeps the labels of their (first) vector argument.
KEEPING_FUNCTIONS = frozenset({
    "abs", "ceil", "floor", "round", "sqrt", "exp", "ln", "log2", "log10", "clamp",
    "clamp_min", "clamp_max", "sort", "sort_desc", "timestamp", "sgn", "day_of_month",
    "day_of_week", "day_of_year", "days_in_month", "hour", "minute", "month", "year",
    "acos", "asin", "atan", "cos", "sin", "tan", "deg", "rad",
})
_SCALAR_FUNCTIONS = frozenset({"scalar", "time", "pi"})
FUNCTIONS = (RANGE_FUNCTIONS | KEEPING_FUNCTIONS | _SCALAR_FUNCTIONS
             | {"histogram_quantile", "label_replace", "label_join", "absent", "vector"})

_PRECEDENCE = {"or": 1, "and": 2, "unless": 2, "==": 3, "!=": 3, "<=": 3, "<": 3, ">=": 3,
               ">": 3, "+": 4, "-": 4, "*": 5, "/": 5, "%": 5, "atan2": 5, "^": 6}
_COMPARISONS = frozenset({"==", "!=", "<=", "<", ">=", ">"})
_SET_OPS = frozenset({"and", "or", "unless"})


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0

    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def error(self, message: str) -> PromQLSyntaxError:
        return PromQLSyntaxError(f"{message} at {self.tok.pos} ({self.tok.text!r}) in: {self.text}")

    def take(self, text: str | None = None, kind: str | None = None) -> _Tok:
        tok = self.tok
        if (text is not None and tok.text != text) or (kind is not None and tok.kind != kind):
            raise self.error(f"expected {text or kind}")
        self.i += 1
        return tok

    def accept(self, text: str) -> bool:
        if self.tok.text == text and self.tok.kind in ("op", "ident"):
            self.i += 1
            return True
        return False

    def parse(self) -> Node:
        node = self.expr(0)
        if self.tok.kind != "eof":
            raise self.error("unexpected token")
        return node

    def expr(self, min_prec: int) -> Node:
        lhs = self.unary()
        while True:
            op = self.tok.text
            if self.tok.kind not in ("op", "ident") or op not in _PRECEDENCE:
                return lhs
            prec = _PRECEDENCE[op]
            if prec < min_prec:
                return lhs
            self.i += 1
            return_bool = self.accept("bool")
            matching: tuple[str, ...] | None = None
            on = False
            group = ""
            include: tuple[str, ...] = ()
            if self.tok.text in ("on", "ignoring") and self.tok.kind == "ident":
                on = self.take().text == "on"
                matching = self.label_list()
            if self.tok.text in ("group_left", "group_right") and self.tok.kind == "ident":
                group = self.take().text[6:]
                if self.tok.text == "(":
                    include = self.label_list()
            next_min = prec if op == "^" else prec + 1  # ^ is right-associative
            rhs = self.expr(next_min)
            lhs = Binary(op, lhs, rhs, return_bool, matching, on, group, include)

    def unary(self) -> Node:
        if self.tok.kind == "op" and self.tok.text in ("-", "+"):
            op = self.take().text
            return Unary(op, self.unary())
        return self.postfix(self.primary())

    def postfix(self, node: Node) -> Node:
        while True:
            if self.tok.text == "[" and self.tok.kind == "op":
                self.take("[")
                rng = self.duration()
                subquery = False
                if self.tok.kind == "ident" and self.tok.text.startswith(":"):
                    # ":5m" or ":" read as an identifier (a colon may start a metric name)
                    subquery = True
                    step = self.take().text[1:]
                    if step and not re.fullmatch(r"(?:\d+(?:ms|[smhdwy]))+", step):
                        raise self.error("expected a subquery step")
                    if not step and self.tok.text != "]":
                        self.duration()
                self.take("]")
                node = RangeSelector(node, rng, subquery)
            elif self.tok.text == "offset" and self.tok.kind == "ident":
                self.take()
                self.accept("-")
                self.duration()
            elif self.tok.text == "@" and self.tok.kind == "op":
                self.take()
                if self.tok.text in ("start", "end"):
                    self.take()
                    self.take("(")
                    self.take(")")
                else:
                    self.take(kind="number")
            else:
                return node

    def duration(self) -> str:
        if self.tok.kind in ("duration", "var", "number"):
            return self.take().text
        raise self.error("expected a duration")

    def label_list(self) -> tuple[str, ...]:
        self.take("(")
        labels: list[str] = []
        while self.tok.text != ")":
            labels.append(self.take(kind="ident").text)
            if not self.accept(","):
                break
        self.take(")")
        return tuple(labels)

    def matchers(self) -> tuple[tuple[str, str, str], ...]:
        self.take("{")
        out: list[tuple[str, str, str]] = []
        while self.tok.text != "}":
            label = self.take(kind="ident").text
            op = self.tok.text
            if op not in ("=", "!=", "=~", "!~"):
                raise self.error("expected a label matcher operator")
            self.take()
            value = _unquote(self.take(kind="string").text)
            out.append((label, op, value))
            if not self.accept(","):
                break
        self.take("}")
        return tuple(out)

    def primary(self) -> Node:
        tok = self.tok
        if tok.kind in ("number", "var"):
            self.take()
            return NumberLiteral(tok.text)
        if tok.kind == "string":
            self.take()
            return StringLiteral(_unquote(tok.text))
        if tok.text == "(":
            self.take()
            inner = self.expr(0)
            self.take(")")
            return Paren(inner)
        if tok.text == "{":
            return Selector(None, self.matchers(), tok.pos)
        if tok.kind != "ident":
            raise self.error("unexpected token")
        name = tok.text
        if name.lower() in ("inf", "nan"):
            self.take()
            return NumberLiteral(name)
        if name in AGGREGATIONS and self.toks[self.i + 1].text in ("(", "by", "without"):
            return self.aggregate()
        if self.toks[self.i + 1].text == "(":
            if name not in FUNCTIONS:
                raise self.error(f"unknown function {name!r}")
            self.take()
            self.take("(")
            args: list[Node] = []
            while self.tok.text != ")":
                args.append(self.expr(0))
                if not self.accept(","):
                    break
            self.take(")")
            return Call(name, tuple(args))
        self.take()
        matchers = self.matchers() if self.tok.text == "{" else ()
        return Selector(name, matchers, tok.pos)

    def aggregate(self) -> Node:
        op = self.take().text
        grouping: tuple[str, ...] = ()
        without = False
        has = False
        if self.tok.text in ("by", "without"):
            without = self.take().text == "without"
            grouping = self.label_list()
            has = True
        self.take("(")
        param: Node | None = None
        first = self.expr(0)
        if op in _PARAM_AGGREGATIONS:
            self.take(",")
            param, first = first, self.expr(0)
        self.take(")")
        if not has and self.tok.text in ("by", "without"):
            without = self.take().text == "without"
            grouping = self.label_list()
            has = True
        return Aggregate(op, first, param, grouping, without, has)


def _unquote(text: str) -> str:
    if text[0] == "`":
        return text[1:-1]
    body = text[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


def parse(text: str) -> Node:
    """The syntax tree of PromQL ``text``.

    Raises:
        PromQLSyntaxError: the expression cannot be read (the message says where).
    """
    return _Parser(text).parse()


def selectors(node: Node) -> list[Selector]:
    """Every instant selector in ``node``, in order."""
    out: list[Selector] = []

    def walk(n: Node) -> None:
        if isinstance(n, Selector):
            out.append(n)
        for child in _children(n):
            walk(child)

    walk(node)
    return out


def _children(n: Node) -> Iterable[Node]:
    if isinstance(n, RangeSelector | Unary | Paren):
        yield n.expr
    elif isinstance(n, Call):
        yield from n.args
    elif isinstance(n, Aggregate):
        if n.param is not None:
            yield n.param
        yield n.expr
    elif isinstance(n, Binary):
        yield n.lhs
        yield n.rhs


# ---------------------------------------------------------------- known series
def known_series(config: ObservabilityConfig) -> dict[str, tuple[frozenset[str], str]]:
    """Every series name an expression may use -> (its labels, where it comes from).

    The catalogue's samples under ``config.namespace`` whose feature is on (with
    ``le`` on ``_bucket`` samples and ``quantile`` on summaries), the exporters'
    metrics and Prometheus' own per-target series; all with ``job`` and ``instance``.

    A catalogue label named like a target label (the ``job`` label of the
    ``job_*`` batch-job families) can reach Prometheus either way: as itself
    when Prometheus keeps the scraped labels (the Pushgateway's job, with
    ``honor_labels: true``), or renamed ``exported_job`` when the target's own
    label wins (node-exporter's textfile collector, the service's ``/metrics``).
    Such a family therefore has ``exported_<label>`` too.
    """
    out: dict[str, tuple[frozenset[str], str]] = {}
    target = frozenset(TARGET_LABELS)
    for entry in catalogue.CATALOGUE:
        # another process's families (anomaly-serve) do not depend on the service's settings
        if entry.process == "service" and not catalogue.is_enabled(entry, config):
            continue
        labels = frozenset(entry.all_labels(multiprocess=True)) | target
        labels |= {f"exported_{label}" for label in entry.labels if label in target}
        family = entry.family_name(config.namespace)
        for sample in entry.sample_names(config.namespace):
            extra: frozenset[str] = frozenset()
            if entry.kind == "histogram" and sample == family + "_bucket":
                extra = frozenset({"le"})
            elif entry.kind == "summary" and sample == family:
                extra = frozenset({"quantile"})
            out[sample] = (labels | extra, f"catalogue {entry.name}")
    for exporter in EXPORTERS:
        for name, labels_ in exporter.metrics.items():
            out[name] = (frozenset(labels_) | target, exporter.job)
    for name, labels_ in PROMETHEUS_SERIES.items():
        out[name] = (frozenset(labels_) | target, "prometheus")
    return out


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one expression.

    Attributes:
        where: which rule, panel or file the expression belongs to.
        expr: the expression.
        message: what is wrong.
    """

    where: str
    expr: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}\n    {' '.join(self.expr.split())}"


@dataclass
class _Checker:
    config: ObservabilityConfig
    series: Mapping[str, Labels]
    messages: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        if message not in self.messages:
            self.messages.append(message)

    def labels(self, n: Node) -> Labels:
        """Labels the result of ``n`` may carry (frozenset() for scalars and strings)."""
        if isinstance(n, NumberLiteral | StringLiteral):
            return frozenset()
        if isinstance(n, Selector):
            return self.selector(n)
        if isinstance(n, RangeSelector | Paren | Unary):
            return self.labels(n.expr)
        if isinstance(n, Call):
            return self.call(n)
        if isinstance(n, Aggregate):
            return self.aggregate(n)
        if isinstance(n, Binary):
            return self.binary(n)
        raise TypeError(n)  # pragma: no cover - every node kind is handled above

    def selector(self, n: Selector) -> Labels:
        name = n.name
        if name is None:
            names = [v for label, op, v in n.matchers if label == "__name__" and op == "="]
            if not names:
                return None
            name = names[0]
        if name not in self.series:
            self.fail(self.unknown_metric(name))
            return None
        have = self.series[name]
        for label, _op, _value in n.matchers:
            if label != "__name__" and have is not None and label not in have:
                self.fail(f"{name} has no label {label!r} (it has {_names(have)})")
        return have

    def unknown_metric(self, name: str) -> str:
        entry = catalogue.find_sample(name, self.config.namespace)
        if entry is not None:
            return (f"{name} is off under these settings (catalogue {entry.name}, feature "
                    f"{entry.feature!r})")
        for ns_entry in catalogue.CATALOGUE:
            if name in ns_entry.sample_names(""):
                where = (f"namespace {self.config.namespace!r} names it "
                         f"{ns_entry.exposed_name(self.config.namespace)}")
                return f"{name} is not exposed under {where}"
        import difflib

        near = difflib.get_close_matches(name, list(self.series), n=2)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        return (f"{name} is not a metric of the catalogue, the exporters or the recording "
                f"rules{hint}")

    def need(self, labels: Iterable[str], have: Labels, where: str) -> None:
        if have is None:
            return
        for label in labels:
            if label not in have:
                self.fail(f"label {label!r} in {where}: the series have "
                          f"{_names(have) or 'no labels'}")

    def first_vector(self, args: Sequence[Node]) -> Labels:
        found: Labels = frozenset()
        first = True
        for arg in args:
            labels = self.labels(arg)
            if first and not _is_scalar(arg) and not isinstance(arg, StringLiteral):
                found = labels
                first = False
        return found

    def call(self, n: Call) -> Labels:
        f = n.func
        if f in _SCALAR_FUNCTIONS:
            for arg in n.args:
                self.labels(arg)
            return frozenset()
        if f == "vector":
            for arg in n.args:
                self.labels(arg)
            return frozenset()
        if f == "histogram_quantile":
            if len(n.args) != 2:
                self.fail("histogram_quantile takes (quantile, buckets)")
                return None
            self.labels(n.args[0])
            inner = self.labels(n.args[1])
            if inner is not None and "le" not in inner:
                self.fail("histogram_quantile over series without an 'le' label "
                          "(keep le in by(...), read _bucket samples)")
            return None if inner is None else inner - {"le"}
        if f in ("label_replace", "label_join"):
            inner = self.labels(n.args[0]) if n.args else frozenset()
            strings = [a.value for a in n.args[1:] if isinstance(a, StringLiteral)]
            if not strings:
                return inner
            dst = strings[0]
            sources = strings[2:3] if f == "label_replace" else strings[2:]
            self.need([s for s in sources if s], inner, f"{f}(...) source")
            return None if inner is None else inner | {dst}
        if f in ("absent", "absent_over_time"):
            for arg in n.args:
                self.labels(arg)
            sel = n.args[0] if n.args else None
            while isinstance(sel, RangeSelector | Paren):
                sel = sel.expr
            if isinstance(sel, Selector):
                return frozenset(lab for lab, op, _ in sel.matchers if op == "=" and
                                 lab != "__name__")
            return frozenset()
        return self.first_vector(n.args)

    def aggregate(self, n: Aggregate) -> Labels:
        if n.param is not None:
            self.labels(n.param)
        inner = self.labels(n.expr)
        clause = f"{'without' if n.without else 'by'}(...) of {n.op}"
        self.need(n.grouping, inner, clause)
        if n.op in ("topk", "bottomk"):
            return inner
        base: Labels = frozenset(n.grouping)
        if n.without:
            base = None if inner is None else inner - set(n.grouping)
        if n.op == "count_values" and isinstance(n.param, StringLiteral):
            return None if base is None else base | {n.param.value}
        return base

    def binary(self, n: Binary) -> Labels:
        lhs = self.labels(n.lhs)
        rhs = self.labels(n.rhs)
        lscalar, rscalar = _is_scalar(n.lhs), _is_scalar(n.rhs)
        if lscalar and rscalar:
            return frozenset()
        if lscalar:
            return rhs
        if rscalar:
            return lhs
        if n.matching is not None:
            clause = "on(...)" if n.on else "ignoring(...)"
            if n.on:
                self.need(n.matching, lhs, f"{clause}, left side")
                self.need(n.matching, rhs, f"{clause}, right side")
        if n.include:
            self.need(n.include, rhs if n.group == "left" else lhs, f"group_{n.group}(...)")
        if n.op in _SET_OPS:
            if n.op == "or":
                return None if lhs is None or rhs is None else lhs | rhs
            return lhs
        if n.group == "left":
            return None if lhs is None else lhs | set(n.include)
        if n.group == "right":
            return None if rhs is None else rhs | set(n.include)
        if n.op in _COMPARISONS and not n.return_bool:
            return lhs
        if n.matching is not None and lhs is not None:
            return frozenset(n.matching) & lhs if n.on else lhs - set(n.matching)
        return lhs


def _is_scalar(n: Node) -> bool:
    if isinstance(n, NumberLiteral):
        return True
    if isinstance(n, Call):
        return n.func in _SCALAR_FUNCTIONS
    if isinstance(n, Paren | Unary):
        return _is_scalar(n.expr)
    if isinstance(n, Binary):
        return _is_scalar(n.lhs) and _is_scalar(n.rhs)
    return False


def _names(labels: Iterable[str]) -> str:
    return ", ".join(sorted(labels))


def _checker(config: ObservabilityConfig, extra: Mapping[str, Labels] | None) -> _Checker:
    series: dict[str, Labels] = {k: v[0] for k, v in known_series(config).items()}
    series["ALERTS"] = None
    series["ALERTS_FOR_STATE"] = None
    series.update(extra or {})
    return _Checker(config, series)


def check_expression(
    expr: str,
    *,
    config: ObservabilityConfig,
    extra: Mapping[str, frozenset[str] | None] | None = None,
    where: str = "",
) -> list[Problem]:
    """What is wrong with PromQL ``expr`` (empty: every metric and label exists).

    Args:
        expr: the expression.
        config: the service's settings: its namespace and which features are on.
        extra: more series: name -> labels (``None``: any), e.g. recording rules.
        where: what the expression belongs to, for the messages.
    """
    checker = _checker(config, extra)
    try:
        checker.labels(parse(expr))
    except PromQLSyntaxError as exc:
        return [Problem(where, expr, f"syntax: {exc}")]
    return [Problem(where, expr, m) for m in checker.messages]


def _result_labels(expr: str, config: ObservabilityConfig,
                   extra: Mapping[str, Labels]) -> Labels:
    checker = _checker(config, extra)
    try:
        return checker.labels(parse(expr))
    except PromQLSyntaxError:
        return None


def rule_expressions(files: Mapping[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """The rules of Prometheus rule files (path -> YAML text), in order, with where they are."""
    out: list[tuple[str, dict[str, Any]]] = []
    for path, text in files.items():
        doc = _yaml.load(text) or {}
        for group in doc.get("groups", []):
            for rule in group.get("rules", []):
                name = rule.get("record") or rule.get("alert")
                out.append((f"{path} {group.get('name')} {name}", rule))
    return out


def check_rule_files(
    files: Mapping[str, str],
    *,
    config: ObservabilityConfig,
    extra_expressions: Sequence[tuple[str, str]] = (),
) -> list[Problem]:
    """Check every rule of ``files`` (path -> YAML), then ``extra_expressions`` (where, PromQL).

    Recording rules are checked in order and become known series for what
    follows, with the labels their expression leaves plus their static
    labels; dashboards (``extra_expressions``) may use them too.
    """
    records: dict[str, Labels] = {}
    problems: list[Problem] = []
    rules = rule_expressions(files)
    for where, rule in rules:
        if "record" in rule:
            problems += check_expression(rule["expr"], config=config, extra=records, where=where)
            labels = _result_labels(rule["expr"], config, records)
            static = frozenset((rule.get("labels") or {}).keys())
            previous = records.get(rule["record"], frozenset())
            if labels is None or previous is None:
                records[rule["record"]] = None
            else:
                records[rule["record"]] = labels | static | previous
    for where, rule in rules:
        if "alert" in rule:
            problems += check_expression(rule["expr"], config=config, extra=records, where=where)
    for where, expr in extra_expressions:
        problems += check_expression(expr, config=config, extra=records, where=where)
    return problems
