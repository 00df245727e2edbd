"""YAML with limits: safe tags only, and a hostile or broken file fails fast with a line and column.

`yaml.safe_load` runs no code, but it is not safe from:
- deep nesting (`[[[[...]]]]`): its composer recurses once per level, so it dies with RecursionError;
- aliases (`&a [*b, *b, ...]`, the "billion laughs" shape): while composing, an alias is one shared
  node, but the constructed object, and anything that walks it (validation, repr, JSON), is
  exponentially larger than the text;
- constructors that raise ValueError or TypeError rather than YAMLError (`!!int abc`,
  `!!float 1e-3x`, a date like `2020-13-45`).

So `load` composes the node graph first (aliases still shared there, so it is no larger than the
text), refusing it as soon as it nests too deep or has too many nodes; measures what the graph
would expand to (memoized per node: linear in the graph, however much it would expand); and only
then constructs Python objects. A SafeLoader subclass rather than a pre-pass over events, because
compose_node is where both the recursion and the node count happen.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_BYTES = 1 << 20  # a spec is a few KB; pure-Python PyYAML reads about 1 MB/s of scalars
MAX_DEPTH = 32  # a spec nests about 6 deep (train.optim.betas is 4)
MAX_NODES = 50_000  # mappings, lists and scalars, after alias expansion (PyYAML: ~40 us each)
MAX_CHARS = 4 * MAX_BYTES  # scalar text after alias expansion: a few repeats of a large block


class YAMLProblem(Exception):
    """A file that cannot be read as a spec's YAML, with where (1-based) when known."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None):
        self.message, self.line, self.column = message, line, column
        where = f"line {line}, column {column}: " if line is not None else ""
        super().__init__(where + message)


def decode(data: bytes) -> str:
    """The text of a spec file's bytes: UTF-8, at most MAX_BYTES."""
    if len(data) > MAX_BYTES:
        raise YAMLProblem(f"the file is over {_size(MAX_BYTES)}; a spec is a few KB (is this the right file?)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise YAMLProblem(
            f"byte 0x{data[err.start]:02x} (offset {err.start}) is not UTF-8; save the file as UTF-8", line, column
        ) from None


def load(text: str) -> Any:
    """The document in `text` (None when empty), within the limits above."""
    if len(text) > MAX_BYTES:
        raise YAMLProblem(f"the text is over {_size(MAX_BYTES)}; a spec is a few KB")
    loader = None
    try:
        loader = _Loader(text)  # the reader checks for unprintable characters here
        node = loader.get_single_node()
        if node is None:
            return None
        _Measure().visit(node, 0)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        what = ", ".join(x for x in (err.context, err.problem) if x) or "malformed"
        raise _at(mark, f"not valid YAML: {what}") from None
    except yaml.reader.ReaderError as err:
        line = text.count("\n", 0, err.position) + 1
        column = err.position - (text.rfind("\n", 0, err.position) + 1) + 1
        raise YAMLProblem(f"character U+{err.character:04X} is not allowed in YAML ({err.reason}); remove it",
                          line, column) from None
    except yaml.YAMLError as err:  # any other PyYAML error: its message is about the text, not values
        raise YAMLProblem(f"not valid YAML: {str(err)[:200]}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _size(n: int) -> str:
    return f"{n / 2**20:g} MiB"


def _at(mark: Any, message: str) -> YAMLProblem:
    if mark is None:
        return YAMLProblem(message)
    return YAMLProblem(message, mark.line + 1, mark.column + 1)


class _Loader(yaml.SafeLoader):
    """SafeLoader that stops composing past MAX_DEPTH levels or MAX_NODES nodes, and reports a
    constructor's own exceptions (ValueError for `!!int abc`) at the node that raised them."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        mark = self.peek_event().start_mark
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _at(mark, f"the file has over {MAX_NODES:,} values; a spec is small (is this the right file?)")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH + 1:  # the root is depth 1; its values sit at level 1 of MAX_DEPTH
                raise _at(mark, f"nested deeper than {MAX_DEPTH} levels; a spec nests a handful")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (yaml.YAMLError, YAMLProblem):
            raise
        except Exception as err:  # noqa: BLE001 - PyYAML's scalar constructors raise plain exceptions
            raise _at(node.start_mark, _unreadable(node, err)) from None


def _unreadable(node: Node, err: Exception) -> str:
    kind = node.tag.rsplit(":", 1)[-1]
    reason = str(err)
    # int() and float() quote the text they could not read, and that text may be anything (a
    # secret, a megabyte): keep a reason only when it is short and does not repeat the value.
    value = node.value if isinstance(node.value, str) else ""
    if not isinstance(err, ValueError) or (value and value in reason) or len(reason) > 200:
        reason = f"not a valid {kind}"
    return f"cannot read this value as !!{kind}: {reason}; quote it if it is meant as a string"


class _Measure:
    """What a composed graph expands to: nodes, scalar characters and depth, each node measured
    once (aliases make the graph a DAG; a cycle is an alias inside its own anchor)."""

    def __init__(self) -> None:
        self.done: dict[int, tuple[int, int, int]] = {}  # id(node) -> (nodes, chars, depth)
        self.open: set[int] = set()

    def visit(self, node: Node, level: int) -> tuple[int, int, int]:
        key = id(node)
        if key in self.open:
            raise _at(node.start_mark, "an alias refers to the mapping or list that contains it; a spec cannot be recursive")
        if key not in self.done:
            if level > MAX_DEPTH:  # stop before Python's recursion limit, whatever aliases do
                raise _at(node.start_mark, f"aliases here nest deeper than {MAX_DEPTH} levels")
            self.open.add(key)
            self.done[key] = self._measure(node, level)
            self.open.discard(key)
        nodes, chars, depth = self.done[key]
        if level + depth > MAX_DEPTH:
            raise _at(node.start_mark, f"aliases here nest deeper than {MAX_DEPTH} levels")
        if nodes > MAX_NODES or chars > MAX_CHARS:
            raise _at(node.start_mark, f"aliases here expand to over {MAX_NODES:,} values or {_size(MAX_CHARS)} of "
                                       "text; repeat less through anchors and aliases")
        return nodes, chars, depth

    def _measure(self, node: Node, level: int) -> tuple[int, int, int]:
        if isinstance(node, ScalarNode):
            _check_text(node)
            return 1, len(node.value), 0
        children: list[Node] = []
        if isinstance(node, SequenceNode):
            children = node.value
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        nodes, chars, depth = 1, 0, 0
        for child in children:
            n, c, d = self.visit(child, level + 1)
            nodes, chars, depth = nodes + n, chars + c, max(depth, d + 1)
        return nodes, chars, depth


def _check_text(node: ScalarNode) -> None:
    """A `"\\ud800"` escape gives a lone surrogate: a str that cannot be printed or encoded."""
    try:
        node.value.encode("utf-8")
    except UnicodeEncodeError as err:
        code = ord(node.value[err.start])
        raise _at(node.start_mark, f"the escape \\u{code:04x} is a lone surrogate, not a character; write the "
                                   "character itself (or \\U escape it)") from None
