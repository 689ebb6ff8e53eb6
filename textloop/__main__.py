"""`python -m textloop` runs the CLI; a stage command inside `textloop run` first offers itself to
the run's stage fork server (textloop.stage_forks), which returns when there is none."""

import sys

from textloop.stage_forks import hand_over

if sys.argv[1:2] == ["stage"]:
    hand_over(sys.argv)

from textloop.cli import main  # after the hand-over: no heavy import before it

main()
