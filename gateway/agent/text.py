"""Model output to SMS and WhatsApp: markdown becomes plain text (or WhatsApp's formatting), long
replies become parts."""

from __future__ import annotations

import re

from markdown_it import MarkdownIt
from markdown_it.tree import SyntaxTreeNode

# Twilio refuses a body longer than 1,600 characters (error 21617).
SMS_MAX_CHARS = 1600

# Whitespace spelled out for regex patterns. pydantic's (Rust) \s, ECMA-262's (the OpenAPI
# document) and Python's disagree at the edges (\x1c-\x1f, \x85, \ufeff), so a pattern that must
# mean the same to the server and to the document lists its characters. SPACE is Unicode's
# White_Space (Rust's \s); STRIPPED is what str.strip() removes.
SPACE = r"\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
STRIPPED = r"\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"

_md = MarkdownIt("commonmark").enable(["table", "strikethrough"])
_TAG = re.compile(r"<[^>]+>")
_EXTRA_BLANK_LINES = re.compile(r"\n{3,}")


def to_plain_text(markdown: str) -> str:
    """Markdown as a phone shows it: no emphasis marks, headers or fences; lists as lines."""
    return _render(markdown, whatsapp=False)


def to_whatsapp_text(markdown: str) -> str:
    """Markdown in WhatsApp's own formatting: *bold*, _italic_, ~strike~, ```monospace```, lists."""
    return _render(markdown, whatsapp=True)


# WhatsApp's marks for markdown's inline styles (the plain-text rendering drops them).
_WHATSAPP_MARKS = {"strong": "*", "em": "_", "s": "~", "code_inline": "`"}


def _render(markdown: str, *, whatsapp: bool) -> str:
    """Markdown as plain text, or with WhatsApp's marks when `whatsapp`."""
    if not markdown or not markdown.strip():
        return ""
    root = SyntaxTreeNode(_md.parse(markdown))
    text = "\n\n".join(_blocks(root.children, whatsapp))
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return _EXTRA_BLANK_LINES.sub("\n\n", text).strip()


def _blocks(nodes: list[SyntaxTreeNode], whatsapp: bool = False) -> list[str]:
    """Each block node as text, empty ones dropped."""
    out = []
    for node in nodes:
        text = _block(node, whatsapp)
        if text.strip():
            out.append(text)
    return out


def _block(node: SyntaxTreeNode, whatsapp: bool = False) -> str:
    """One block: paragraph, heading, list, code, quote, table."""
    kind = node.type
    if kind == "heading" and whatsapp:
        return _marked("*", _inline(node.children, whatsapp))
    if kind in ("paragraph", "heading"):
        return _inline(node.children, whatsapp)
    if kind in ("fence", "code_block"):
        code = node.content.rstrip("\n")
        return f"```\n{code}\n```" if whatsapp and code.strip() else code
    if kind in ("bullet_list", "ordered_list"):
        return _list(node, whatsapp)
    if kind == "blockquote":
        inner = "\n\n".join(_blocks(node.children, whatsapp))
        return "\n".join("> " + line for line in inner.split("\n")) if whatsapp else inner
    if kind == "table":
        return _table(node, whatsapp)
    if kind == "html_block":
        return _TAG.sub("", node.content).strip()
    if kind == "hr":
        return ""
    return "\n\n".join(_blocks(node.children, whatsapp)) if node.children else node.content


def _list(node: SyntaxTreeNode, whatsapp: bool = False) -> str:
    """List items one per line, "- " or "1. ", nested items indented."""
    ordered = node.type == "ordered_list"
    number = int(node.attrs.get("start", 1) or 1) if ordered else 0
    lines: list[str] = []
    for item in node.children:
        marker = f"{number}. " if ordered else "- "
        number += 1
        body = "\n".join(_blocks(item.children, whatsapp)).split("\n")
        lines.append(marker + body[0])
        lines.extend(("  " + line) if line else line for line in body[1:])
    return "\n".join(lines)


def _table(node: SyntaxTreeNode, whatsapp: bool = False) -> str:
    """Table rows as lines of cells joined by " | "."""
    rows = []
    for section in node.children:
        for row in section.children:
            rows.append(" | ".join(_inline(cell.children, whatsapp) for cell in row.children))
    return "\n".join(rows)


def _marked(mark: str, text: str) -> str:
    """`text` between WhatsApp marks, which must touch the words (spaces go outside them)."""
    stripped = text.strip()
    if not stripped:
        return text
    start = text[: len(text) - len(text.lstrip())]
    end = text[len(text.rstrip()) :]
    return f"{start}{mark}{stripped}{mark}{end}"


def _inline(nodes: list[SyntaxTreeNode], whatsapp: bool = False) -> str:
    """Inline content without markup (or in WhatsApp's marks); links as "text (url)"."""
    parts: list[str] = []
    for node in nodes:
        kind = node.type
        if kind == "inline":
            parts.append(_inline(node.children, whatsapp))
        elif kind == "code_inline" and whatsapp:
            parts.append(_marked("`", node.content))
        elif kind in ("text", "code_inline"):
            parts.append(node.content)
        elif kind in ("softbreak", "hardbreak"):
            parts.append("\n")
        elif kind == "link":
            label = _inline(node.children, whatsapp)
            href = str(node.attrs.get("href", ""))
            parts.append(_link(label, href))
        elif kind == "image":
            alt = _inline(node.children) or node.content
            parts.append(_link(alt, str(node.attrs.get("src", ""))))
        elif kind == "html_inline":
            continue
        elif whatsapp and kind in _WHATSAPP_MARKS:
            parts.append(_marked(_WHATSAPP_MARKS[kind], _inline(node.children, whatsapp)))
        elif node.children:  # strong, em, s: keep the words, drop the marks
            parts.append(_inline(node.children, whatsapp))
        else:
            parts.append(node.content)
    return "".join(parts)


def _link(label: str, url: str) -> str:
    """ "label (url)", or just one of them when they say the same thing."""
    bare = url.removeprefix("mailto:").removeprefix("tel:")
    if not url or label in (url, bare):
        return label or url
    if not label:
        return url
    return f"{label} ({url})"


def sms_length(text: str) -> int:
    """Length as Twilio counts it (UTF-16 code units: an emoji outside the BMP counts twice)."""
    return len(text.encode("utf-16-le")) // 2


def split_sms(text: str, limit: int = SMS_MAX_CHARS, max_parts: int | None = None) -> list[str]:
    """Split `text` into parts of at most `limit` characters, at paragraph, line or word breaks.

    Words longer than the limit are cut; no part is empty; parts keep the text's order. With
    `max_parts`, a longer text ends in the last allowed part, cut and marked with an ellipsis.
    Linear in the text's length: each step looks only at the next `limit` + 1 characters.
    """
    if limit < 2:
        raise ValueError("limit must be at least 2")
    if max_parts is not None and max_parts < 1:
        raise ValueError("max_parts must be at least 1")
    parts: list[str] = []
    text = text.strip()
    start, size = 0, len(text)
    while start < size:
        if max_parts is not None and len(parts) == max_parts:
            parts[-1] = _with_ellipsis(parts[-1], limit)
            break
        # The window: the longest run from `start` that fits, plus one more character, since a
        # break right after the limit counts too.
        end = _fit(text, start, limit)  # text[start:end] fits
        if end >= size:
            parts.append(text[start:])
            break
        window = text[start : end + 1]
        cut = _break_at(window, end - start)
        part = window[:cut].rstrip()
        if not part:  # only whitespace before the break: cut the word instead
            cut, part = end - start, window[: end - start]
        parts.append(part)
        start += cut
        while start < size and text[start].isspace():
            start += 1
    return parts


def _with_ellipsis(part: str, limit: int) -> str:
    """The last allowed part of a reply that had more to say, ending in "…"."""
    while sms_length(part) + 1 > limit:
        part = part[:-1]
    return part.rstrip() + "…"


def _fit(text: str, start: int, limit: int) -> int:
    """The end of the longest run of `text` from `start` that fits in `limit` UTF-16 units."""
    used = 0
    for index in range(start, min(len(text), start + limit + 1)):
        used += 2 if ord(text[index]) > 0xFFFF else 1
        if used > limit:
            return max(index, start + 1)
    return min(len(text), start + limit)


def _break_at(window: str, end: int) -> int:
    """Where to cut: the last paragraph break, else line break, else space, in the window.

    A paragraph or line break is preferred only when it keeps the part at least half full, so
    a reply is not split into many small parts; with no space at all, cut at `end`.
    """
    half = end // 2
    for sep in ("\n\n", "\n"):
        pos = window.rfind(sep)
        if pos >= half and pos > 0:
            return pos
    last_space = max(window.rfind(" "), window.rfind("\n"), window.rfind("\t"))
    if last_space > 0:
        return last_space
    return end
