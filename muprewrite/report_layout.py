"""Laying text out in a terminal's width: tables whose cells are never broken (one line per row
where it fits, else each row's name on a line of its own and its cells aligned below it, on as
many lines as the width needs), names broken only at their dots and only when longer than the
width, lists of unbreakable items, and code lines wrapped at spaces.
"""

from __future__ import annotations

import textwrap

from rich.text import Text

GAP, INDENT = "  ", "  "
ROLE_STYLES = {"hidden": "cyan", "input": "green", "output": "magenta", "vector": "blue",
               "scalar": "dim", "unclassified": "red"}


def table(columns: list, rows: list, width: int, name_title: str) -> list:
    widths = _column_widths(columns, rows)
    names = max([len(name_title)] + [len(r.heading) for r in rows])
    if fits_one_line(columns, rows, width, name_title):
        return _one_line_table(columns, rows, widths, names, name_title)
    return _stacked_table(columns, rows, widths, width)


def fits_one_line(columns: list, rows: list, width: int, name_title: str) -> bool:
    names = max([len(name_title)] + [len(r.heading) for r in rows])
    return names + len(GAP) + _span(columns, _column_widths(columns, rows), range(len(columns))) <= width


def cells_fit_one_line(columns: list, rows: list, width: int, name_title: str) -> bool:
    """One line for a row's cells: beside its name, or below it."""
    bands = _bands(columns, _column_widths(columns, rows), width - len(INDENT))
    return fits_one_line(columns, rows, width, name_title) or len(bands) == 1


def _gap(columns: list, i: int, first: int) -> str:
    """Between the columns of one group (LR× adam sgd ...) one space, else two; none before a line's first."""
    if i == first:
        return ""
    return " " if columns[i].group and columns[i].group == columns[i - 1].group else GAP


def _span(columns: list, widths: list, band) -> int:
    band = list(band)
    return sum(widths[i] + len(_gap(columns, i, band[0])) for i in band)


def _header(columns: list, i: int) -> str:
    """A group's name heads its first column only ("LR× adam", "sgd", ...)."""
    return columns[i].title if i == 0 or columns[i].group != columns[i - 1].group else columns[i].label


def _headers(columns: list, band) -> list:
    return [_header(columns, i) for i in band]


def _column_widths(columns: list, rows: list) -> list:
    return [max([len(_header(columns, i))] + [len(r.cells.get(c.key, "")) for r in rows])
            for i, c in enumerate(columns)]


def _cells(columns: list, widths: list, band, texts: list, styles: list) -> Text:
    line, band = Text(), list(band)
    for i, text, style in zip(band, texts, styles):
        line.append(_gap(columns, i, band[0]))
        line.append(text.rjust(widths[i]) if columns[i].numeric else text.ljust(widths[i]), style=style)
    return line


def _row_texts(columns: list, row, band) -> tuple:
    texts = [row.cells.get(columns[i].key, "") for i in band]
    return texts, [ROLE_STYLES.get(row.role, "") if columns[i].key == "role" else "" for i in band]


def _one_line_table(columns, rows, widths, names, name_title) -> list:
    band = range(len(columns))
    header = Text(name_title.ljust(names) + GAP, style="bold")
    header.append_text(_cells(columns, widths, band, _headers(columns, band), ["bold"] * len(columns)))
    lines = [header]
    for row in rows:
        line = Text(row.heading.ljust(names) + GAP)
        line.append_text(_cells(columns, widths, band, *_row_texts(columns, row, band)))
        lines.append(_dimmed(line, row))
    return [_rstripped(line) for line in lines]


def _stacked_table(columns, rows, widths, width) -> list:
    bands = _bands(columns, widths, width - len(INDENT))
    lines = []
    for band in bands:
        header = Text(INDENT)
        header.append_text(_cells(columns, widths, band, _headers(columns, band), ["bold"] * len(band)))
        lines.append(header)
    for row in rows:
        lines += [_dimmed(Text(text, style="bold"), row) for text in heading_lines(row.heading, width)]
        for band in bands:
            line = Text(INDENT)
            line.append_text(_cells(columns, widths, band, *_row_texts(columns, row, band)))
            lines.append(_dimmed(line, row))
    return [_rstripped(line) for line in lines]


def _bands(columns: list, widths: list, room: int) -> list:
    """The columns packed into lines of at most `room` characters, a group kept on one line where
    it fits one; a line holds one column at least."""
    bands = [[]]
    for unit in _units(columns, widths, room):
        if bands[-1] and _span(columns, widths, bands[-1] + unit) > room:
            bands.append([])
        for i in unit:
            if bands[-1] and _span(columns, widths, bands[-1] + [i]) > room:
                bands.append([])
            bands[-1].append(i)
    return bands


def _units(columns: list, widths: list, room: int) -> list:
    """Consecutive columns of one group as one unit (when it fits a line), others alone."""
    units = []
    for i, column in enumerate(columns):
        if units and column.group and column.group == columns[units[-1][-1]].group:
            units[-1].append(i)
        else:
            units.append([i])
    return [u for unit in units for u in ([unit] if _span(columns, widths, unit) <= room else [[i] for i in unit])]


def heading_lines(heading: str, width: int) -> list:
    """A row's name and note: the name whole on the first line (broken after dots only when it is
    longer than the width), the note after it or on the next lines."""
    name, _, note = heading.partition(" ")
    lines = _name_lines(name, width)
    if note and len(lines[-1]) + 1 + len(note) <= width:
        lines[-1] += " " + note
    elif note:
        lines += textwrap.wrap(note, width, initial_indent="    ", subsequent_indent="    ", break_on_hyphens=False)
    return lines


def _name_lines(name: str, width: int) -> list:
    lines = [""]
    for part in (p + "." for p in name.split(".")):
        if lines[-1] and len(lines[-1]) + len(part) > width:
            lines.append("")
        lines[-1] += part
    lines[-1] = lines[-1][:-1]
    return lines


def _dimmed(line: Text, row) -> Text:
    if not row.changed:
        line.stylize("dim")
    return line


def _rstripped(line: Text) -> Text:
    line.rstrip()
    return line


def flow(chunks: list, width: int, first: str, indent: str) -> list:
    """Unbreakable chunks joined by ', ' into lines of at most `width` (a chunk too long stays whole)."""
    pieces = [chunk + ("," if i < len(chunks) - 1 else "") for i, chunk in enumerate(chunks)]
    lines, line, empty = [], first, True
    for piece in pieces:
        if not empty and len(line) + 1 + len(piece) > width:
            lines.append(line)
            line, empty = indent, True
        line += piece if empty else " " + piece
        empty = False
    return lines + [line]


def code_lines(line: str, width: int) -> list:
    """A code line wrapped at spaces, its diff marker and indentation repeated on continuations."""
    if len(line) <= width:
        return [line]
    marker = line[:1] if line[:1] in "+- " else ""
    body = line[len(marker):]
    indent = body[:len(body) - len(body.lstrip())][: max(0, width // 3)]
    room = max(20, width - len(marker) - len(indent))
    pieces = textwrap.wrap(body.strip(), room, subsequent_indent="    ", break_on_hyphens=False)
    return [marker + indent + piece for piece in pieces]


def python_lines(line: str, width: int) -> list:
    """A Python line wrapped at spaces with backslash continuations, a string literal still too
    long split into adjacent literals: pasted, it runs as written."""
    indent, room = line[:len(line) - len(line.lstrip())], width - 2  # 2: room for " \\"
    pieces = textwrap.wrap(line.strip(), room - len(indent), initial_indent=indent, subsequent_indent=indent + "    ",
                           break_long_words=False, break_on_hyphens=False) or [""]
    pieces = [part for piece in pieces for part in _split_literal(piece, room, indent + "    ")]
    return [piece + " \\" for piece in pieces[:-1]] + pieces[-1:]


def _split_literal(piece: str, room: int, indent: str) -> list:
    parts = []
    while len(piece) > room:
        start = next((i for i, c in enumerate(piece) if c in "'\""), None)
        if start is None or start + 2 >= room or piece.find(piece[start], start + 1) < room:
            break  # no literal that crosses the edge
        quote, cut = piece[start], room - 1
        parts.append(piece[:cut] + quote)
        piece = indent + quote + piece[cut:]
    return parts + [piece]
