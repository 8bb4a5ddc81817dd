"""OSC address patterns, matched in linear time against the server's own addresses.

python-osc turns a pattern into a regular expression that backtracks: `/endless/` + 32 `*` + `/x`
(52 bytes) held its thread, and the GIL the audio callback needs, for 24 s. Here a pattern is at
most `MAX_PATTERN` characters and each of its parts (between slashes) is matched against each
distinct part of the known addresses by dynamic programming: O(pattern part x address part), no
backtracking, and a part is matched once however many addresses share it.

OSC 1.0 syntax, within one part: `?` one character, `*` any run, `[abc]`, `[a-z]`, `[!abc]` one of
(or none of) a set, `{foo,bar}` one of the words.
"""

from __future__ import annotations

from collections.abc import Iterable

from instrument.errors import ParamError

MAX_PATTERN = 256  # characters: longer patterns are refused
PATTERN_CHARS = frozenset("*?[{")

# One token of a pattern part: ("c", text) literal, ("?", ""), ("*", ""), ("[", set, negated), ("{", words)
Token = tuple[str, object]


def is_pattern(address: str) -> bool:
    return any(c in PATTERN_CHARS for c in address)


class Matcher:
    """The addresses a pattern reaches, among `addresses`."""

    def __init__(self, addresses: Iterable[str]) -> None:
        self._addresses = [(a, a.split("/")) for a in addresses]

    def match(self, pattern: str) -> list[str]:
        """The addresses `pattern` matches, in the order given; ParamError naming the pattern if it is
        too long or malformed."""
        if len(pattern) > MAX_PATTERN:
            raise ParamError(f"{pattern[:40]}...: an address pattern of {len(pattern)} characters: at most "
                             f"{MAX_PATTERN} allowed (name fewer addresses, or send several messages)")
        parts = [_tokens(p, pattern) for p in pattern.split("/")]
        memo: dict[tuple[int, str], bool] = {}
        out = []
        for address, names in self._addresses:
            if len(names) != len(parts):
                continue
            for i, (tokens, name) in enumerate(zip(parts, names, strict=True)):
                ok = memo.get((i, name))
                if ok is None:
                    ok = memo[(i, name)] = _matches(tokens, name)
                if not ok:
                    break
            else:
                out.append(address)
        return out


def _tokens(part: str, pattern: str) -> list[Token]:
    out: list[Token] = []
    i = 0
    while i < len(part):
        c = part[i]
        if c == "*":
            if not out or out[-1][0] != "*":  # ** is *
                out.append(("*", ""))
            i += 1
        elif c == "?":
            out.append(("?", ""))
            i += 1
        elif c == "[":
            end = part.find("]", i + 2)
            if end < 0:
                raise ParamError(f"{pattern}: '[' without its ']' (a set is [abc], [a-z] or [!abc])")
            body = part[i + 1:end]
            negated = body.startswith("!")
            out.append(("[", (_set(body[1:] if negated else body), negated)))
            i = end + 1
        elif c == "{":
            end = part.find("}", i)
            if end < 0:
                raise ParamError(f"{pattern}: '{{' without its '}}' (alternatives are {{foo,bar}})")
            out.append(("{", tuple(part[i + 1:end].split(","))))
            i = end + 1
        else:
            out.append(("c", c))
            i += 1
    return out


def _set(body: str) -> frozenset[str]:
    chars: set[str] = set()
    i = 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            chars.update(chr(x) for x in range(ord(body[i]), ord(body[i + 2]) + 1))
            i += 3
        else:
            chars.add(body[i])
            i += 1
    return frozenset(chars)


def _matches(tokens: list[Token], name: str) -> bool:
    """Whether `tokens` match all of `name`: reach[j] says the tokens so far can end at name[:j]."""
    n = len(name)
    reach = [True] + [False] * n
    for kind, arg in tokens:
        nxt = [False] * (n + 1)
        for j in range(n + 1):
            if kind == "*":
                nxt[j] = reach[j] or (j > 0 and nxt[j - 1])
            elif not reach[j]:
                continue
            elif kind == "{":
                for word in arg:  # type: ignore[attr-defined]
                    if name.startswith(word, j):
                        nxt[j + len(word)] = True
            elif j < n and (kind == "?" or (kind == "c" and name[j] == arg)
                            or (kind == "[" and (name[j] in arg[0]) != arg[1])):  # type: ignore[index]
                nxt[j + 1] = True
        reach = nxt
        if not any(reach):
            return False
    return reach[n]
