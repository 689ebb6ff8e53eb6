#!/bin/sh
# What dvc.yaml runs: `textloop stage NAME` with textloop's own interpreter, so `dvc repro` and
# `dvc exp run` work from the project folder with or without an activated venv, while dvc.yaml
# (and the cmd recorded in dvc.lock) stays the same on every machine.
# Usage: sh scripts/stage.sh PYTHON_FILE NAME  (PYTHON_FILE: params.yaml paths.python)
# The interpreter is the first that exists of: the one textloop recorded in PYTHON_FILE
# (`textloop init`, `textloop run`), .venv/bin/python (scripts/setup.sh), `textloop` on PATH.
recorded=$1
shift
for py in "$(cat "$recorded" 2>/dev/null)" .venv/bin/python; do
    if [ -n "$py" ] && [ -x "$py" ]; then
        exec "$py" -m textloop stage "$@"
    fi
done
exec textloop stage "$@"
