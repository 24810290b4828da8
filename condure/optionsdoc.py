"""docs/options.md, rendered from the options table (:data:`condure.options.OPTIONS`).

    python -m condure.optionsdoc --markdown --output docs/options.md

A build tool on top of ``options.py``, as ``manpage.py`` is for the man page;
tests/unit/test_cli.py checks that docs/options.md is what this renders.
"""

from __future__ import annotations

import argparse
import sys

from condure.options import LISTEN_PARAMS, OPTIONS


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown() -> str:
    """The options reference as Markdown (the content of docs/options.md)."""
    out = [
        "# condure command-line options",
        "",
        "Generated from `condure/options.py` by "
        "`python -m condure.optionsdoc --markdown`; do not edit by hand.",
        "",
        "Options that can be repeated replace their default once given.",
        "",
        "| option | value | default | repeatable | summary |",
        "|---|---|---|---|---|",
    ]
    for opt in OPTIONS:
        flags = f"`{opt.short}`, `{opt.flag}`" if opt.short else f"`{opt.flag}`"
        value = f"`{opt.metavar}`" if opt.metavar else ""
        default = f"`{opt.default_text()}`" if opt.default_text() else ""
        out.append(
            f"| {flags} | {_md_cell(value)} | {default} | "
            f"{'yes' if opt.repeatable else ''} | {_md_cell(opt.help)} |"
        )
    out += ["", "## Details", ""]
    for opt in OPTIONS:
        head = f"{opt.flag} {opt.metavar}" if opt.metavar else opt.flag
        if opt.short:
            head = f"{opt.short}, {head}"
        out += [f"### `{head}`", "", opt.doc, ""]
    out += [
        "## Listen parameters",
        "",
        "| parameter | meaning |",
        "|---|---|",
    ]
    for p in LISTEN_PARAMS:
        key = f"{p.key}={p.value}" if p.value else p.key
        out.append(f"| `{key}` | {_md_cell(p.help)} |")
    out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m condure.optionsdoc", description="Render the options table."
    )
    parser.add_argument("--markdown", action="store_true", required=True,
                        help="print docs/options.md")
    parser.add_argument("--output", metavar="FILE", help="write to FILE instead of stdout")
    args = parser.parse_args(argv)
    text = render_markdown()
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
