"""The README and docs/*.md stay true: links resolve, `crs` commands and options exist, `make` targets exist.

Every check is a function from a file to a list of problems (``README.md:42: …``), so a failure names
the stale line; the last test runs the checks on a deliberately broken copy to show that they fail.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest
import typer

from backend.cli import app

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
HTML_SRC = re.compile(r"<(?:img|a)\b[^>]*\b(?:src|href)=\"([^\"]+)\"", re.IGNORECASE)
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
CRS = re.compile(r"(?:^|(?<=[\s;&|(/]))crs((?:\s+\S+)*)")
MAKE = re.compile(r"(?:^|(?<=[\s;&|(]))make\s+([A-Za-z0-9_.-]+)")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, …


# ---- reading markdown ----------------------------------------------------------------------------


def prose_lines(text: str, blank_code: bool = True) -> list[tuple[int, str]]:
    """(line number, text) of lines outside fenced code blocks, inline code blanked out."""
    out, fenced = [], False
    for n, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            if blank_code:
                line = INLINE_CODE.sub(lambda m: " " * len(m.group(0)), line)
            out.append((n, line))
    return out


def code_snippets(text: str) -> list[tuple[int, str]]:
    """(line number, code) for every inline code span and every line of a fenced block.

    Fenced lines ending in a backslash are joined with the next; `# comments` are dropped.
    """
    out, fenced, pending = [], False, None
    for n, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            code = re.sub(r"(^|\s)#.*$", "", line)
            if pending is not None:
                start, code = pending[0], pending[1] + " " + code.strip()
            else:
                start = n
            if code.rstrip().endswith("\\"):
                pending = (start, code.rstrip()[:-1])
            else:
                pending = None
                out.append((start, code))
        else:
            out.extend((n, m.group(2).strip()) for m in INLINE_CODE.finditer(line))
    return out


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").strip().lower()
    kept = "".join(
        ch for ch in text if ch in "-_ " or unicodedata.category(ch)[0] in ("L", "N", "M")
    )
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8"), blank_code=False):
        m = HEADING.match(line)
        if not m:
            continue
        slug = github_slug(m.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


# ---- the checks ----------------------------------------------------------------------------------


def link_problems(path: Path) -> list[str]:
    """Every relative link and image in PATH points at a file that exists (and at a heading in it)."""
    problems = []
    targets: list[tuple[int, str]] = []
    for n, line in prose_lines(path.read_text(encoding="utf-8")):
        targets += [(n, m.group(1)) for m in LINK.finditer(line)]
        targets += [(n, m.group(1)) for m in HTML_SRC.finditer(line)]
        if m := REF_DEF.match(line):
            targets.append((n, m.group(1)))
    for n, target in targets:
        if EXTERNAL.match(target) or target.startswith("//"):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{rel(path)}:{n}"
        if not dest.exists():
            problems.append(f"{where}: link `{target}` points at {rel(dest)}, which does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(
                f"{where}: link `{target}`: {rel(dest)} has no heading with anchor #{anchor} "
                f"(headings: {', '.join(sorted(anchors(dest)))})"
            )
    return problems


def _commands() -> dict[tuple[str, ...], object]:
    """Every node of the `crs` command tree, by its words: () is `crs` itself."""
    nodes: dict[tuple[str, ...], object] = {}

    def walk(cmd, words):
        nodes[words] = cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, (*words, name))

    walk(typer.main.get_command(app), ())
    return nodes


COMMANDS = _commands()
LEAVES = sorted(w for w, c in COMMANDS.items() if w and not hasattr(c, "commands"))


def _options(cmd) -> set[str]:
    opts = {"--help"}
    for p in cmd.params:
        if p.param_type_name == "option":
            opts.update(p.opts + p.secondary_opts)
    return opts


def crs_mentions(path: Path) -> list[tuple[int, list[str]]]:
    """(line, tokens after `crs`) for every `crs …` in PATH's inline code and code blocks."""
    out = []
    for n, code in code_snippets(path.read_text(encoding="utf-8")):
        code = code.replace("\\|", "|")
        for m in CRS.finditer(code):
            tokens = [t.strip("[](){}|,;.") for t in m.group(1).split()]
            out.append((n, [t for t in tokens if t]))
    return out


def command_problems(path: Path) -> list[str]:
    """Every `crs WORDS --options` in PATH is a command of the app, and each option is one of its."""
    problems = []
    for n, tokens in crs_mentions(path):
        words: tuple[str, ...] = ()
        node = COMMANDS[()]
        rest = list(tokens)
        while hasattr(node, "commands") and rest and not rest[0].startswith("-"):
            if (*words, rest[0]) not in COMMANDS:
                break
            words = (*words, rest.pop(0))
            node = COMMANDS[words]
        shown = "crs " + " ".join(tokens)
        if hasattr(node, "commands") and rest and not rest[0].startswith("-"):
            choices = ", ".join(sorted(node.commands))
            problems.append(
                f"{rel(path)}:{n}: `{shown}`: `crs {' '.join((*words, rest[0]))}` is not a command "
                f"(`{' '.join(('crs', *words))}` has: {choices})"
            )
            continue
        known = _options(node)
        for token in rest:
            if token.startswith("--"):
                option = token.split("=", 1)[0]
                if option not in known:
                    problems.append(
                        f"{rel(path)}:{n}: `{shown}`: `crs {' '.join(words)}` has no option "
                        f"{option} (it has: {', '.join(sorted(known))})"
                    )
    return problems


def makefile_targets(makefile: Path) -> set[str]:
    targets = set()
    for line in makefile.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([A-Za-z0-9_.\- ]+?)\s*::?(?!=)", line)
        if m and not line.startswith("\t"):
            targets.update(m.group(1).split())
    return targets


def make_problems(path: Path, makefile: Path = REPO / "Makefile") -> list[str]:
    """Every `make TARGET` in PATH's code is a target of the Makefile."""
    targets = makefile_targets(makefile)
    return [
        f"{rel(path)}:{n}: `make {target}` is not a target of {rel(makefile)} "
        f"(it has: {', '.join(sorted(targets - {'.PHONY'}))})"
        for n, code in code_snippets(path.read_text(encoding="utf-8"))
        for target in MAKE.findall(code)
        if target not in targets
    ]


def cli_table_problems(path: Path) -> list[str]:
    """Every `crs` command has a row in PATH's CLI table (a row whose first cell is `crs WORDS …`)."""
    rows = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.lstrip().startswith("|"):
            continue
        first_cell = line.strip().strip("|").split(" | ")[0]
        for m in INLINE_CODE.finditer(first_cell):
            for cm in CRS.finditer(m.group(2)):
                rows.add(" ".join(cm.group(1).split()))
    return [
        f"{rel(path)}: `crs {' '.join(words)}` has no row in the CLI table; add "
        f"`| \\`crs {' '.join(words)} …\\` | what it does |`"
        for words in LEAVES
        if not any(row == " ".join(words) or row.startswith(" ".join(words) + " ") for row in rows)
    ]


# ---- the tests -----------------------------------------------------------------------------------


def _fail_with(problems: list[str]) -> None:
    assert not problems, "stale documentation:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: rel(p))
def test_every_relative_link_and_image_resolves(path):
    _fail_with(link_problems(path))


def test_every_crs_command_and_option_in_the_readme_exists():
    assert crs_mentions(README), "the README shows no `crs` command at all"
    _fail_with(command_problems(README))


def test_every_crs_command_and_option_in_the_cli_reference_exists():
    _fail_with(command_problems(REPO / "docs" / "cli.md"))


def test_every_make_target_in_the_readme_exists():
    mentioned = [t for _, code in code_snippets(README.read_text()) for t in MAKE.findall(code)]
    assert {"demo", "test"} <= set(mentioned), "the README must show `make demo` and `make test`"
    _fail_with(make_problems(README))


def test_every_crs_command_has_a_row_in_the_readme_cli_table():
    assert LEAVES, "no commands found in backend.cli.app"
    _fail_with(cli_table_problems(README))


def test_readme_surfaces_have_a_picture_each():
    text = README.read_text()
    for surface in ("Chat", "Arena", "Leaderboard", "Annotation"):
        assert re.search(rf"!\[{surface}\b[^\]]*\]\(docs/screenshots/\S+\.png\)", text), (
            f"README.md: no screenshot for the {surface} surface (an image whose alt text starts "
            f"with '{surface}' and whose path is under docs/screenshots/)"
        )


def test_the_checks_catch_a_stale_readme(tmp_path):
    """The checks above can fail: a README with one mistake of each kind gets one problem each."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# A page\n\n## Real heading\n")
    (tmp_path / "Makefile").write_text(".PHONY: demo\ndemo: setup\n\techo hi\n")
    broken = tmp_path / "README.md"
    broken.write_text(
        "# Broken\n"
        "[gone](docs/missing.md) and [anchor](docs/page.md#no-such-heading) and "
        "[ok](docs/page.md#real-heading) and [web](https://example.com/x)\n"
        "![Chat](docs/screenshots/none.png)\n"
        "\n"
        "```bash\n"
        "make demo\n"
        "make deploy\n"
        "crs train sasrec --dataset movielens-100k \\\n"
        "    --no-such-option 3\n"
        "```\n"
        "\n"
        "| command | what |\n"
        "|---|---|\n"
        "| `crs frobnicate --x` | not a command |\n"
        "| `crs tasks create --campaign C` | fine |\n"
    )
    links = link_problems(broken)
    assert len(links) == 3, links
    assert any("docs/missing.md" in p and "README.md:2" in p for p in links)
    assert any("#no-such-heading" in p for p in links)
    assert any("none.png" in p and "README.md:3" in p for p in links)

    commands = command_problems(broken)
    assert len(commands) == 2, commands
    assert any("README.md:8" in p and "--no-such-option" in p for p in commands)
    assert any("README.md:14" in p and "crs frobnicate" in p for p in commands)

    makes = make_problems(broken, tmp_path / "Makefile")
    assert makes == [
        f"{broken}:7: `make deploy` is not a target of {tmp_path / 'Makefile'} (it has: demo)"
    ]

    table = cli_table_problems(broken)
    assert any("`crs models`" in p for p in table)
    assert not any("`crs tasks create`" in p for p in table)


def test_github_slugs():
    assert github_slug("What `make demo` does") == "what-make-demo-does"
    assert github_slug("LLM recommenders (LLM-REDIAL Table 5 protocol)") == (
        "llm-recommenders-llm-redial-table-5-protocol"
    )
    assert github_slug("Generated dialogues (`llm-redial`, `crs data generate`)") == (
        "generated-dialogues-llm-redial-crs-data-generate"
    )
