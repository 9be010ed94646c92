"""nbgrader's autograde, made to grade notebooks that run on the lab's Rust kernel (evcxr).

Loaded by the venv's own nbgrader_config.py, which `cargo lab course` and `cargo lab grade` write
(this module is installed into the project venv with the kernel provisioner).

- evcxr answers a cell that does not compile with an `error` output on iopub (ename "Error", the
  compiler's message) and an execute_reply whose content is only `status` and `execution_count`.
  nbgrader's Execute preprocessor (0.9.6, `on_cell_executed`) reads `reply["content"]["ename"]`
  and raises `KeyError: 'ename'` (nbgrader issue 1806), which fails the whole submission: a
  student whose TODO does not compile got no grade at all. `LabExecute` completes the reply from
  the error the kernel published for the cell (the same error, so nbgrader records it once).
- `LabExecute` also gives a cell that starts with `:dep` at least DEP_TIMEOUT seconds: a grading
  kernel's first cell builds lab-support, in seconds when its build folder is warm and in minutes
  when lab-support changed since; the per-cell limit is for the student's cells.
- nbgrader scores a grade cell 0 when a stderr stream comes before its first result. A lab check
  shows its verdict as that result (its text/plain is `0` unless it passed), but evcxr forwards
  stderr on a thread of its own: a line the student's code wrote (a `dbg!`, an `eprintln!`) or a
  late line of the cell before can land before the verdict, or after it, by chance.
  `VerdictFirst` puts a lab verdict (the output with the `application/vnd.lab.verdict+json`
  part) first in its grade cell, so the verdict the student saw is the grade, whatever else the
  cell printed and in whatever order it arrived.

`autograde_preprocessors()` is nbgrader's own list with `Execute` replaced by `LabExecute` and
`VerdictFirst` after it; the rest of nbgrader's pipeline stays as nbgrader ships it.

`python -m lab_grading prepare COURSE` sets the course's gradebook (SQLite) to write-ahead
logging, so that submissions graded at once wait for each other's writes instead of failing.
`python -m lab_grading grades COURSE ASSIGNMENT` prints, as JSON, every submission's points per
grade cell as nbgrader's gradebook holds them (`cargo lab grade` reads it: the scores are
nbgrader's own).
"""

import json
import os
import sqlite3
import sys

from nbgrader import utils
from nbgrader.preprocessors import Execute, NbGraderPreprocessor

VERDICT_MIME = "application/vnd.lab.verdict+json"

# Seconds at least for a `:dep` cell (a cold build of lab-support took 185 s on a 2-core machine).
DEP_TIMEOUT = 1200


def complete_error_reply(content, outputs):
    """Fills the `ename`, `evalue` and `traceback` of an error reply that lacks them, from the last
    `error` output the cell shows (evcxr publishes the compiler's error there), or a generic one.
    Returns True when it had to fill anything in."""
    if content.get("status") != "error" or "ename" in content:
        return False
    shown = [o for o in outputs if o.get("output_type") == "error"]
    last = shown[-1] if shown else {}
    content["ename"] = last.get("ename", "Error")
    content["evalue"] = last.get("evalue", "the kernel reported an error without a message")
    content["traceback"] = list(last.get("traceback", [])) or [content["evalue"]]
    return True


class LabExecute(Execute):
    """nbgrader's Execute, for kernels whose error replies carry no `ename` (evcxr), with room for
    a first `:dep` cell."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.timeout_func = self._cell_timeout

    def _cell_timeout(self, cell):
        if self.timeout is None or self.timeout <= 0:
            return self.timeout
        if cell.get("source", "").lstrip().startswith(":dep"):
            return max(self.timeout, DEP_TIMEOUT)
        return self.timeout

    def on_cell_executed(self, **kwargs):
        reply = kwargs.get("execute_reply") or {}
        content = reply.get("content")
        if content is not None:
            complete_error_reply(content, kwargs["cell"].get("outputs", []))
        return super().on_cell_executed(**kwargs)


def verdict_first(outputs):
    """`outputs` with the lab verdict, if any, moved to the front (the others keep their order)."""
    verdicts = [o for o in outputs if o.get("output_type") == "execute_result" and VERDICT_MIME in o.get("data", {})]
    if not verdicts:
        return outputs
    return verdicts[:1] + [o for o in outputs if o is not verdicts[0]]


class VerdictFirst(NbGraderPreprocessor):
    """Puts a lab check's verdict first in its grade cell, where nbgrader's grade reads it."""

    def preprocess_cell(self, cell, resources, cell_index):
        if cell.cell_type == "code" and utils.is_grade(cell):
            cell.outputs = verdict_first(cell.outputs)
        return cell, resources


def autograde_preprocessors():
    """nbgrader's autograde preprocessors with Execute replaced by LabExecute, then VerdictFirst."""
    from nbgrader.converters.autograde import Autograde

    defaults = Autograde.class_traits()["autograde_preprocessors"].default()
    if Execute not in defaults:
        raise RuntimeError("nbgrader's autograde preprocessors no longer include Execute: " + repr(defaults))
    replaced = []
    for p in defaults:
        replaced.extend([LabExecute, VerdictFirst] if p is Execute else [p])
    return replaced


def _course_config(course):
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=course).load_config()
    course_dir = config.CourseDirectory
    course_id = course_dir.course_id if "course_id" in course_dir else "default_course"
    db_url = course_dir.db_url if "db_url" in course_dir else "sqlite:///" + os.path.join(course, "gradebook.db")
    return course_id, db_url


def prepare(course):
    """Write-ahead logging for the course's gradebook, when it is a SQLite file."""
    _, db_url = _course_config(course)
    if db_url.startswith("sqlite:///"):
        with sqlite3.connect(db_url[len("sqlite:///"):]) as db:
            db.execute("PRAGMA journal_mode=WAL")


def gradebook_grades(course, assignment):
    """Each submission of `assignment` in the gradebook of the course folder `course`: the student,
    the total and the points of each grade cell, as nbgrader computed them."""
    from nbgrader.api import Gradebook

    course_id, db_url = _course_config(course)
    out = []
    with Gradebook(db_url, course_id=course_id) as gradebook:
        for submission in gradebook.assignment_submissions(assignment):
            cells = []
            for notebook in submission.notebooks:
                for grade in notebook.grades:
                    cells.append({"notebook": notebook.name, "cell": grade.name, "score": grade.score,
                                  "max_score": grade.max_score})
            out.append({"student": submission.student.id, "score": submission.score,
                        "max_score": submission.max_score, "cells": cells})
    return out


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "prepare":
        prepare(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "grades":
        print(json.dumps(gradebook_grades(sys.argv[2], sys.argv[3])))
    else:
        sys.exit("usage: python -m lab_grading prepare COURSE | grades COURSE ASSIGNMENT")
