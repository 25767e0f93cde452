"""Explanation records (`explain.explain`) shown: an HTML heatmap and the terminal.

Inputs are untrusted text (a served request, a file someone sent), so the HTML escapes every
string it shows (`html.escape`), loads nothing from outside (no script, stylesheet or font) and
the terminal prints through rich `Text` objects, never through console markup.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmtune.io import write_text

if TYPE_CHECKING:
    from rich.console import Console

# Sub-word markers of WordPiece, byte-level BPE and SentencePiece, left out of shown tokens.
_MARKERS = re.compile(r"^(##|Ġ|▁|Ċ)+")


def shown_token(token: str) -> str:
    return _MARKERS.sub("", token) or token


def top_tokens(record: dict[str, Any], explanation: dict[str, Any], k: int = 5) -> list[tuple[str, float]]:
    """The k tokens with the largest scores (most for the target), as (token, score)."""
    scored = [
        (shown_token(token), score)
        for token, score in zip(record["tokens"], explanation["token_scores"], strict=True)
        if score != 0.0
    ]
    return sorted(scored, key=lambda pair: pair[1], reverse=True)[:k]


def _scale(scores: Sequence[float]) -> float:
    return max((abs(s) for s in scores), default=0.0) or 1.0


# ---- HTML ---------------------------------------------------------------------------------------
_STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 60em; color: #222; }
.item { border-top: 1px solid #ccc; padding: 0.6em 0; }
.target { color: #555; font-size: 0.9em; margin: 0.4em 0 0.2em; }
.words span { padding: 0.1em 0.15em; border-radius: 0.2em; line-height: 1.9; }
.field { color: #888; font-size: 0.8em; margin-right: 0.4em; }
.legend span { padding: 0.1em 0.4em; }
"""


def _colour(score: float, scale: float) -> str:
    # Green: the token raised the target; red: it lowered it; opacity: share of the largest |score|.
    alpha = min(1.0, abs(score) / scale)
    rgb = "0,150,60" if score >= 0 else "210,40,40"
    return f"background-color: rgba({rgb},{alpha:.3f})"


def _html_words(record: dict[str, Any], explanation: dict[str, Any]) -> str:
    scale = _scale(explanation["word_scores"])
    parts, field = [], None
    for word, score in zip(record["words"], explanation["word_scores"], strict=True):
        if word["field"] != field:
            field = word["field"]
            parts.append(f'<span class="field">{html.escape(field)}:</span>')
        title = html.escape(f"{score:+.4g}", quote=True)
        style = _colour(score, scale)
        parts.append(f'<span style="{style}" title="{title}">{html.escape(word["word"])}</span>')
    return " ".join(parts)


def _html_item(record: dict[str, Any]) -> str:
    lines = ['<div class="item">']
    prediction = ", ".join(
        f"{html.escape(str(k))}: {html.escape(_brief(v))}" for k, v in record["prediction"].items()
    )
    lines.append(f'<div class="target">prediction: {prediction}</div>')
    if record.get("note"):
        lines.append(f'<div class="target">note: {html.escape(record["note"])}</div>')
    if not record["explanations"]:
        lines.append('<div class="target">nothing to explain (no predicted output)</div>')
    for explanation in record["explanations"]:
        value = explanation["value"]
        check = (
            f", baseline {explanation['baseline_value']:.4g}, delta {explanation['delta']:.2g}"
            if explanation.get("delta") is not None
            else ""
        )
        top = ", ".join(f"{html.escape(t)} ({s:+.3g})" for t, s in top_tokens(record, explanation))
        lines.append(
            f'<div class="target">target <b>{html.escape(explanation["target"])}</b> '
            f"({html.escape(explanation['output'])} {value:.4g}{check}); top tokens: {top}</div>"
        )
        lines.append(f'<div class="words">{_html_words(record, explanation)}</div>')
    lines.append("</div>")
    return "\n".join(lines)


def _brief(value: Any, width: int = 200) -> str:
    if isinstance(value, dict):
        text = ", ".join(f"{k}={v}" for k, v in value.items())
    elif isinstance(value, list):
        text = "; ".join(_brief(v, width) for v in value)
    else:
        text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def html_page(records: Sequence[dict[str, Any]], title: str = "lmtune explanations") -> str:
    """A self-contained HTML page: per input and target, its words coloured by their scores."""
    method = html.escape(records[0]["method"]) if records else "-"
    body = "\n".join(_html_item(r) for r in records)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">\n'
        # No resource may load from anywhere: the page shows untrusted text.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'\">\n"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n"
        f'<p class="legend">method: {method}. <span style="{_colour(1, 1)}">raises the target</span> '
        f'<span style="{_colour(-1, 1)}">lowers it</span>; hover a word for its score.</p>\n'
        f"{body}\n</body></html>\n"
    )


def write_html(
    path: str | Path, records: Sequence[dict[str, Any]], title: str = "lmtune explanations"
) -> None:
    write_text(path, html_page(records, title))


# ---- the terminal -------------------------------------------------------------------------------
def print_records(console: Console, records: Sequence[dict[str, Any]], top: int = 5) -> None:
    """Each input's words on a coloured background (green raises the target, red lowers it) and
    its top tokens; untrusted text goes in as plain `Text`, never as markup."""
    from rich.text import Text

    for record in records:
        console.print(Text(f"prediction: {_brief(record['prediction'])}", style="bold"))
        if record.get("note"):
            console.print(Text(f"note: {record['note']}", style="dim"))
        if not record["explanations"]:
            console.print(Text("nothing to explain (no predicted output)", style="dim"))
        for explanation in record["explanations"]:
            scale = _scale(explanation["word_scores"])
            line = Text(f"  {explanation['target']}: ", style="bold")
            for word, score in zip(record["words"], explanation["word_scores"], strict=True):
                alpha = min(1.0, abs(score) / scale)
                fade = int(255 * (1 - alpha))
                colour = f"rgb({fade},255,{fade})" if score >= 0 else f"rgb(255,{fade},{fade})"
                line.append(word["word"], style=f"black on {colour}")
                line.append(" ")
            console.print(line)
            tokens = ", ".join(f"{t} {s:+.3g}" for t, s in top_tokens(record, explanation, top))
            console.print(Text(f"    top tokens: {tokens}", style="dim"))
        console.print()
