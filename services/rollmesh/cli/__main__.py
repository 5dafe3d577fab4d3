"""`python -m rollmesh.cli`: the same as the `rollmesh` command."""

from . import main

main()
