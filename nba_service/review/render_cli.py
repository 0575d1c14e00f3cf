"""`nba rulesets render FILE --format html|markdown [-o OUT]`: the ruleset as a document to sign off.

Loads and checks the file the way `nba rulesets test` does (same exit 2 and problems for a bad file), runs
the scenario cases kept beside it for the coverage table, and hands both to the pure `review.render`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click

if TYPE_CHECKING:
    from nba_service.review.render import Format

# review.render.FORMATS (tests/test_review_render.py checks they agree): importing the renderer here would cost
# every `nba` command jinja2 and the scenario loader.
FORMATS = ("html", "markdown")

EXIT_INVALID = 2  # as `nba rulesets test`: a file is invalid, or the -o file cannot be written


def register(group: click.Group) -> None:
    @group.command("render")
    @click.argument("file", type=click.Path(path_type=Path))
    @click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default="markdown",
        show_default=True,
        help="html: one self-contained, printable file; markdown: for a terminal or a pull request.",
    )
    @click.option(
        "-o",
        "--output",
        "output",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Write the document to this file (its directory must exist) instead of standard output.",
    )
    def render_command(file: Path, fmt: str, output: Path | None) -> None:
        """Render a ruleset FILE as the document a compliance reviewer signs off: metadata and content hash,
        each rule as a sentence, each action with its script per channel, every contact policy in words, the
        scenario test coverage and a sign-off block.

        FILE may also be the ruleset's tests file (NAME.tests.yaml). Exit 0 when written, 2 when a file is
        invalid (every problem is printed with file:line) or the -o file cannot be written."""
        sys.exit(run(file, cast("Format", fmt), output, echo=click.echo, fail=_fail))


def _fail(message: str) -> None:
    click.echo(message, err=True)


def run(
    file: Path,
    fmt: Format,
    output: Path | None,
    *,
    echo: Callable[..., Any],
    fail: Callable[[str], None],
) -> int:
    from nba_service.review.render import ScenarioEvidence, render  # noqa: PLC0415
    from nba_service.scenario_report import execute, find_targets, load_targets  # noqa: PLC0415

    if output is not None and not output.parent.is_dir():
        fail(f"error: cannot write {output}: directory {output.parent} does not exist")
        return EXIT_INVALID
    if file.is_dir():
        fail(f"error: {file} is a directory; give one ruleset file")
        return EXIT_INVALID
    targets, problems = find_targets([file])
    loaded, load_problems = load_targets(targets)
    problems.extend(load_problems)
    if problems or not loaded:
        for problem in problems:
            fail(str(problem))
        fail(f"{len(problems)} problem(s); nothing rendered")
        return EXIT_INVALID
    target, ruleset, scenarios = loaded[0]
    run_ = execute(target, ruleset, scenarios)
    evidence = ScenarioEvidence(str(target.tests), run_.results)
    text = render(ruleset, fmt, evidence, source_file=str(target.ruleset))
    if output is None:
        echo(text, nl=False)
        return 0
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"error: cannot write {output}: {exc.strerror or exc}")
        return EXIT_INVALID
    echo(f"wrote {output}: {ruleset.meta.name} {ruleset.meta.version} as {fmt}, sha256 {ruleset.content_hash[:12]}")
    return 0
