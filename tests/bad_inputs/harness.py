"""The bad-input table: one :class:`Case` per row, one runner for all of them.

A case builds its inputs in a fresh folder, runs either the command line (in-process, through
:func:`medsam3.cli.main`) or a Python call, and checks what a user would check afterwards:
the exit code, one line on stderr naming the problem, no traceback, and files that must not
exist (no half-written output) or must be byte-for-byte unchanged (inputs are never touched).

Adding a case is adding one ``Case(...)`` row to a ``CASES`` list in a ``test_*.py`` file of
this folder; :func:`run_case` does the rest.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Case:
    """One bad or odd input and what must happen to it.

    Attributes:
        name: the test id.
        build: ``build(tmp, ctx) -> dict`` makes the inputs under ``tmp`` and returns more
            placeholders (paths as strings) for ``argv``, ``absent`` and ``unchanged``.
            ``ctx`` already holds ``tmp`` and ``model`` (a tiny random model directory).
        argv: the command line after ``medsam3``, with ``{placeholders}``; or None with ``call``.
        call: ``call(ctx)`` for a Python-API case (instead of ``argv``).
        exit_code: the CLI's expected exit code (2: bad input); a ``call`` case expects
            :class:`medsam3.errors.MedSAM3Error` when this is non-zero, success when 0.
        message: fragments that must all appear (case-insensitive) in the error text.
        absent: paths (with placeholders) that must not exist afterwards.
        unchanged: paths whose bytes must be identical before and after.
        check: ``check(ctx)``: more assertions after the run (e.g. what a read returned).
    """

    name: str
    build: Callable[[Path, dict], dict] | None = None
    argv: tuple[str, ...] | None = None
    call: Callable[[dict], object] | None = None
    exit_code: int = 2
    message: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    check: Callable[[dict], None] | None = None
    marks: tuple = field(default=())


def params(cases: list[Case]) -> list:
    """``pytest.param`` rows for ``@pytest.mark.parametrize("case", params(CASES))``."""
    names = [c.name for c in cases]
    duplicates = {n for n in names if names.count(n) > 1}
    assert not duplicates, f"duplicate case names: {sorted(duplicates)}"
    return [pytest.param(c, id=c.name, marks=c.marks) for c in cases]


def _digest(path: Path) -> str | None:
    if not path.exists():
        return None
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(path.rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(path)).encode())
                h.update(p.read_bytes())
        return h.hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_case(case: Case, tmp: Path, model_dir: Path) -> dict:
    """Run one case and assert its contract; returns the context (for extra checks)."""
    from medsam3.cli import main
    from medsam3.errors import MedSAM3Error

    ctx: dict = {"tmp": str(tmp), "model": str(model_dir)}
    if case.build is not None:
        ctx.update(case.build(tmp, ctx) or {})
    unchanged = {p: _digest(Path(p.format(**ctx))) for p in case.unchanged}
    for p, digest in unchanged.items():
        assert digest is not None, f"case {case.name}: {p} should exist before the run"
    before = set(tmp.rglob("*"))

    err = io.StringIO()
    if case.argv is not None:
        argv = [a.format(**ctx) for a in case.argv]
        with redirect_stderr(err), redirect_stdout(io.StringIO()):
            code = main(argv)  # anything but a MedSAM3Error escapes here: a traceback, the test fails
        text = err.getvalue()
        assert code == case.exit_code, f"case {case.name}: exit {code}, expected {case.exit_code}; stderr: {text}"
        if case.exit_code:
            errors = [line for line in text.splitlines() if line.startswith("medsam3: error:")]
            assert len(errors) == 1, f"case {case.name}: expected one error line, got: {text!r}"
            assert "Traceback" not in text
    else:
        assert case.call is not None, f"case {case.name}: give argv or call"
        text = ""
        if case.exit_code:
            with pytest.raises(MedSAM3Error) as info, redirect_stderr(err):
                case.call(ctx)
            text = str(info.value)
            assert "\n" not in text.strip(), f"case {case.name}: the error is more than one line: {text!r}"
        else:
            with redirect_stderr(err):
                ctx["result"] = case.call(ctx)
            text = err.getvalue()
    for fragment in case.message:
        assert fragment.lower() in text.lower(), f"case {case.name}: {fragment!r} not in {text!r}"
    for p in case.absent:
        path = Path(p.format(**ctx))
        assert not path.exists(), f"case {case.name}: {path} was written"
    for p, digest in unchanged.items():
        assert _digest(Path(p.format(**ctx))) == digest, f"case {case.name}: {p} was changed"
    if case.exit_code:
        stray = [p for p in set(tmp.rglob("*")) - before if ".tmp-" in p.name]
        assert not stray, f"case {case.name}: temporary files left behind: {stray}"
    if case.check is not None:
        case.check(ctx)
    return ctx
