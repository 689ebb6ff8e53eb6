"""Each lifecycle stage's logic under the stage's own name: a module, or a package when the
stage has sub-steps. Plain typed functions, no Prefect imports."""
