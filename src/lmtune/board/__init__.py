"""lmtune board: a local web app to browse, compare, launch and try runs (`lmtune board`).

The server (`app.py`) is FastAPI, as `lmtune serve` is; the page is static HTML and plain
JavaScript in `static/`, with plotly.js taken from the installed plotly wheel, so nothing is
fetched from the internet. The JSON API between them is documented in docs/board.md.
"""
