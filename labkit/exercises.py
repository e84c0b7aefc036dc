"""Classroom exercises: student notebooks from the solution notebooks, and their grading.

An exercise in a labkit notebook is a markdown cell stating the task, a code
cell whose answer stands between the lines ``### BEGIN SOLUTION`` and
``### END SOLUTION``, and one check cell that tests the answer against the live
kernel and prints ``exercise N: passed`` or ``exercise N: hint: ...``.

- ``build()`` writes the student version of a notebook: each answer becomes
  ``...`` at the marker's indentation, every output is cleared, the check
  cells are locked (``editable``/``deletable`` false, as nbgrader does; JupyterLab
  honours them), and the notebook's metadata names its solution notebook.
- ``run()`` grades a submission without trusting it: every check cell (the cell
  defining ``check_exercise_N``) is replaced by the solution notebook's cell of
  the same cell id (inserted where the student deleted it), then the notebook
  runs headlessly (nbclient: a fresh Jupyter kernel, errors allowed so that one
  broken cell does not hide the other exercises and the cleanup cells still
  run, a timeout per cell). Only what the solution's check cells printed
  counts: a line ``exercise N: passed`` printed by any other cell does not.
- ``fill_answers()`` is ``build``'s inverse for the answers: a student version
  with the solution's answer cells put back by cell id has, in every code cell,
  the solution's source (what nbval runs over the solution notebooks).
- A class: ``submissions()`` finds the notebooks of each student (a class folder
  has a subfolder per student), ``format_table()`` prints a row per student and
  a column per exercise (NN.exK), ``gradebook()`` is the same as JSON.

nbformat and nbclient are imported here only: the ``labkit run`` path never
imports this module.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field

import nbformat

from .errors import LabkitError, UsageError

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
STUB = "..."
# What a check cell prints, one line per exercise (the notebooks' convention).
RESULT_LINE = re.compile(r"^exercise (\d+): (passed|hint: .*)$", re.MULTILINE)
CHECK_FUNCTION = re.compile(r"^def check_exercise_(\d+)\(", re.MULTILINE)
EXPECTED_ERROR = "raises-exception"  # the tag of a cell that raises on purpose (nbclient and nbval honour it)
LOCKED = {"editable": False, "deletable": False}  # the cell metadata nbgrader writes, JupyterLab honours


@dataclass
class Exercise:
    number: int
    passed: bool
    hint: str = ""


@dataclass
class Report:
    """What one notebook's run showed: its exercises and the cells that crashed."""

    path: str
    exercises: list[Exercise] = field(default_factory=list)
    crashed: list[str] = field(default_factory=list)
    solution: str = ""                               # the solution notebook's file name, when known

    @property
    def prefix(self) -> str:
        """The notebook's number, "02" of 02-uts-and-ipc.ipynb: a gradebook column is NN.exK."""
        return os.path.splitext(os.path.basename(self.solution or self.path))[0].split("-")[0]

    @property
    def passed(self) -> bool:
        return bool(self.exercises) and all(e.passed for e in self.exercises)

    def as_dict(self) -> dict:
        return {"notebook": self.path, "solution": self.solution, "passed": self.passed,
                "crashed_cells": self.crashed,
                "exercises": [{"exercise": e.number, "passed": e.passed, "hint": e.hint}
                              for e in self.exercises]}


def read_notebook(path: str) -> nbformat.NotebookNode:
    """The notebook at ``path``, or a one-line error saying why it is not one."""
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such notebook file", "give the path of an .ipynb file")
    try:
        return nbformat.read(path, as_version=4)
    except Exception as e:                           # JSON errors, schema errors, bad encoding
        raise UsageError(f"{path} is not a Jupyter notebook ({type(e).__name__})",
                         "give an .ipynb file saved by Jupyter") from None


def stub_answers(source: str, where: str = "cell") -> str:
    """The cell's source with each answer block replaced by ``...`` at the
    indentation of its BEGIN line (marker lines left out)."""
    out: list[str] = []
    inside = False
    for line in source.splitlines():
        marker = line.strip()
        if marker == BEGIN:
            if inside:
                raise LabkitError(f"{where}: {BEGIN} inside another answer", f"close it with {END}")
            inside = True
            out.append(line[: len(line) - len(line.lstrip())] + STUB)
        elif marker == END:
            if not inside:
                raise LabkitError(f"{where}: {END} without {BEGIN}", "pair the markers")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise LabkitError(f"{where}: {BEGIN} without {END}", "close the answer with its END marker")
    return "\n".join(out)


def check_number(cell: nbformat.NotebookNode) -> int | None:
    """N when the cell is the check cell of exercise N (it defines ``check_exercise_N``)."""
    found = CHECK_FUNCTION.findall(cell.source) if cell.cell_type == "code" else []
    return int(found[0]) if found else None


def student_version(nb: nbformat.NotebookNode, name: str) -> tuple[nbformat.NotebookNode, int]:
    """A copy of ``nb`` with answers stubbed, outputs cleared and check cells
    locked; and how many answers."""
    student = nbformat.from_dict(nb)
    answers = 0
    for index, cell in enumerate(student.cells):
        if cell.cell_type != "code":
            continue
        if BEGIN in cell.source:
            answers += cell.source.count(BEGIN)
            cell.source = stub_answers(cell.source, f"{name} cell {index}")
        if check_number(cell) is not None:
            cell.metadata.update(LOCKED)
        cell.outputs = []
        cell.execution_count = None
    student.metadata["labkit"] = {"student_version": True, "solution": name}
    return student, answers


def build(outdir: str, notebooks: list[str]) -> list[tuple[str, int]]:
    """Write the student version of each notebook into ``outdir``: (path, answers) each."""
    if os.path.exists(outdir) and not os.path.isdir(outdir):
        raise UsageError(f"{outdir} is not a directory", "give a folder to write the student notebooks into")
    students = []
    for path in notebooks:
        nb = read_notebook(path)
        name = os.path.basename(path)
        if os.path.realpath(os.path.join(outdir, name)) == os.path.realpath(path):
            raise UsageError(f"{outdir} holds the solution notebook {name}",
                             "build the student versions into another folder")
        students.append((os.path.join(outdir, name), *student_version(nb, name)))
    os.makedirs(outdir, exist_ok=True)
    written = []
    for target, student, answers in students:
        nbformat.write(student, target)
        written.append((target, answers))
    return written


def _texts_of(cell: nbformat.NotebookNode) -> list[str]:
    """What the cell showed: its stdout, and its stderr, each in one piece (the
    kernel sends what a print writes in as many messages as its buffer was
    flushed, so one line can arrive split in two), then each result's text."""
    streams: dict[str, str] = {}
    results = []
    for output in cell.outputs:
        if output.output_type == "stream":
            streams[output.name] = streams.get(output.name, "") + output.text
        else:
            results.append(output.get("data", {}).get("text/plain", ""))
    return [*streams.values(), *results]


def _expects_error(cell: nbformat.NotebookNode) -> bool:
    return EXPECTED_ERROR in cell.metadata.get("tags", [])


def grade(path: str, nb: nbformat.NotebookNode, checks: dict[str, int] | None = None) -> Report:
    """Read an executed notebook: each check cell's result line, every unexpected error.

    ``checks`` maps the id of each check cell to its exercise number (the
    solution's check cells, see ``run()``); without it, the check cells are the
    notebook's own (a solution notebook's saved outputs). Only the line
    ``exercise N: ...`` printed by the check cell of exercise N counts.
    """
    report = Report(path)
    found: dict[int, Exercise] = {}
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        if errors and not _expects_error(cell):
            report.crashed.append(f"cell {index}: {errors[0].ename}: {errors[0].evalue}")
        number = check_number(cell) if checks is None else checks.get(cell.get("id"))
        if number is None:
            continue
        why = f"{errors[0].ename}: {errors[0].evalue}" if errors else "it printed no result"
        exercise = Exercise(number, False, f"its check cell (cell {index}) did not finish ({why})")
        for text in _texts_of(cell):
            for said, verdict in RESULT_LINE.findall(text):
                if int(said) == number:
                    exercise = Exercise(number, verdict == "passed",
                                        "" if verdict == "passed" else verdict[len("hint: "):])
        found[number] = exercise
    report.exercises = [found[n] for n in sorted(found)]
    return report


def solution_for(path: str, nb: nbformat.NotebookNode, solutions: str) -> str:
    """The solution notebook of a submission, in the folder ``solutions``: the one
    of the same file name, else the one its metadata names (``build`` writes it)."""
    meta = nb.metadata.get("labkit")
    named = meta.get("solution") if isinstance(meta, dict) else None
    for name in (os.path.basename(path), os.path.basename(str(named or ""))):
        if name and os.path.isfile(os.path.join(solutions, name)):
            return os.path.join(solutions, name)
    raise UsageError(f"{path}: no solution notebook {os.path.basename(str(named or path))} in {solutions}",
                     "keep the submission's file name, or give --solutions DIR")


def with_solution_checks(nb: nbformat.NotebookNode, solution: nbformat.NotebookNode) -> dict[str, int]:
    """Put the solution's check cells into ``nb``, matched by cell id: an edited
    check cell is replaced, a deleted one is inserted after the cell it
    followed in the solution. Returns {check cell id: exercise number}."""
    checks: dict[str, int] = {}
    previous: str | None = None
    for cell in solution.cells:
        number = check_number(cell)
        if number is not None:
            checks[cell.id] = number
            fresh = nbformat.v4.new_code_cell(cell.source, id=cell.id, metadata=dict(cell.metadata))
            ids = [c.get("id") for c in nb.cells]
            if cell.id in ids:
                nb.cells[ids.index(cell.id)] = fresh
            else:
                nb.cells.insert(ids.index(previous) + 1 if previous in ids else len(nb.cells), fresh)
        previous = cell.get("id")
    return checks


def fill_answers(nb: nbformat.NotebookNode, solution: nbformat.NotebookNode) -> int:
    """Put the solution's answer cells (those with ``### BEGIN SOLUTION``) back
    into the student version ``nb``, matched by cell id: with every answer
    filled, each code cell's source is the solution's again. Returns how many."""
    answers = {c.id: c.source for c in solution.cells if c.cell_type == "code" and BEGIN in c.source}
    filled = 0
    for cell in nb.cells:
        if cell.get("id") in answers:
            cell.source = answers[cell.id]
            filled += 1
    return filled


def run(path: str, solutions: str, timeout: int = 300) -> Report:
    """Execute the notebook at ``path`` with its solution's check cells (from
    the folder ``solutions``) in a fresh kernel, in the notebook's folder, and grade it."""
    from nbclient import NotebookClient
    from traitlets.config import Config

    nb = read_notebook(path)
    solution = solution_for(path, nb, solutions)
    checks = with_solution_checks(nb, read_notebook(solution))
    # The kernel runs as root: talk to it over Unix sockets in a private folder, not TCP.
    with tempfile.TemporaryDirectory(prefix="labkit-check-") as sockets:
        config = Config({"KernelManager": {"transport": "ipc", "ip": os.path.join(sockets, "kernel")}})
        client = NotebookClient(nb, config=config, kernel_name="python3", timeout=timeout,
                                allow_errors=True, interrupt_on_timeout=True,
                                resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}})
        stopped = ""
        try:
            client.execute()                         # starts the kernel, runs every cell, shuts it down
        except Exception as e:                       # the kernel died or could not start
            stopped = f"the kernel stopped: {type(e).__name__}: {e}".splitlines()[0]
    report = grade(path, nb, checks)
    report.solution = os.path.basename(solution)
    report.crashed += [stopped] if stopped else []
    return report


def format_report(report: Report) -> str:
    """The lines a student or an instructor reads for one notebook."""
    lines = [f"{report.path}:"]
    for e in report.exercises:
        lines.append(f"  exercise {e.number}: " + ("passed" if e.passed else f"FAILED, hint: {e.hint}"))
    if not report.exercises:
        lines.append("  no exercise found (no `exercise N: ...` line and no check_exercise_N cell)")
    for crash in report.crashed:
        lines.append(f"  crashed: {crash}")
    return "\n".join(lines)


def summary(reports: list[Report]) -> str:
    exercises = [e for r in reports for e in r.exercises]
    done = sum(e.passed for e in exercises)
    return (f"{done} of {len(exercises)} exercises passed in {len(reports)} notebook(s); "
            f"{sum(r.passed for r in reports)} notebook(s) complete")


# --- a class: folders of submissions, one table ---------------------------------------------

@dataclass
class Submission:
    """One notebook to grade and whose it is (the name of the folder it is in)."""

    student: str
    path: str
    found_in_folder: bool = False                    # not named on the command line


def _notebooks_in(folder: str) -> list[str]:
    return sorted(os.path.join(folder, n) for n in os.listdir(folder)
                  if n.endswith(".ipynb") and not n.startswith(".") and os.path.isfile(os.path.join(folder, n)))


def submissions(paths: list[str]) -> list[Submission]:
    """What ``labkit check PATH...`` grades. A PATH is a notebook (its student is
    its folder's name), one student's folder (it holds notebooks), or a class
    folder (each subfolder that holds notebooks is a student)."""
    found: list[Submission] = []
    for path in paths:
        if not os.path.isdir(path):
            found.append(Submission(os.path.basename(os.path.dirname(os.path.abspath(path))), path))
            continue
        subfolders = sorted(os.path.join(path, n) for n in os.listdir(path)
                            if not n.startswith(".") and os.path.isdir(os.path.join(path, n)))
        folders = [path] if _notebooks_in(path) else subfolders
        mine = [Submission(os.path.basename(os.path.abspath(f)), nb, True) for f in folders for nb in _notebooks_in(f)]
        if not mine:
            raise UsageError(f"{path}: no notebook in it nor in its subfolders",
                             "give a class folder (a subfolder per student), a student's folder or notebooks")
        found += mine
    return found


def gradable(subs: list[Submission], solutions: str) -> tuple[list[Submission], list[str]]:
    """Refuse bad input before anything runs (a file that is not a notebook, a
    notebook named on the command line without its solution); leave out, and
    say why, a notebook found in a folder that has no solution (a student's
    Untitled.ipynb)."""
    kept, skipped = [], []
    for sub in subs:
        nb = read_notebook(sub.path)
        try:
            read_notebook(solution_for(sub.path, nb, solutions))
        except UsageError as e:
            if not sub.found_in_folder:
                raise
            skipped.append(e.message)
            continue
        kept.append(sub)
    return kept, skipped


def by_student(graded: list[tuple[Submission, Report]]) -> dict[str, list[Report]]:
    students: dict[str, list[Report]] = {}
    for sub, report in graded:
        students.setdefault(sub.student, []).append(report)
    return students


def columns(reports: list[Report]) -> list[str]:
    """The gradebook's columns, NN.exK, over every notebook graded."""
    return [f"{prefix}.ex{n}" for prefix, n in sorted({(r.prefix, e.number) for r in reports for e in r.exercises})]


def marks(reports: list[Report]) -> dict[str, bool]:
    return {f"{r.prefix}.ex{e.number}": e.passed for r in reports for e in r.exercises}


PASS, FAIL, MISSING = "\u2713", "\u2717", "-"
HINT_WIDTH = 110                                     # a failure's hint, shortened to one line


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= HINT_WIDTH else text[: HINT_WIDTH - 1] + "\u2026"


def format_table(graded: list[tuple[Submission, Report]]) -> str:
    """A row per student, a column per exercise (NN.exK: ✓ or ✗, - when not
    handed in), the student's total; below, each failure's hint and each crash."""
    students = by_student(graded)
    cols = columns([r for _, r in graded])
    width = max([len("student"), *map(len, students)])
    lines = ["  ".join(["student".ljust(width), *cols, "total"])]
    for student, reports in students.items():
        got = marks(reports)
        cells = [(PASS if got[c] else FAIL) if c in got else MISSING for c in cols]
        lines.append("  ".join([student.ljust(width), *(m.center(len(c)) for m, c in zip(cells, cols)),
                                f"{sum(got.values())}/{len(cols)}"]))
    notes = []
    for student, reports in students.items():
        for r in reports:
            notes += [f"{student} {r.prefix}.ex{e.number}: {_short(e.hint)}" for e in r.exercises if not e.passed]
            notes += [f"{student} {os.path.basename(r.path)}: crashed: {_short(c)}" for c in r.crashed]
            if not r.exercises:
                notes.append(f"{student} {os.path.basename(r.path)}: no exercise found")
    return "\n".join(lines + ([""] + notes if notes else []))


def gradebook(graded: list[tuple[Submission, Report]]) -> dict:
    """What ``labkit check --json`` prints: students -> notebooks -> exercises."""
    cols = columns([r for _, r in graded])
    return {"columns": cols,
            "students": {student: {"passed": sum(marks(reports).values()), "total": len(cols),
                                   "notebooks": [r.as_dict() for r in reports]}
                         for student, reports in by_student(graded).items()},
            "summary": summary([r for _, r in graded])}
